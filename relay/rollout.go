package relay

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/release"
	"github.com/tetherhq/tether/relay/internal/store"
)

// Timeouts of the update payload stream.
const (
	updateOpenTimeout = 15 * time.Second // open the stream and read the agent's reply
	updateSendTimeout = 30 * time.Minute // send the binary
	// updateStale is how long an agent may stay offered, downloading or
	// applied before it stops counting against a rollout's batch.
	updateStale = 15 * time.Minute
)

// updateOffer is the release offered on one agent session.
type updateOffer struct {
	id      string
	version string
	rollout int64
	dir     string // the release's files (releaseFiles)
}

// rolloutLoop offers the active rollout's release to the agents it selects
// until ctx ends: when a rollout starts or halts (the change feed:
// wakeRollout), when an agent connects, and every UpdateInterval for
// agents whose earlier offer or download went nowhere.
//
// A reconnect storm brings agents back by the thousand, each a wake-up:
// rounds woken by connections run at most once per rolloutConnectGap.
func (r *Relay) rolloutLoop(ctx context.Context) {
	t := time.NewTicker(r.cfg.UpdateInterval)
	defer t.Stop()
	var last time.Time
	for {
		connected := r.reg.changes()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.rolloutWake:
		case <-connected:
			if wait := rolloutConnectGap - time.Since(last); wait > 0 {
				gap := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					gap.Stop()
					return
				case <-gap.C:
				}
			}
		}
		last = time.Now()
		if err := r.offerUpdates(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("rollout: offering updates failed", "err", err)
		}
	}
}

// rolloutConnectGap spaces the offer rounds that agents connecting wake.
const rolloutConnectGap = time.Second

// wakeRollout has rolloutLoop offer updates now.
func (r *Relay) wakeRollout() {
	select {
	case r.rolloutWake <- struct{}{}:
	default:
	}
}

// inFlight reports whether an agent in state s is still updating.
func inFlight(s string) bool {
	switch s {
	case protocol.UpdateOffered, protocol.UpdateDownloading, protocol.UpdateDownloaded, protocol.UpdateApplied:
		return true
	}
	return false
}

// settled reports whether an agent's state for a version means it is not
// offered that version again: it runs it, or it refused it or failed with
// it. A refusal because the agent was busy is not final.
func settled(u store.AgentUpdate) bool {
	switch u.State {
	case protocol.UpdateSucceeded, protocol.UpdateRolledBack, protocol.UpdateFailed:
		return true
	case protocol.UpdateRefused:
		return u.Reason != release.ReasonBusy
	}
	return false
}

// selects reports whether rollout ro covers agent id of tenant.
func selects(ro store.Rollout, tenant, id string) bool {
	switch {
	case len(ro.Agents) > 0:
		return slices.Contains(ro.Agents, id)
	case len(ro.Tenants) > 0:
		return slices.Contains(ro.Tenants, tenant)
	}
	h := fnv.New32a()
	h.Write([]byte(id + "/" + ro.Version))
	return int(h.Sum32()%100) < ro.Percent
}

// allConns returns one live, non-draining session per agent.
func (g *registry) allConns() []*agentConn {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var out []*agentConn
	seen := map[string]bool{}
	for _, list := range g.byTenant {
		for _, c := range list {
			if seen[c.id.ID] || c.draining.Load() {
				continue
			}
			seen[c.id.ID] = true
			out = append(out, c)
		}
	}
	return out
}

