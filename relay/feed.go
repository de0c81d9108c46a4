package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/policy"
	"github.com/tetherhq/tether/relay/internal/store"
)

// How the relay learns what operators changed. Every control-plane write
// appends to the store's change feed in its own transaction (store,
// changes.go); follow reads the feed at once when this process wrote it
// (the admin API) and every ChangePoll for writes of other processes
// (admin commands), and applies each change through the part that owns
// it. The feed is the truth: nothing is applied from a wake-up alone.

// Housekeeping of the feed and the policy's rate limiters.
const (
	housekeeping = 10 * time.Minute
	// changesKept is how long changes stay in the feed: a relay that was
	// cut off from the store longer reads its whole state again.
	changesKept = 24 * time.Hour
)

// follow applies the change feed from from until ctx ends.
func (r *Relay) follow(ctx context.Context, from int64) {
	r.dir.Store.Follow(ctx, from, store.Follower{
		Poll:   r.cfg.ChangePoll,
		Apply:  r.apply,
		Resync: r.resync,
		Read: func(began time.Time) {
			r.feedReadAt.Store(&began)
			r.metrics.StoreOp("change_feed", began)
		},
		Error: func(err error) {
			if errors.Is(err, store.ErrPassedOver) {
				r.log.Error("change feed: a change that kept failing was passed over; the relay reads its whole state again", "err", err)
				return
			}
			if errors.Is(err, store.ErrRewound) {
				r.log.Error("change feed: the store's feed went back (a failover to a replica or a restore from a backup lost its newest changes); the relay reads its whole state again and follows the feed from its newest change", "err", err)
				return
			}
			r.log.Warn("read the change feed", "err", err)
		},
	})
}

// apply applies one change. ctx is bounded (the follower's read timeout).
// It returns the error of a read the change needs that failed (the store
// did not answer in time, or answered with an error): the follower then
// applies the change again at its next poll rather than losing it, and
// this relay does not count as current meanwhile; one that keeps failing
// is passed over after a few seconds, and resync reads everything again.
func (r *Relay) apply(ctx context.Context, c store.Change) error {
	switch c.Kind {
	case store.ChangeRevoke:
		r.applyRevocation(ctx, c.Tenant, c.Subject)
	case store.ChangeLimits:
		return r.loadLimits(ctx)
	case store.ChangeBackend:
		r.doors.Forget(c.Subject)
		r.forgetRemovedBackend(ctx, c.Subject)
	case store.ChangeCA:
		return r.rotation.Apply(ctx)
	case store.ChangeRollout:
		r.rollouts.Wake()
	case store.ChangeRelease:
		return r.dropRemovedRelease(ctx, c.Subject)
	case store.ChangeDrain:
		// An operator drained the agent through another relay or an
		// admin command; sessions this relay's admin API drained already
		// are not told twice.
		if n := r.sessions.Sessions().GoAway(&r.bg, c.Tenant, c.Subject, protocol.GoAwayDrain, "drained by an operator", 0); n > 0 {
			r.log.Info("agent drained by an operator", "tenant", c.Tenant, "agent", c.Subject, "sessions", n)
		}
	}
	return nil
}

// forgetRemovedBackend drops the metrics series of backend name when the
// store no longer has it (the change was its removal). Best effort: when
// the store cannot say, the series stay (they are counters of a backend
// that did exist).
func (r *Relay) forgetRemovedBackend(ctx context.Context, name string) {
	_, err := r.dir.Store.Backend(ctx, name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		r.metrics.ForgetBackend(name)
	case err != nil:
		r.log.Debug("change feed: cannot tell whether a changed backend was removed; its metrics series stay", "backend", name, "err", err)
	}
}

// resync reads again everything the feed would have told: when changes
// were pruned before this relay read them, when the store's change
// notices were interrupted (PostgreSQL restarted, or the network to it
// failed), when a change that kept failing was passed over, and when the
// feed went back under this relay (a failover or a restore lost its
// newest changes).
// ctx is bounded (the follower's resync timeout): the errors of what
// could not be read are returned, and the follower resyncs again.
func (r *Relay) resync(ctx context.Context) error {
	r.log.Warn("reading the relay's state from the store again (its change feed was pruned past this relay's position or went back below it, its change notices were interrupted, or a change was passed over)")
	lerr := r.loadLimits(ctx)
	if err := r.doors.ReloadBackends(ctx); err != nil {
		lerr = errors.Join(lerr, err)
	}
	cerr := r.rotation.Apply(ctx)
	r.rollouts.Wake()
	r.sweepReleaseFiles(ctx)
	revs, err := r.dir.Store.RevokedSince(ctx, r.started.Add(-revocationSkew))
	if err != nil {
		r.log.Warn("read revocations", "err", err)
		return errors.Join(lerr, cerr, fmt.Errorf("read revocations: %w", err))
	}
	for _, rv := range revs {
		r.applyRevocation(ctx, rv.Tenant, rv.Agent)
	}
	return errors.Join(lerr, cerr)
}

