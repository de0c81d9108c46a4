package relay

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/tetherhq/tether/relay/internal/console"
	"github.com/tetherhq/tether/relay/internal/history"
	"github.com/tetherhq/tether/relay/internal/metrics"
)

// historyReading reads the relay for its history (relay/internal/history):
// every connected agent's sessions, streams and RTT, the bytes each
// agent's streams moved (those still open included), the tenants' stream
// limits, stream opens by tenant and outcome, and the relay's own
// counters.
func (r *Relay) historyReading() history.Reading {
	rd := history.Reading{At: r.cfg.Now(), Agents: map[history.Agent]history.AgentReading{}, MaxStreams: map[string]int{}, Opens: map[history.Open]uint64{}}
	type rttSum struct {
		sum time.Duration
		n   int
	}
	rtts := map[history.Agent]*rttSum{}
	for _, s := range r.sessions.Sessions().Snapshot("") {
		id := history.Agent{Tenant: s.Tenant, ID: s.Agent}
		a := rd.Agents[id]
		a.Sessions++
		a.StreamsOpen += s.StreamsOpen
		rd.Agents[id] = a
		if s.RTT > 0 {
			x := rtts[id]
			if x == nil {
				x = &rttSum{}
				rtts[id] = x
			}
			x.sum += s.RTT
			x.n++
		}
	}
	for id, x := range rtts {
		a := rd.Agents[id]
		a.RTT = x.sum / time.Duration(x.n)
		rd.Agents[id] = a
	}
	for k, m := range r.metrics.Bytes.Totals() {
		id := history.Agent{Tenant: k.Tenant, ID: k.ID}
		a := rd.Agents[id]
		a.ToService, a.FromService = m.ToService, m.FromService
		rd.Agents[id] = a
	}
	for id := range rd.Agents {
		if l := r.pol.LimitsOf(id.Tenant); l != nil && l.MaxStreams > 0 {
			rd.MaxStreams[id.Tenant] = l.MaxStreams
		}
	}
	for _, o := range r.metrics.Opens() {
		rd.Opens[history.Open{Tenant: o.Tenant, Outcome: o.Outcome}] += o.N
	}
	hs := r.sessions.Stats()
	rd.Relay = history.RelayReading{
		SessionsOpened:    uint64(hs.OK.Load()),
		SessionsEnded:     r.metrics.Disconnected(),
		HandshakesRefused: uint64(hs.Failed.Load() + hs.Throttled.Load() + hs.SourceLimited.Load()),
		Store:             map[string]history.StoreTotal{},
		Goroutines:        runtime.NumGoroutine(),
		FrontConnections:  r.doors.Open(),
	}
	for op, t := range r.metrics.StoreTotals() {
		rd.Relay.Store[op] = history.StoreTotal{Count: t.Count, Time: t.Time}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rd.Relay.HeapInuse = ms.HeapInuse
	return rd
}

// consoleView is the running relay as its dashboard sees it besides the
// Admin (console.Relay): history, health and addresses.
type consoleView struct{ r *Relay }

func (v consoleView) History(q history.Query) history.Window { return v.r.history.Window(q) }

// Health fills the dashboard's health panel from Stats, the build and
// the store's latency.
func (v consoleView) Health() console.Health {
	r := v.r
	st := r.Stats()
	b := readBuild(r.cfg.Version)
	hs := r.sessions.Stats()
	h := console.Health{Version: b.Version, Commit: b.Commit, GoVersion: b.Go, Started: r.started,
		Sessions: st.AgentConnections, Tenants: st.Tenants, StreamsOpen: st.StreamsOpen, FrontConnections: st.FrontConnections,
		HandshakesOK: hs.OK.Load(), HandshakesFailed: st.HandshakesFailed, HandshakesThrottled: st.HandshakesThrottled,
		HandshakesSourceLimited: st.HandshakesSourceLimited, HandshakesInProgress: st.HandshakesInProgress,
		AuditQueue: r.audit.Queued(), Goroutines: st.Goroutines, HeapInuse: st.HeapInuse, Sys: st.Sys}
	h.Agents = len(r.sessions.Sessions().Select("", true, nil))
	totals := r.metrics.StoreTotals()
	for _, op := range metrics.StoreOps {
		if t := totals[op]; t.Count > 0 {
			h.Store = append(h.Store, console.StoreLatency{Op: op, Count: t.Count, Mean: t.Time / time.Duration(t.Count)})
		}
	}
	return h
}

// Connector is where agents and installers reach the relay, and the
// SHA-256 of the install script it serves.
func (v consoleView) Connector() console.Connector {
	r := v.r
	var c console.Connector
	_, c.AgentPort, _ = net.SplitHostPort(r.AgentAddr().String())
	if a := r.DownloadAddr(); a != nil {
		_, c.DownloadPort, _ = net.SplitHostPort(a.String())
		c.InstallSHA256 = fileSHA256(filepath.Join(r.cfg.DownloadDir, "install.sh"))
	}
	return c
}

// fileSHA256 is the hex SHA-256 of a file, "" when it cannot be read.
func fileSHA256(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, 16<<20)); err != nil {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}
