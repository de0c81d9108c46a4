// Package update carries agents' self-update on the relay's side: it
// offers the active rollout's release to the agents the rollout selects,
// sends the binary to those that ask for it, records what each agent
// reports and halts a rollout that fails too often (Rollouts); and it
// serves the install scripts and agent binaries for first installs
// (Downloads).
package update

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/release"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/credential"
	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/store"
)

// Agent is one connected agent session, as rollouts need it.
type Agent interface {
	Identity() identity.Agent
	Hello() *protocol.Hello
	// Send writes a control message to the agent.
	Send(protocol.Message) error
	// NewStream opens a stream to the agent, to which the caller writes
	// the stream header.
	NewStream(ctx context.Context) (transport.Stream, error)
	Logger() *slog.Logger
	// Done is closed when the session has ended.
	Done() <-chan struct{}
}

// Timeouts of the update payload stream.
const (
	openTimeout = 15 * time.Second // open the stream and read the agent's reply
	sendTimeout = 30 * time.Minute // send the binary
	// stale is how long an agent may stay offered, downloading or
	// applied before it stops counting against a rollout's batch.
	stale = 15 * time.Minute
	// offerLost is how long an offer may go unanswered before another
	// session of the agent (on this relay or another of the cluster) may
	// offer it again: agents answer an offer at once.
	offerLost = 30 * time.Second
	// busyRetry is how long after an agent refused an offer as busy
	// (another update of its own under way, its new version's probation
	// included) the release is offered again on the same session: busy
	// is not final, and the session may last for days.
	busyRetry = time.Minute
	// connectGap spaces the offer rounds that agents connecting wake: a
	// reconnect storm brings them back by the thousand.
	connectGap = time.Second
	// maxText bounds the texts an agent reports that are stored.
	maxText = 512
	// recordTimeout bounds the store write of an agent's update state.
	recordTimeout = 10 * time.Second
	// fullReadEvery is how often the agents' update states of the active
	// version are read whole rather than only as they changed since the
	// last read (withAgentUpdates): a safety net for rows written
	// around the store.
	fullReadEvery = time.Minute
)

// Config configures Rollouts.
type Config struct {
	Dir   *datadir.Dir
	Audit *audit.Log
	// Agents returns one live, non-draining session per agent.
	Agents func() []Agent
	// Connected returns a channel closed at the next agent connection.
	Connected func() <-chan struct{}
	// Interval is how often offers are made again to agents whose
	// earlier offer or download went nowhere.
	Interval time.Duration
	Logger   *slog.Logger
	Now      func() time.Time
}

// Rollouts offers releases to agents. Run offers; Handle takes the
// agents' update messages.
type Rollouts struct {
	cfg  Config
	st   *store.Store
	wake chan struct{}

	mu      sync.Mutex // guards offered and stopped, and orders sends.Go before sends.Wait
	offered map[Agent]*offerState
	stopped bool // Run has returned: Handle starts nothing more

	sends sync.WaitGroup // release sends and status records; Run waits for them

	// statesMu (a lock whose wait a context ends) guards states, the
	// agents' update states of a version as last read.
	statesMu chan struct{}
	states   versionStates
}

// versionStates are the agents' update states of one version, kept up to
// date by reading only what changed since the last read.
type versionStates struct {
	version string
	rows    map[string]store.AgentUpdate // by agent
	mark    int64                        // where the next read starts (store.AgentUpdatesSince)
	fullAt  time.Time                    // when they were last read whole
	// read is how many rows the last read returned, and full whether
	// it read them all.
	read int
	full bool
}

// offerState is what was offered on one agent session, and how many of
// the agent's update messages it took.
type offerState struct {
	mu    sync.Mutex // guards the fields; held for no store call or write
	offer *offer
	// unsolicited counts the statuses taken that name no offer of this
	// session: reports about an offer made on another session (the agent
	// reports on any live one, and after a restart on a new one).
	unsolicited int
	dropped     bool // a message was dropped (logged once per session)
}