func (r *Relay) offerUpdates(ctx context.Context) error {
	ro, err := r.st.store.ActiveRollout(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if halted, err := r.checkHalt(ctx, ro); err != nil || halted {
		return err
	}
	rels, err := r.st.store.Releases(ctx, ro.Version)
	if err != nil {
		return err
	}
	us, err := r.st.store.AgentUpdates(ctx, ro.Version)
	if err != nil {
		return err
	}
	states := make(map[string]store.AgentUpdate, len(us))
	busy := 0
	for _, u := range us {
		states[u.Agent] = u
		if u.Rollout == ro.ID && inFlight(u.State) && time.Since(u.UpdatedAt) < updateStale {
			busy++
		}
	}
	for _, c := range r.reg.allConns() {
		if !slices.Contains(c.hello.Capabilities, protocol.CapUpdate) || slices.Contains(c.hello.Capabilities, protocol.CapUpdateTrial) {
			continue
		}
		if !selects(ro, c.id.Tenant, c.id.ID) || c.hello.AgentVersion == ro.Version {
			continue
		}
		u, has := states[c.id.ID]
		if has && settled(u) {
			continue
		}
		if o := c.offer.Load(); o != nil && o.version == ro.Version {
			continue // offered on this session already
		}
		channel := c.hello.UpdateChannel
		if channel == "" {
			channel = release.DefaultChannel
		}
		i := slices.IndexFunc(rels, func(x store.Release) bool {
			return x.OS == c.hello.OS && x.Arch == c.hello.Arch && x.Channel == channel
		})
		if i < 0 {
			continue // nothing for its platform and channel
		}
		if ro.Batch > 0 && busy >= ro.Batch && !(has && inFlight(u.State)) {
			continue
		}
		if err := r.offer(ctx, c, ro, rels[i]); err != nil {
			c.log.Warn("rollout: offer failed", "version", ro.Version, "err", err)
			continue
		}
		if !(has && inFlight(u.State)) {
			busy++
		}
	}
	return nil
}

// offer sends the release's signed manifest to c.
func (r *Relay) offer(ctx context.Context, c *agentConn, ro store.Rollout, rel store.Release) error {
	dir, err := r.st.ReleaseFiles(ctx, rel)
	if err != nil {
		return err
	}
	read := func(name string, max int64) ([]byte, error) {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return io.ReadAll(io.LimitReader(f, max))
	}
	o := &updateOffer{id: newRequestID(), version: ro.Version, rollout: ro.ID, dir: dir}
	m := &protocol.UpdateOffer{ID: o.id, Version: ro.Version}
	if m.Manifest, err = read(release.ManifestFile, release.MaxManifestSize); err != nil {
		return err
	}
	if m.ManifestSignature, err = read(release.ManifestSignatureFile, release.MaxSignatureSize); err != nil {
		return err
	}
	if m.BinarySignature, err = read(release.BinarySignatureFile, release.MaxSignatureSize); err != nil {
		return err
	}
	c.updMu.Lock() // the agent's answer is recorded after the offer
	defer c.updMu.Unlock()
	c.offer.Store(o)
	if err := c.send(m); err != nil {
		return err
	}
	r.setUpdate(ctx, c, o, protocol.UpdateOffered, "", "", "")
	r.audit.Add(audit.Record{Kind: audit.UpdateOffer, Outcome: audit.OutcomeOK, Tenant: c.id.Tenant, Agent: c.id.ID, Actor: "relay",
		Detail: map[string]any{"version": ro.Version, "rollout": ro.ID, "offer": o.id, "from": c.hello.AgentVersion, "os": rel.OS, "arch": rel.Arch, "channel": rel.Channel}})
	c.log.Info("update offered", "version", ro.Version, "rollout", ro.ID, "offer", o.id)
	return nil
}

func (r *Relay) setUpdate(ctx context.Context, c *agentConn, o *updateOffer, state, reason, message, from string) {
	u := store.AgentUpdate{Agent: c.id.ID, Tenant: c.id.Tenant, Version: o.version, Rollout: o.rollout, State: state,
		Reason: clip(reason), Message: clip(message), From: clip(from), UpdatedAt: r.cfg.Now()}
	if from == "" && state == protocol.UpdateOffered {
		u.From = c.hello.AgentVersion
	}
	if err := r.st.store.SetAgentUpdate(ctx, u); err != nil {
		c.log.Warn("record update state", "version", o.version, "state", state, "err", err)
	}
}

// checkHalt halts ro when the fraction of its agents that failed reached
// its HaltAt.
func (r *Relay) checkHalt(ctx context.Context, ro store.Rollout) (bool, error) {
	if ro.HaltAt <= 0 || ro.State != store.RolloutActive {
		return false, nil
	}
	us, err := r.st.store.AgentUpdates(ctx, ro.Version)
	if err != nil {
		return false, err
	}
	var total, failed int
	for _, u := range us {
		if u.Rollout != ro.ID {
			continue
		}
		total++
		if u.State == protocol.UpdateRolledBack || u.State == protocol.UpdateFailed || (u.State == protocol.UpdateRefused && u.Reason != release.ReasonBusy) {
			failed++
		}
	}
	if total == 0 || float64(failed) < ro.HaltAt*float64(total) {
		return false, nil
	}
	reason := fmt.Sprintf("%d of %d agents offered %s failed (halt at %.0f%%)", failed, total, ro.Version, ro.HaltAt*100)
	ok, err := r.st.store.HaltRollout(ctx, ro.ID, reason, r.cfg.Now())
	if err != nil || !ok {
		return ok, err
	}
	r.log.Warn("rollout halted", "rollout", ro.ID, "version", ro.Version, "reason", reason)
	r.audit.Add(audit.Record{Kind: audit.RolloutHalt, Outcome: "halted", Actor: "relay",
		Detail: map[string]any{"rollout": ro.ID, "version": ro.Version, "failed": failed, "offered": total, "halt_at": ro.HaltAt}})
	return true, nil
}

// updateMessage handles an agent's update messages (called from the
// control stream reader; the work runs on r.bg).
func (r *Relay) updateMessage(ctx context.Context, c *agentConn, m protocol.Message) {
	switch m := m.(type) {
	case *protocol.UpdateFetch:
		o := c.offer.Load()
		if o == nil || o.id != m.ID {
			c.log.Warn("update: agent asked for a release it was not offered on this session", "offer", m.ID)
			return
		}
		r.bg.Go(func() { r.sendRelease(ctx, c, o) })
	case *protocol.UpdateStatus:
		r.bg.Go(func() { r.updateReported(ctx, c, m) })
	}
}

// sendRelease opens an update stream to the agent and writes the binary.
func (r *Relay) sendRelease(ctx context.Context, c *agentConn, o *updateOffer) {
	r.setUpdate(ctx, c, o, protocol.UpdateDownloading, "", "", "")
	start := time.Now()
	n, err := r.writeRelease(ctx, c, o)
	rec := audit.Record{Kind: audit.UpdateDownload, Outcome: audit.OutcomeOK, Tenant: c.id.Tenant, Agent: c.id.ID, Actor: "relay",
		Detail: map[string]any{"version": o.version, "offer": o.id, "bytes": n, "duration_ms": time.Since(start).Milliseconds()}}
	if err != nil {
		rec.Outcome, rec.Detail["error"] = "error", err.Error()
		c.log.Warn("update: sending the release failed", "version", o.version, "bytes", n, "err", err)
	}
	r.audit.Add(rec)
}

func (r *Relay) writeRelease(ctx context.Context, c *agentConn, o *updateOffer) (int64, error) {
	f, err := os.Open(filepath.Join(o.dir, release.BinaryFile))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	octx, cancel := context.WithTimeout(ctx, updateOpenTimeout)
	defer cancel()
	st, err := c.sess.OpenStream(octx)
	if err != nil {
		return 0, fmt.Errorf("open update stream: %w", err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(updateOpenTimeout))
	if err := protocol.WriteStreamHeader(st, protocol.StreamHeader{Service: protocol.UpdateService, Backend: "relay", RequestID: o.id}); err != nil {
		return 0, err
	}
	rep, err := protocol.ReadReply(st)
	if err != nil {
		return 0, err
	}
	if err := rep.Err(); err != nil {
		return 0, fmt.Errorf("agent refused the update stream: %w", err)
	}
	st.SetDeadline(time.Now().Add(updateSendTimeout))
	n, err := io.Copy(st, f)
	if err != nil {
		return n, err
	}
	return n, st.CloseWrite()
}

// updateReported records an agent's update status, audits it, and halts
// the rollout when too many agents failed.
func (r *Relay) updateReported(ctx context.Context, c *agentConn, m *protocol.UpdateStatus) {
	if !release.ValidVersion(m.Version) {
		c.log.Warn("update: status for an invalid version", "version", clip(m.Version))
		return
	}
	switch m.State {
	case protocol.UpdateRefused, protocol.UpdateDownloaded, protocol.UpdateApplied, protocol.UpdateSucceeded, protocol.UpdateRolledBack, protocol.UpdateFailed:
	default:
		c.log.Warn("update: unknown state", "state", clip(m.State))
		return
	}
	c.updMu.Lock()
	o := &updateOffer{version: m.Version}
	if cur := c.offer.Load(); cur != nil && cur.id == m.ID && cur.version == m.Version {
		o = cur
	}
	r.setUpdate(ctx, c, o, m.State, m.Reason, m.Message, m.From)
	c.updMu.Unlock()
	outcome := audit.OutcomeOK
	switch m.State {
	case protocol.UpdateRefused, protocol.UpdateFailed, protocol.UpdateRolledBack:
		outcome = m.State
	}
	r.audit.Add(audit.Record{Kind: audit.UpdatePrefix + m.State, Outcome: outcome, Tenant: c.id.Tenant, Agent: c.id.ID, Actor: "agent",
		Detail: map[string]any{"version": m.Version, "from": clip(m.From), "offer": clip(m.ID), "reason": clip(m.Reason), "message": clip(m.Message)}})
	c.log.Info("update status", "version", m.Version, "state", m.State, "reason", clip(m.Reason), "message", clip(m.Message))
	if outcome != audit.OutcomeOK {
		ro, err := r.st.store.ActiveRollout(ctx)
		if err == nil && ro.Version == m.Version {
			if _, err := r.checkHalt(ctx, ro); err != nil {
				r.log.Warn("rollout: halt check failed", "err", err)
			}
		}
	}
}