// loadLimits reads every tenant's limits again; on an error the limits
// in force stay, and the error is returned, not logged: the change feed's
// follower reports it and tries again, and a relay starting fails with it.
func (r *Relay) loadLimits(ctx context.Context) error {
	defer r.metrics.StoreOp("limits", time.Now())
	return r.pol.LoadLimits(ctx, r.dir.Store)
}

// revocationSkew is how far before this relay's start resync reads
// revocations back. Sessions of agents revoked before the start were
// refused at admission; the revocations resync must not miss are those
// written since, each dated by the clock of the host that wrote it (an
// admin command, another relay), which may be behind this one's.
const revocationSkew = 10 * time.Minute

// revocationAudit bounds how long a revocation waits for its disconnect
// record's commit before it closes the agent's sessions: a store answers
// within milliseconds, and one that does not must not keep a revoked
// agent served.
const revocationAudit = time.Second

// applyRevocation refuses agent from now on and closes its live sessions,
// telling it why. The agent's record only dates the revocation: when the
// store does not give it, the revocation takes effect dated now.
func (r *Relay) applyRevocation(ctx context.Context, tenant, agent string) {
	// Its record kept for a store outage is of before: dropped.
	r.sessions.ForgetRecord(agent)
	rec, err := r.dir.Store.Agent(ctx, agent)
	if err != nil {
		rec = store.Agent{ID: agent, Tenant: tenant, RevokedAt: time.Now()}
	}
	why := policy.RevokedError(rec)
	// Mark first, then close: serveAgent adds a session to the registry,
	// then checks the mark, so no session slips between.
	if !r.pol.Revoke(agent, why) {
		return
	}
	sessions := r.sessions.Sessions()
	if n := sessions.SessionsOf(tenant, agent); n > 0 {
		// Queued before the sessions close, so the trail has it before
		// anything after them, and committed before they close, so that a
		// relay killed right after keeps it: but waited for no longer
		// than revocationAudit, since this runs on the change feed, and a
		// stalled store would hold it for the audit writer's 10 s, the
		// revoked agent still served meanwhile. The record then stays
		// queued, written when the store answers.
		r.audit.QueueWithin(audit.Record{Kind: audit.Disconnect, Outcome: protocol.CodeRevoked.String(), Tenant: tenant, Agent: agent, Actor: "relay",
			Detail: map[string]any{"sessions": n, "revoked_at": rec.RevokedAt}}, revocationAudit)
	}
	if n := sessions.CloseAgent(tenant, agent, why); n > 0 {
		r.log.Info("closed a revoked agent's sessions", "tenant", tenant, "agent", agent, "sessions", n)
	}
}

// housekeep tidies the policy's rate limiters and the links to relays
// gone from the cluster (peer.Links.Tidy), prunes the change feed, and
// tidies the store (tidyStore): at start, then every housekeeping period
// until ctx ends.
func (r *Relay) housekeep(ctx context.Context) {
	r.tidyStore(ctx, time.Now())
	t := time.NewTicker(housekeeping)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			r.pol.Tidy(now)
			if r.links != nil && r.member != nil {
				var live []string
				for _, m := range r.member.Live() {
					live = append(live, m.ID)
				}
				r.links.Tidy(live, now)
			}
			if _, err := r.dir.Store.PruneChanges(ctx, now.Add(-changesKept)); err != nil && ctx.Err() == nil {
				r.log.Warn("prune the change feed", "err", err)
			}
			r.tidyStore(ctx, now)
		}
	}
}

// auditPruneBatch bounds the records one transaction of the audit
// retention deletes: a short transaction, however many are due.
const auditPruneBatch = 1000

// auditRetentionLock is the store's lock (store.TryLock) a relay of a
// cluster holds while it prunes the audit trail.
const auditRetentionLock = "audit_retention"