// maxUnsolicited bounds the statuses a session takes that name no offer
// of its own. An agent sends one or two (an update applied, then the
// restarted binary's success or rollback); each costs a store write and
// an audit record, so an agent that sends more is not followed.
const maxUnsolicited = 4

// offer is the release offered on one agent session.
type offer struct {
	id      string
	version string
	rollout int64
	// os, arch and channel are the release's (with version, its row in
	// the store).
	os, arch, channel string
	dir               string // the release's files (datadir.Dir.ReleaseFiles)
	// announced is closed once the offer is audited (or could not be
	// sent). The agent's answers are recorded after it, on goroutines of
	// their own: an agent can answer an offer before the relay has
	// recorded making it.
	announced chan struct{}
	// fetched is set once the agent asked for the release: it is sent
	// once per offer. states are the statuses taken for the offer, each
	// once. Both are guarded by the session's offerState.mu.
	fetched bool
	states  map[string]bool
}

// wait returns once o is announced, or false if ctx ended first.
func (o *offer) wait(ctx context.Context) bool {
	select {
	case <-o.announced:
		return true
	default:
	}
	select {
	case <-o.announced:
		return true
	case <-ctx.Done():
		return false
	}
}

// NewRollouts returns Rollouts; call Run.
func NewRollouts(cfg Config) *Rollouts {
	return &Rollouts{cfg: cfg, st: cfg.Dir.Store, wake: make(chan struct{}, 1), offered: map[Agent]*offerState{},
		statesMu: make(chan struct{}, 1)}
}

