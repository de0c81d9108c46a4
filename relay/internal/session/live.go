// Package session serves agent connections: the agent listeners,
// admission of each handshake, one Conn per agent connection with its
// control loop, and the set of them.
package session

import (
	"cmp"
	"maps"
	"slices"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// LiveAgent is a snapshot of one connected agent session, for operators.
type LiveAgent struct {
	Tenant      string    `json:"tenant"`
	Agent       string    `json:"agent"`
	SessionID   string    `json:"session_id"`
	Transport   string    `json:"transport"`
	Remote      string    `json:"remote"`
	ConnectedAt time.Time `json:"connected_at"`
	// LastHeard is when the relay last heard from the agent on this session.
	LastHeard time.Time     `json:"last_heard"`
	RTT       time.Duration `json:"rtt_ns"` // last measured by the relay
	// StreamsOpen and StreamsTotal count this session's streams.
	StreamsOpen  int64  `json:"streams_open"`
	StreamsTotal uint64 `json:"streams_total"`
	Draining     bool   `json:"draining"`
	// CertNotAfter is when the session's newest certificate expires.
	CertNotAfter time.Time `json:"cert_not_after"`
	// Hello is what the agent said when it connected.
	Hello protocol.Hello `json:"hello"`
	// Report is the agent's latest report on this session; nil until the
	// first arrives. ReportAt is when it arrived.
	Report   *protocol.Report `json:"report,omitempty"`
	ReportAt time.Time        `json:"report_at,omitzero"`
	// DialFailedAt is when a report last showed the agent's count of
	// failed dials going up (the first report with failures counts).
	DialFailedAt time.Time `json:"dial_failed_at,omitzero"`
}

// Limits on what the relay keeps of a report: it comes from the agent, so
// a hostile agent must not make the relay hold more than a few KiB for it.
const (
	maxReportString   = 512
	maxReportServices = 64
	maxReportRelays   = 16 // an agent holds at most 16 connections
)

// boundReport returns m with its strings shortened and its lists and maps
// capped, so that every agent's report costs the relay a bounded amount.
func boundReport(m *protocol.Report) *protocol.Report {
	r := *m
	for _, s := range []*string{&r.AgentVersion, &r.OS, &r.Arch, &r.Hostname, &r.Transport, &r.TransportWhy, &r.LastDialError, &r.ConfigHash, &r.ConfigError, &r.AccessLogError} {
		*s = clip(*s)
	}
	if len(r.Services) > maxReportServices {
		r.Services = r.Services[:maxReportServices]
	}
	r.Services = slices.Clone(r.Services)
	for i := range r.Services {
		r.Services[i] = clip(r.Services[i])
	}
	if r.DialFailures != nil {
		fails := make(map[string]uint64, min(len(r.DialFailures), maxReportServices))
		for _, k := range slices.Sorted(maps.Keys(r.DialFailures)) {
			if len(fails) == maxReportServices {
				break
			}
			fails[clip(k)] = r.DialFailures[k]
		}
		r.DialFailures = fails
	}
	if len(r.Relays) > maxReportRelays {
		r.Relays = r.Relays[:maxReportRelays]
	}
	r.Relays = slices.Clone(r.Relays)
	for i := range r.Relays {
		r.Relays[i].ID, r.Relays[i].Addr = clip(r.Relays[i].ID), clip(r.Relays[i].Addr)
	}
	return &r
}

func clip(s string) string { return protocol.Clip(s, maxReportString) }

// Snapshot returns every connected agent session of tenant ("" for all),
// sorted by tenant, agent and connection time.
func (s *Set) Snapshot(tenant string) []LiveAgent {
	conns := s.Select(tenant, false, nil)
	out := make([]LiveAgent, 0, len(conns))
	for _, c := range conns {
		out = append(out, c.live())
	}
	slices.SortFunc(out, func(a, b LiveAgent) int {
		return cmp.Or(cmp.Compare(a.Tenant, b.Tenant), cmp.Compare(a.Agent, b.Agent), a.ConnectedAt.Compare(b.ConnectedAt))
	})
	return out
}

func (c *Conn) live() LiveAgent {
	l := LiveAgent{
		Tenant:       c.id.Tenant,
		Agent:        c.id.ID,
		SessionID:    c.sessionID,
		Transport:    c.transport,
		ConnectedAt:  c.connectedAt,
		RTT:          time.Duration(c.rtt.Load()),
		StreamsOpen:  c.open.Load(),
		StreamsTotal: c.total.Load(),
		Draining:     c.draining.Load(),
		Hello:        c.hello,
		Report:       c.report.Load(),
	}
	if c.remote != nil {
		l.Remote = c.remote.String()
	}
	if n := c.lastHeard.Load(); n != 0 {
		l.LastHeard = time.Unix(0, n)
	}
	if n := c.notAfter.Load(); n != 0 {
		l.CertNotAfter = time.Unix(0, n)
	}
	if n := c.reportAt.Load(); n != 0 {
		l.ReportAt = time.Unix(0, n)
	}
	if n := c.dialFailedAt.Load(); n != 0 {
		l.DialFailedAt = time.Unix(0, n)
	}
	return l
}

// noteReport keeps m, bounded, as the session's latest report. Dial
// failures are counted since the agent started, so the relay notes when
// the count last went up: a failure an hour ago must not leave the agent
// "degraded" for good.
func (c *Conn) noteReport(m *protocol.Report, now time.Time) {
	rep := boundReport(m)
	if n := rep.DialFailuresTotal(); n > 0 {
		if prev := c.report.Load(); prev == nil || n > prev.DialFailuresTotal() {
			c.dialFailedAt.Store(now.UnixNano())
		}
	}
	c.report.Store(rep)
	c.reportAt.Store(now.UnixNano())
}