// retainAudit deletes the store's traffic audit records older than
// AuditTrafficRetention at once and every housekeeping period until ctx
// ends; it returns at once when the retention is 0 (keep for ever).
func (r *Relay) retainAudit(ctx context.Context) {
	keep := r.cfg.AuditTrafficRetention
	if keep <= 0 {
		return
	}
	t := time.NewTicker(housekeeping)
	defer t.Stop()
	for {
		r.pruneAudit(ctx, r.cfg.Now().Add(-keep))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pruneAudit deletes the traffic audit records dated before before,
// counts them (tether_audit_pruned_total), logs them and, when it deleted
// any or failed, writes an audit record saying what it deleted, so that
// the trail shows its own gap. On PostgreSQL one relay of the cluster
// prunes at a time (a lock it does not wait for: the others leave this
// run to it); were several to prune at once, each would delete what the
// others had not, and record that.
func (r *Relay) pruneAudit(ctx context.Context, before time.Time) {
	unlock, ok, err := r.dir.Store.TryLock(ctx, auditRetentionLock)
	switch {
	case errors.Is(err, errors.ErrUnsupported): // SQLite: one relay
	case err != nil:
		if ctx.Err() == nil {
			r.log.Warn("audit retention: take the store's lock", "err", err)
		}
		return
	case !ok:
		r.log.Debug("audit retention: another relay of the cluster is pruning")
		return
	default:
		defer unlock()
	}
	began := time.Now()
	deleted, err := r.dir.Store.PruneAudit(ctx, audit.Traffic, before, auditPruneBatch)
	var total int64
	for kind, n := range deleted {
		r.metrics.AuditPruned.WithLabelValues(kind).Add(float64(n))
		total += n
	}
	if err != nil && ctx.Err() != nil && total == 0 {
		return // stopping
	}
	if total == 0 && err == nil {
		return
	}
	detail := map[string]any{"deleted": deleted, "older_than": before.UTC(), "retention": r.cfg.AuditTrafficRetention.String()}
	outcome := audit.OutcomeOK
	if err != nil {
		outcome = "error"
		detail["error"] = err.Error()
		r.log.Warn("audit retention: prune the store's traffic records", "older_than", before.UTC(), "deleted", deleted, "err", err)
	} else {
		r.log.Info("audit retention: traffic records older than the retention deleted from the store (the audit file keeps them)",
			"older_than", before.UTC(), "deleted", deleted, "records", total, "took", time.Since(began).Round(time.Millisecond))
	}
	r.audit.Add(audit.Record{At: r.cfg.Now(), Kind: audit.Prune, Outcome: outcome, Actor: "relay", Detail: detail})
}

// tidyStore removes what would otherwise grow for ever: this relay's
// copies of releases removed while it could not follow the change feed
// (sweepReleaseFiles), the agents' update states of versions no release
// and no active rollout has any more (each agent's newest stays), and the
// join tokens that could enrol no more agents for longer than
// TokenRetention (purgeTokens). Every relay of a cluster does it; each
// deletes what the others have not yet.
func (r *Relay) tidyStore(ctx context.Context, now time.Time) {
	r.sweepReleaseFiles(ctx)
	if n, err := r.dir.Store.PruneAgentUpdates(ctx); err != nil && ctx.Err() == nil {
		r.log.Warn("prune agents' update states", "err", err)
	} else if n > 0 {
		r.log.Info("pruned agents' update states of versions no release or active rollout has", "states", n)
	}
	r.purgeTokens(ctx, now)
}

// dropRemovedRelease removes this relay's copy of the files of version,
// removed from the store, unless the store has a release of it again (it
// was published anew since). It returns the error of the store's read,
// for the follower to apply the change again; a copy that cannot be
// removed is logged, and removed by a later housekeeping.
func (r *Relay) dropRemovedRelease(ctx context.Context, version string) error {
	rels, err := r.dir.Store.Releases(ctx, version)
	if err != nil {
		return err
	}
	if len(rels) > 0 {
		return nil
	}
	removed, err := r.dir.RemoveReleaseFiles(version)
	switch {
	case err != nil:
		r.log.Warn("remove the files of a removed release from the data directory (the next housekeeping tries again)", "version", version, "err", err)
	case removed:
		r.log.Info("removed the files of a removed release from the data directory", "version", version)
	}
	return nil
}

// sweepReleaseFiles removes this relay's copies of the releases the store
// no longer has.
func (r *Relay) sweepReleaseFiles(ctx context.Context) {
	removed, err := r.dir.SweepReleaseFiles(ctx)
	if err != nil && ctx.Err() == nil {
		r.log.Warn("remove the files of removed releases from the data directory", "err", err)
	}
	if len(removed) > 0 {
		r.log.Info("removed the files of removed releases from the data directory", "versions", removed)
	}
}

// purgeTokens deletes the join tokens that expired, or had every use
// taken, more than TokenRetention ago (store.PurgeTokens), with an audit
// record per tenant.
func (r *Relay) purgeTokens(ctx context.Context, now time.Time) {
	if r.cfg.TokenRetention < 0 {
		return
	}
	ts, err := r.dir.Store.PurgeTokens(ctx, now.Add(-r.cfg.TokenRetention))
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("purge expired and used-up join tokens", "err", err)
		}
		return
	}
	byTenant := map[string][]string{}
	var tenants []string
	for _, t := range ts {
		if byTenant[t.Tenant] == nil {
			tenants = append(tenants, t.Tenant)
		}
		byTenant[t.Tenant] = append(byTenant[t.Tenant], t.ID)
	}
	for _, tenant := range tenants {
		ids := byTenant[tenant]
		r.audit.Add(audit.Record{Kind: audit.TokenPurge, Outcome: audit.OutcomeOK, Tenant: tenant, Actor: "relay",
			Detail: map[string]any{"tokens": ids, "retention": r.cfg.TokenRetention.String()}})
		r.log.Info("purged join tokens expired or used up long ago", "tenant", tenant, "tokens", len(ids), "retention", r.cfg.TokenRetention)
	}
}