// Wake has Run offer updates now (a rollout started or halted).
func (u *Rollouts) Wake() {
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// Run offers the active rollout's release to the agents it selects until
// ctx ends: when woken, when an agent connects (at most once per
// connectGap), and every Interval. It returns once every send it started
// has ended.
func (u *Rollouts) Run(ctx context.Context) error {
	defer func() {
		u.mu.Lock()
		u.stopped = true
		u.mu.Unlock()
		u.sends.Wait()
	}()
	t := time.NewTicker(u.cfg.Interval)
	defer t.Stop()
	var last time.Time
	for {
		connected := u.cfg.Connected()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-u.wake:
		case <-connected:
			if wait := connectGap - time.Since(last); wait > 0 {
				gap := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					gap.Stop()
					return nil
				case <-gap.C:
				}
			}
		}
		last = time.Now()
		if err := u.offerAll(ctx); err != nil && ctx.Err() == nil {
			u.cfg.Logger.Warn("rollout: offering updates failed", "err", err)
		}
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
//
// A refusal or failure for what reached the agent or for its host, not
// for the signed release itself — the release removed since it
// was offered (the relay answered the fetch with UpdateCancel), a
// download that failed or ran out of time, a binary of the wrong size or
// hash (a relay's copy damaged on disk, which the relay writes again from
// the store once removed), a binary that could not be put in place (a
// full disk) — is final for the rollout that offered it only: a later
// rollout of the version offers it again, once the cause is mended.
// Signature, key, manifest, platform, channel and expiry refusals, and a
// rollback, are verdicts on the release for that agent, final for good.
func settled(s store.AgentUpdate, ro store.Rollout) bool {
	switch s.State {
	case protocol.UpdateSucceeded, protocol.UpdateRolledBack:
		return true
	case protocol.UpdateFailed:
		if s.Reason == release.ReasonApply {
			return s.Rollout == ro.ID
		}
		return true
	case protocol.UpdateRefused:
		switch s.Reason {
		case release.ReasonBusy:
			return false
		case release.ReasonRemoved, release.ReasonDownload, release.ReasonSize, release.ReasonHash:
			return s.Rollout == ro.ID
		}
		return true
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

// stateOf returns the offer state of a, creating it.
func (u *Rollouts) stateOf(a Agent) *offerState {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.offered[a]
	if s == nil {
		s = &offerState{}
		u.offered[a] = s
	}
	return s
}

// forgetEnded drops the offer state of sessions that ended.
func (u *Rollouts) forgetEnded() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for a := range u.offered {
		select {
		case <-a.Done():
			delete(u.offered, a)
		default:
		}
	}
}

func (u *Rollouts) offerAll(ctx context.Context) error {
	u.forgetEnded()
	ro, err := u.st.ActiveRollout(ctx)
	if errors.Is(err, store.ErrNotFound) {
		u.forgetAgentUpdates()
		return nil
	}
	if err != nil {
		return err
	}
	// counts is whether an agent's update counts against the batch: under
	// way for this rollout, and not stale. Such an agent is offered again
	// (its session may be new) without taking another place.
	counts := func(s store.AgentUpdate) bool {
		return s.Rollout == ro.ID && inFlight(s.State) && time.Since(s.UpdatedAt) < stale
	}
	// One read of the agents' states of the version serves the halt
	// check and the offers: of what changed since the last (at fleet
	// scale a handful of rows, where the version has thousands). What
	// the offers need of them is taken while they are held: the count of
	// agents updating, and the states of the agents connected here.
	agents := u.cfg.Agents()
	states := make(map[string]store.AgentUpdate, len(agents))
	var total, failed, busy int
	err = u.withAgentUpdates(ctx, ro.Version, func(rows map[string]store.AgentUpdate) {
		total, failed = failures(ro, rows)
		for _, s := range rows {
			if counts(s) {
				busy++
			}
		}
		for _, a := range agents {
			if s, ok := rows[a.Identity().ID]; ok {
				states[s.Agent] = s
			}
		}
	})
	if err != nil {
		return err
	}
	if halted, err := u.haltIfFailing(ctx, ro, total, failed); err != nil || halted {
		return err
	}
	rels, err := u.st.Releases(ctx, ro.Version)
	if err != nil {
		return err
	}
	for _, a := range agents {
		id, hello := a.Identity(), a.Hello()
		if !slices.Contains(hello.Capabilities, protocol.CapUpdate) || slices.Contains(hello.Capabilities, protocol.CapUpdateTrial) {
			continue
		}
		if !selects(ro, id.Tenant, id.ID) || hello.AgentVersion == ro.Version {
			continue
		}
		if release.ValidVersion(hello.AgentVersion) && release.CompareVersions(hello.AgentVersion, ro.Version) > 0 {
			continue // already newer: it would refuse (not_newer), which is no failure of the release
		}
		s, has := states[id.ID]
		if has && settled(s, ro) {
			continue
		}
		ofs := u.stateOf(a)
		ofs.mu.Lock()
		already := ofs.offer != nil && ofs.offer.version == ro.Version
		ofs.mu.Unlock()
		if already && !(has && s.Rollout == ro.ID && s.State == protocol.UpdateRefused && s.Reason == release.ReasonBusy && u.cfg.Now().Sub(s.UpdatedAt) >= busyRetry) {
			continue // offered on this session already (and not refused as busy a while ago)
		}
		channel := hello.UpdateChannel
		if channel == "" {
			channel = release.DefaultChannel
		}
		i := slices.IndexFunc(rels, func(x store.Release) bool {
			return x.OS == hello.OS && x.Arch == hello.Arch && x.Channel == channel
		})
		if i < 0 {
			continue // nothing for its platform and channel
		}
		counted := has && counts(s)
		if ro.Batch > 0 && busy >= ro.Batch && !counted {
			continue
		}
		if err := u.offer(ctx, a, ofs, ro, rels[i]); err != nil {
			a.Logger().Warn("rollout: offer failed", "version", ro.Version, "err", err)
			continue
		}
		if !counted {
			busy++
		}
	}
	return nil
}

// offer claims the release's offer to a and sends a its signed manifest
// (on a goroutine Run waits for).
func (u *Rollouts) offer(ctx context.Context, a Agent, ofs *offerState, ro store.Rollout, rel store.Release) error {
	dir, err := u.cfg.Dir.ReleaseFiles(ctx, rel)
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
	o := &offer{id: credential.NewRequestID(), version: ro.Version, rollout: ro.ID, os: rel.OS, arch: rel.Arch, channel: rel.Channel, dir: dir, announced: make(chan struct{})}
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
	id, hello := a.Identity(), a.Hello()
	// Claim the offer: another relay of the cluster holding a session of
	// the same agent may be offering it at the same moment.
	claimed, err := u.st.ClaimAgentUpdate(ctx, store.AgentUpdate{Agent: id.ID, Tenant: id.Tenant, Version: ro.Version, Rollout: ro.ID,
		State: protocol.UpdateOffered, From: hello.AgentVersion, UpdatedAt: u.cfg.Now()}, u.cfg.Now().Add(-stale), u.cfg.Now().Add(-offerLost))
	if err != nil {
		return err
	}
	if !claimed {
		a.Logger().Debug("update offered to this agent elsewhere (another session or relay)", "version", ro.Version)
		return nil
	}
	// The offer's lock is not held while the offer is written and
	// audited: the session's control reader takes it for the agent's
	// fetch, and the audit commit waits on the store (up to 10 s a batch
	// when it stalls), which would stop the reader and have a healthy
	// agent's session end as heartbeat_missed. The answers wait for
	// announced instead, on goroutines of their own.
	ofs.mu.Lock()
	ofs.offer = o
	ofs.mu.Unlock()
	// The offer is written and audited on a goroutine of its own, which
	// Run waits for: a write to an agent that reads nothing waits until
	// its session ends (three heartbeats), and the next agents' offers
	// do not wait behind it, nor behind each offer's audit commit.
	announce := func() {
		defer close(o.announced)
		if err := a.Send(m); err != nil {
			a.Logger().Warn("rollout: offer failed", "version", ro.Version, "err", err)
			return
		}
		u.cfg.Audit.Add(audit.Record{Kind: audit.UpdateOffer, Outcome: audit.OutcomeOK, Tenant: id.Tenant, Agent: id.ID, Actor: "relay",
			Detail: map[string]any{"version": ro.Version, "rollout": ro.ID, "offer": o.id, "from": hello.AgentVersion, "os": rel.OS, "arch": rel.Arch, "channel": rel.Channel}})
		a.Logger().Info("update offered", "version", ro.Version, "rollout", ro.ID, "offer", o.id)
	}
	if !u.goSend(announce) {
		close(o.announced) // Run has returned: nothing is sent
	}
	return nil
}

// record stores a's state for the version of o, waiting for the store no
// longer than recordTimeout.
func (u *Rollouts) record(ctx context.Context, a Agent, o *offer, state, reason, message, from string) {
	ctx, cancel := context.WithTimeout(ctx, recordTimeout)
	defer cancel()
	id := a.Identity()
	s := store.AgentUpdate{Agent: id.ID, Tenant: id.Tenant, Version: o.version, Rollout: o.rollout, State: state,
		Reason: protocol.Clip(reason, maxText), Message: protocol.Clip(message, maxText), From: protocol.Clip(from, maxText), UpdatedAt: u.cfg.Now()}
	if from == "" && state == protocol.UpdateOffered {
		s.From = a.Hello().AgentVersion
	}
	if err := u.st.SetAgentUpdate(ctx, s); err != nil {
		a.Logger().Warn("record update state", "version", o.version, "state", state, "err", err)
	}
}

// checkHalt halts ro when the fraction of its agents that failed reached
// its HaltAt.
func (u *Rollouts) checkHalt(ctx context.Context, ro store.Rollout) (bool, error) {
	if ro.HaltAt <= 0 || ro.State != store.RolloutActive {
		return false, nil
	}
	var total, failed int
	err := u.withAgentUpdates(ctx, ro.Version, func(rows map[string]store.AgentUpdate) { total, failed = failures(ro, rows) })
	if err != nil {
		return false, err
	}
	return u.haltIfFailing(ctx, ro, total, failed)
}

// withAgentUpdates calls fn with every agent's update state of version
// as the store holds it now, by agent; fn must not keep rows. It reads
// only the rows written since its last read (of the same version), by
// this relay or any other of the cluster (store.AgentUpdatesSince), and
// all of them when the version changed and every fullReadEvery. Run's
// offers and the halt checks of agents' reports share what it read.
func (u *Rollouts) withAgentUpdates(ctx context.Context, version string, fn func(rows map[string]store.AgentUpdate)) error {
	select {
	case u.statesMu <- struct{}{}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	defer func() { <-u.statesMu }()
	vs := &u.states
	now := u.cfg.Now()
	full := vs.rows == nil || vs.version != version || now.Sub(vs.fullAt) >= fullReadEvery
	mark := vs.mark
	if full {
		mark = 0
	}
	rows, next, err := u.st.AgentUpdatesSince(ctx, version, mark)
	if err == nil && !full && next < mark {
		// The store's marks went back (a database restored from a
		// backup, or another put in its place): read it whole.
		full = true
		rows, next, err = u.st.AgentUpdatesSince(ctx, version, 0)
	}
	if err != nil {
		return err
	}
	if full {
		*vs = versionStates{version: version, rows: make(map[string]store.AgentUpdate, len(rows)), fullAt: now}
	}
	for _, s := range rows {
		vs.rows[s.Agent] = s
	}
	vs.mark, vs.read, vs.full = next, len(rows), full
	fn(vs.rows)
	return nil
}

// forgetAgentUpdates drops the agents' update states kept, once no rollout
// is active (unless they are being read: then at a later tick).
func (u *Rollouts) forgetAgentUpdates() {
	select {
	case u.statesMu <- struct{}{}:
		u.states = versionStates{}
		<-u.statesMu
	default:
	}
}

// failures counts, of rows (the agents' update states of ro's version),
// those of the agents ro was offered to, and of them those that failed.
func failures(ro store.Rollout, rows map[string]store.AgentUpdate) (total, failed int) {
	for _, s := range rows {
		if s.Rollout != ro.ID || (s.State == protocol.UpdateRefused && (notApplicable(s.Reason) || s.Reason == release.ReasonRemoved)) {
			continue
		}
		total++
		if s.State == protocol.UpdateRolledBack || s.State == protocol.UpdateFailed || (s.State == protocol.UpdateRefused && s.Reason != release.ReasonBusy) {
			failed++
		}
	}
	return total, failed
}

// haltIfFailing is checkHalt given, of the agents ro was offered to, how
// many there are and how many failed.
func (u *Rollouts) haltIfFailing(ctx context.Context, ro store.Rollout, total, failed int) (bool, error) {
	if ro.HaltAt <= 0 || ro.State != store.RolloutActive {
		return false, nil
	}
	if total == 0 || float64(failed) < ro.HaltAt*float64(total) {
		return false, nil
	}
	reason := fmt.Sprintf("%d of %d agents offered %s failed (halt at %.0f%%)", failed, total, ro.Version, ro.HaltAt*100)
	ok, err := u.st.HaltRollout(ctx, ro.ID, reason, u.cfg.Now())
	if err != nil || !ok {
		return ok, err
	}
	u.cfg.Logger.Warn("rollout halted", "rollout", ro.ID, "version", ro.Version, "reason", reason)
	u.cfg.Audit.Add(audit.Record{Kind: audit.RolloutHalt, Outcome: "halted", Actor: "relay",
		Detail: map[string]any{"rollout": ro.ID, "version": ro.Version, "failed": failed, "offered": total, "halt_at": ro.HaltAt}})
	return true, nil
}

// notApplicable reports whether an agent's refusal for reason says the
// release is not for it, rather than anything about the release: it
// takes no updates (no keys trusted) or runs a version as new. Such
// agents count neither as offered nor as failed when a rollout decides
// whether to halt: a fleet with updates turned off here and there, or
// partly on a newer line, must not halt a hotfix for the rest.
func notApplicable(reason string) bool {
	return reason == release.ReasonNoKeys || reason == release.ReasonNotNewer
}

// Handle takes an agent's update message, read on the control stream of
// the session a, whose context ctx is. It does not block: the work runs on
// a goroutine that Run waits for.
//
// Each message costs a goroutine and a store write, a release send much
// more, so a session takes only what an agent following the protocol
// sends: one fetch per offer, each status once per offer, and a few
// statuses about offers of other sessions (maxUnsolicited). The rest is
// dropped, logged once per session.
func (u *Rollouts) Handle(ctx context.Context, a Agent, m protocol.Message) {
	ofs := u.stateOf(a)
	switch m := m.(type) {
	case *protocol.UpdateFetch:
		ofs.mu.Lock()
		o := ofs.offer
		take := o != nil && o.id == m.ID && !o.fetched
		if take {
			o.fetched = true
		}
		ofs.mu.Unlock()
		if !take {
			u.drop(a, ofs, "update: agent asked for a release it was not offered on this session, or asked again; not sent", "offer", protocol.Clip(m.ID, maxText))
			return
		}
		u.goSend(func() { u.send(ctx, a, o) })
	case *protocol.UpdateStatus:
		ofs.mu.Lock()
		take := true
		if o := ofs.offer; o != nil && o.id == m.ID && o.version == m.Version {
			take = !o.states[m.State]
			if take {
				if o.states == nil {
					o.states = map[string]bool{}
				}
				o.states[m.State] = true
			}
		} else {
			take = ofs.unsolicited < maxUnsolicited
			if take {
				ofs.unsolicited++
			}
		}
		ofs.mu.Unlock()
		if !take {
			u.drop(a, ofs, "update: agent sent more update statuses than an update has; not recorded", "version", protocol.Clip(m.Version, maxText), "state", protocol.Clip(m.State, maxText))
			return
		}
		u.goSend(func() { u.reported(ctx, a, m) })
	}
}

// drop logs an update message of a's that is not taken, the first time
// on the session.
func (u *Rollouts) drop(a Agent, ofs *offerState, msg string, attrs ...any) {
	ofs.mu.Lock()
	first := !ofs.dropped
	ofs.dropped = true
	ofs.mu.Unlock()
	if first {
		a.Logger().Warn(msg+" (logged once per session)", attrs...)
	}
}

// goSend runs fn on a goroutine Run waits for, unless Run has returned,
// and reports whether it did.
func (u *Rollouts) goSend(fn func()) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.stopped {
		u.sends.Go(fn)
	}
	return !u.stopped
}

// send opens an update stream to the agent and writes the binary; when
// the release was removed since it was offered, it tells the agent so at
// once (UpdateCancel) instead.
func (u *Rollouts) send(ctx context.Context, a Agent, o *offer) {
	if !o.wait(ctx) {
		return // the session ended
	}
	start := time.Now()
	id := a.Identity()
	rec := audit.Record{Kind: audit.UpdateDownload, Outcome: audit.OutcomeOK, Tenant: id.Tenant, Agent: id.ID, Actor: "relay",
		Detail: map[string]any{"version": o.version, "offer": o.id}}
	f, err := u.openRelease(ctx, o)
	var gone *protocol.Error
	if errors.As(err, &gone) {
		// Nothing is sent and no stream opens: the agent, told why, ends
		// its download now rather than at its download timeout, and
		// reports the refusal (reason removed).
		if serr := a.Send(&protocol.UpdateCancel{ID: o.id, Version: o.version, Code: gone.Code.String(), Message: gone.Message}); serr != nil {
			a.Logger().Debug("update: tell the agent the release is gone", "version", o.version, "err", serr)
		}
		rec.Outcome, rec.Detail["error"], rec.Detail["bytes"] = "error", gone.Error(), int64(0)
		a.Logger().Warn("update: the agent asked for a release removed since it was offered; told it so, nothing sent", "version", o.version, "offer", o.id)
		u.cfg.Audit.Add(rec)
		return
	}
	var n int64
	if err == nil {
		u.record(ctx, a, o, protocol.UpdateDownloading, "", "", "")
		n, err = writeRelease(ctx, a, o, f)
		f.Close()
	}
	rec.Detail["bytes"], rec.Detail["duration_ms"] = n, time.Since(start).Milliseconds()
	if err != nil {
		rec.Outcome, rec.Detail["error"] = "error", err.Error()
		a.Logger().Warn("update: sending the release failed", "version", o.version, "bytes", n, "err", err)
	}
	u.cfg.Audit.Add(rec)
}

// openRelease opens the binary of o's release for sending. A release
// removed since it was offered — its row gone from the store (removed
// here, or through another relay whose change has not removed this
// relay's copy yet) or its binary gone from the copy offered — is a
// *protocol.Error with CodeUnavailable naming the version. A store that
// does not answer does not stop a download: the copy is sent.
func (u *Rollouts) openRelease(ctx context.Context, o *offer) (*os.File, error) {
	_, err := u.st.Release(ctx, o.version, o.os, o.arch, o.channel)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, releaseGone(o.version)
	case err != nil:
		u.cfg.Logger.Debug("update: could not check that the release is still published; sending this relay's copy", "version", o.version, "err", err)
	}
	f, err := os.Open(filepath.Join(o.dir, release.BinaryFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, releaseGone(o.version)
	}
	return f, err
}

// releaseGone is the refusal of a download of version, whose release was
// removed since it was offered.
func releaseGone(version string) *protocol.Error {
	return protocol.Errorf(protocol.CodeUnavailable, "release %s was removed from the relay since it was offered (release remove); nothing is sent, and the agent keeps its version", version)
}

// writeRelease opens an update stream to the agent and writes the
// binary, f.
func writeRelease(ctx context.Context, a Agent, o *offer, f *os.File) (int64, error) {
	octx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	st, err := a.NewStream(octx)
	if err != nil {
		return 0, fmt.Errorf("open update stream: %w", err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(openTimeout))
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
	st.SetDeadline(time.Now().Add(sendTimeout))
	n, err := io.Copy(st, f)
	if err != nil {
		return n, err
	}
	return n, st.CloseWrite()
}

// reported records an agent's update status, audits it, and halts the
// rollout when too many agents failed.
func (u *Rollouts) reported(ctx context.Context, a Agent, m *protocol.UpdateStatus) {
	if !release.ValidVersion(m.Version) {
		a.Logger().Warn("update: status for an invalid version", "version", protocol.Clip(m.Version, maxText))
		return
	}
	switch m.State {
	case protocol.UpdateRefused, protocol.UpdateDownloaded, protocol.UpdateApplied, protocol.UpdateSucceeded, protocol.UpdateRolledBack, protocol.UpdateFailed:
	default:
		a.Logger().Warn("update: unknown state", "state", protocol.Clip(m.State, maxText))
		return
	}
	ofs := u.stateOf(a)
	ofs.mu.Lock()
	o := &offer{version: m.Version}
	if cur := ofs.offer; cur != nil && cur.id == m.ID && cur.version == m.Version {
		o = cur
	}
	ofs.mu.Unlock()
	if o.announced != nil {
		o.wait(ctx) // a session that ended still has the answer audited
	}
	u.record(ctx, a, o, m.State, m.Reason, m.Message, m.From)
	outcome := audit.OutcomeOK
	switch m.State {
	case protocol.UpdateRefused, protocol.UpdateFailed, protocol.UpdateRolledBack:
		outcome = m.State
	}
	id := a.Identity()
	u.cfg.Audit.Add(audit.Record{Kind: audit.UpdatePrefix + m.State, Outcome: outcome, Tenant: id.Tenant, Agent: id.ID, Actor: "agent",
		Detail: map[string]any{"version": m.Version, "from": protocol.Clip(m.From, maxText), "offer": protocol.Clip(m.ID, maxText), "reason": protocol.Clip(m.Reason, maxText), "message": protocol.Clip(m.Message, maxText)}})
	a.Logger().Info("update status", "version", m.Version, "state", m.State, "reason", protocol.Clip(m.Reason, maxText), "message", protocol.Clip(m.Message, maxText))
	if outcome != audit.OutcomeOK {
		ro, err := u.st.ActiveRollout(ctx)
		if err == nil && ro.Version == m.Version {
			if _, err := u.checkHalt(ctx, ro); err != nil {
				u.cfg.Logger.Warn("rollout: halt check failed", "err", err)
			}
		}
	}
}
