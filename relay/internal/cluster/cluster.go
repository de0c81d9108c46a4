// Package cluster keeps a relay's membership of its cluster: its own
// heartbeat row, the presence rows of the agents it holds, and the list of
// live relays, all in the shared store (store/cluster.go says how rows are
// fenced and judged alive). There is no consensus of its own: the
// database is the truth, and each relay reads it.
package cluster

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// Defaults.
const (
	// DefaultHeartbeat is how often a relay writes its row and reads the
	// others'.
	DefaultHeartbeat = 2 * time.Second
	// DefaultDeadAfter is how long after its last heartbeat a relay (and
	// the agents it held) stops counting.
	DefaultDeadAfter = 10 * time.Second
	// presenceDelay gathers the presence changes of a burst of
	// (re)connecting agents into one write.
	presenceDelay = 50 * time.Millisecond
	// presenceChunk is how many presence rows one transaction writes.
	presenceChunk = 500
	// holdersTTL is how long the relays holding a tenant are remembered
	// between dials that ask.
	holdersTTL = time.Second
	// holdersFresh is how old a read may be and still count as fresh: the
	// dials that ask afresh at once (a burst of them while a tenant's
	// agent moves between relays) share one read of the store.
	holdersFresh = 25 * time.Millisecond
	// opTimeout bounds each store operation, so that a store that stops
	// answering (a connection cut without a reset) holds up nothing past
	// it: the next heartbeat tries again.
	opTimeout = 5 * time.Second
	// pruneEvery, pruneAfter and keepDead: the occasional removal of rows
	// that no longer count (nothing depends on it).
	pruneEvery = 10 * time.Minute
	pruneAfter = time.Hour
	keepDead   = 7 * 24 * time.Hour
)

// presenceRewrite is the period, in heartbeats, at which a relay writes
// the presence of every agent it holds again (about a minute at the
// default heartbeat), a statement for every 500 agents, and deletes its
// rows of agents it does not hold: presence rows lost otherwise than with
// the relay's row (a failover to a replica that lacked the newest writes)
// come back within it, and rows whose deletion was lost go. A relay whose
// row was gone writes them at once. (A variable for tests.)
var presenceRewrite = 30

// Config configures a relay's membership.
type Config struct {
	Store *store.Store
	// ID names this relay in the cluster. Epoch is the run epoch this
	// start proposes (its time on this host's clock): the store takes it,
	// or one above the id's last epoch when that is not below it (a
	// clock behind an earlier run's), so that epochs grow at every start
	// (store.JoinCluster); Cluster.Epoch says which it took.
	ID    string
	Epoch int64
	// AgentAddr and PeerAddr are where agents and peer relays reach this
	// relay individually ("" when it does not say).
	AgentAddr, PeerAddr string
	Version             string
	Started             time.Time
	// Heartbeat and DeadAfter default to DefaultHeartbeat and
	// DefaultDeadAfter.
	Heartbeat, DeadAfter time.Duration
	// Load reports what this relay holds, for its row.
	Load func() (agents, sessions int, streams int64)
	// Fenced is told when a later run of this relay's id took its row:
	// two processes run under one id, and this one must stop.
	Fenced func(error)
	Logger *slog.Logger
}

// Cluster is a relay's membership.
type Cluster struct {
	cfg Config
	log *slog.Logger

	draining atomic.Bool
	// lastBeat is when the last heartbeat written began, as time.Now
	// gave it: with its monotonic reading, so that its age
	// (time.Since) does not move with a step of the wall clock (an NTP
	// correction, a VM resumed), which would have a healthy relay think
	// it lost its store, or a peer that lost it answer that it just
	// wrote. nil before the first.
	lastBeat atomic.Pointer[time.Time]
	epoch    atomic.Int64 // this run's epoch, once it joined (0 before)

	beats int // heartbeats written, on Run's goroutine

	mu       sync.Mutex // guards the fields below
	pending  map[store.AgentKey]int
	held     map[store.AgentKey]int   // every agent held, with its sessions
	live     []store.Relay            // live relays, by id, this one included
	changed  chan struct{}            // closed and replaced when live changes
	holders  map[string]cachedHolders // by tenant
	beatNow  chan struct{}            // a heartbeat is wanted before the next tick
	presence chan struct{}            // presence changes are waiting
}

type cachedHolders struct {
	hs []store.Holding
	at time.Time
}

// New returns the membership of cfg; Run keeps it.
func New(cfg Config) *Cluster {
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.DeadAfter <= 0 {
		cfg.DeadAfter = DefaultDeadAfter
	}
	return &Cluster{cfg: cfg, log: cfg.Logger, pending: map[store.AgentKey]int{}, held: map[store.AgentKey]int{}, changed: make(chan struct{}),
		holders: map[string]cachedHolders{}, beatNow: make(chan struct{}, 1), presence: make(chan struct{}, 1)}
}

// ID is this relay's id.
func (c *Cluster) ID() string { return c.cfg.ID }

// Epoch is this run's epoch, as the store gave it when it joined the
// cluster (0 before it has).
func (c *Cluster) Epoch() int64 { return c.epoch.Load() }

// DeadAfter is how long a silent relay counts as alive.
func (c *Cluster) DeadAfter() time.Duration { return c.cfg.DeadAfter }

// Present records that this relay now holds sessions sessions of agent
// of tenant (0: none). It does not block: the rows are written shortly.
func (c *Cluster) Present(tenant, agent string, sessions int) {
	k := store.AgentKey{Tenant: tenant, Agent: agent}
	c.mu.Lock()
	c.pending[k] = sessions
	if sessions > 0 {
		c.held[k] = sessions
	} else {
		delete(c.held, k)
	}
	c.mu.Unlock()
	select {
	case c.presence <- struct{}{}:
	default:
	}
}

// SetDraining marks this relay as draining (or not) and writes its row at
// once: agents and peers learn it within a heartbeat.
func (c *Cluster) SetDraining(draining bool) {
	c.draining.Store(draining)
	select {
	case c.beatNow <- struct{}{}:
	default:
	}
}

// Draining reports whether this relay drains.
func (c *Cluster) Draining() bool { return c.draining.Load() }

// LastHeartbeat is when this relay last wrote its row (the zero time
// before the first). It carries a monotonic clock reading: time.Since
// of it is the heartbeat's age whatever the wall clock did since. (Drop
// it with Round(0) before comparing with a time read back from
// elsewhere.)
func (c *Cluster) LastHeartbeat() time.Time {
	if t := c.lastBeat.Load(); t != nil {
		return *t
	}
	return time.Time{}
}

// Live returns the live relays, by id, this one included once it has
// written its first heartbeat.
func (c *Cluster) Live() []store.Relay {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.live)
}

// Changes returns a channel closed when the live list next changes (a
// relay joins, leaves, starts to drain, or changes address).
func (c *Cluster) Changes() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// Holders returns the other live relays that hold agents of tenant,
// remembered for a second; fresh reads the store again, unless it was
// read in the last holdersFresh.
func (c *Cluster) Holders(ctx context.Context, tenant string, fresh bool) ([]store.Holding, error) {
	c.mu.Lock()
	e, ok := c.holders[tenant]
	c.mu.Unlock()
	if age := time.Since(e.at); ok && (age < holdersFresh || !fresh && age < holdersTTL) {
		return e.hs, nil
	}
	all, err := c.cfg.Store.TenantRelays(ctx, tenant, c.cfg.DeadAfter)
	if err != nil {
		return nil, err
	}
	hs := slices.DeleteFunc(all, func(h store.Holding) bool { return h.RelayID == c.cfg.ID })
	c.mu.Lock()
	if len(c.holders) > 10000 {
		clear(c.holders)
	}
	c.holders[tenant] = cachedHolders{hs: hs, at: time.Now()}
	c.mu.Unlock()
	return hs, nil
}

// AgentRelays maps each agent of tenant ("" for all) held by a live relay
// to the relays holding it.
func (c *Cluster) AgentRelays(ctx context.Context, tenant string) (map[store.AgentKey][]string, error) {
	return c.cfg.Store.AgentRelays(ctx, tenant, c.cfg.DeadAfter)
}

// Run keeps the membership until ctx ends, then leaves the cluster: its
// row marked gone and its presence rows deleted, so that peers stop
// counting it at once rather than DeadAfter later.
func (c *Cluster) Run(ctx context.Context) error {
	c.beat(ctx)
	tick := time.NewTicker(c.cfg.Heartbeat)
	defer tick.Stop()
	prune := time.NewTicker(pruneEvery)
	defer prune.Stop()
	for {
		select {
		case <-ctx.Done():
			c.leave()
			return nil
		case <-tick.C:
			c.beat(ctx)
		case <-c.beatNow:
			c.beat(ctx)
		case <-c.presence:
			t := time.NewTimer(presenceDelay)
			select {
			case <-ctx.Done():
				t.Stop()
				c.leave()
				return nil
			case <-t.C:
			}
			c.flush(ctx)
		case <-prune.C:
			pctx, cancel := context.WithTimeout(ctx, opTimeout)
			err := c.cfg.Store.PruneRelays(pctx, pruneAfter, keepDead)
			cancel()
			if err != nil && ctx.Err() == nil {
				c.log.Warn("prune the cluster's rows", "err", err)
			}
		}
	}
}

// beat writes this relay's row (joining the cluster, the first time),
// then its waiting presence rows (a row first, so that they count at
// once), then reads the live list.
func (c *Cluster) beat(parent context.Context) {
	ctx, cancel := context.WithTimeout(parent, opTimeout)
	defer cancel()
	r := store.Relay{ID: c.cfg.ID, Epoch: c.epoch.Load(), AgentAddr: c.cfg.AgentAddr, PeerAddr: c.cfg.PeerAddr,
		Version: c.cfg.Version, StartedAt: c.cfg.Started, Draining: c.draining.Load()}
	if c.cfg.Load != nil {
		r.Agents, r.Sessions, r.Streams = c.cfg.Load()
	}
	began := time.Now()
	var err error
	created := false
	if r.Epoch == 0 {
		err = c.join(ctx, r)
	} else {
		created, err = c.cfg.Store.Heartbeat(ctx, r)
	}
	switch {
	case errors.Is(err, store.ErrFenced):
		c.log.Error("another process runs as this relay (a later start under the same relay id); stopping", "relay_id", c.cfg.ID)
		if c.cfg.Fenced != nil {
			c.cfg.Fenced(err)
		}
		return
	case err != nil:
		if ctx.Err() == nil {
			c.log.Warn("write this relay's heartbeat", "err", err)
		}
		return
	}
	c.lastBeat.Store(&began)
	c.beats++
	if created {
		c.log.Warn("this relay's row was missing from the store (an operator removed it, or a failover lost it): written again, with the presence of every agent it holds",
			"relay_id", c.cfg.ID)
	}
	if created || c.beats%presenceRewrite == 0 {
		c.restore(parent)
	}
	c.flush(parent)
	all, err := c.cfg.Store.Relays(ctx)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("read the cluster's relays", "err", err)
		}
		return
	}
	live := slices.DeleteFunc(all, func(r store.Relay) bool { return !r.Alive(c.cfg.DeadAfter) })
	c.mu.Lock()
	defer c.mu.Unlock()
	if !sameMembers(c.live, live) {
		close(c.changed)
		c.changed = make(chan struct{})
	}
	c.live = live
}

// join writes this run's first row, taking its epoch from the store,
// and deletes the presence rows earlier runs left.
func (c *Cluster) join(ctx context.Context, r store.Relay) error {
	r.Epoch = c.cfg.Epoch
	epoch, err := c.cfg.Store.JoinCluster(ctx, r)
	if err != nil {
		return err
	}
	c.epoch.Store(epoch)
	if epoch != c.cfg.Epoch {
		c.log.Info("joined the cluster with an epoch above this start's clock: an earlier run of this relay id had a later one (a clock stepped back, or a host moved)",
			"relay_id", c.cfg.ID, "epoch", epoch, "proposed", c.cfg.Epoch)
	}
	if err := c.cfg.Store.ClearPresence(ctx, c.cfg.ID, epoch); err != nil && ctx.Err() == nil {
		c.log.Warn("clear the presence rows of this relay's earlier run", "err", err)
	}
	return nil
}

// sameMembers reports whether two lists name the same relays with the
// same addresses and draining state (what agents and peers act on).
func sameMembers(a, b []store.Relay) bool {
	return slices.EqualFunc(a, b, func(x, y store.Relay) bool {
		return x.ID == y.ID && x.AgentAddr == y.AgentAddr && x.PeerAddr == y.PeerAddr && x.Draining == y.Draining && x.Epoch == y.Epoch
	})
}

// restore makes the store's presence rows of this run say what it holds.
// It deletes the rows of agents it does not hold (unstale), then writes
// the rows of the agents it holds that are missing from the store (those
// there are left alone), presenceChunk agents to a transaction: they may
// have been lost (a relay row removed takes them with it; a failover may
// lose some), and nothing else would write them until the agents'
// sessions change. Agents with a change pending are left to flush. What
// a failure leaves unwritten is queued for flush.
func (c *Cluster) restore(ctx context.Context) {
	c.unstale(ctx)
	c.mu.Lock()
	ps := make([]store.Presence, 0, len(c.held))
	for k, n := range c.held {
		if _, pending := c.pending[k]; !pending {
			ps = append(ps, store.Presence{Tenant: k.Tenant, Agent: k.Agent, Sessions: n})
		}
	}
	c.mu.Unlock()
	for len(ps) > 0 {
		chunk := ps[:min(len(ps), presenceChunk)]
		cctx, cancel := context.WithTimeout(ctx, opTimeout)
		err := c.cfg.Store.RestorePresence(cctx, c.cfg.ID, c.epoch.Load(), chunk)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				c.log.Warn("write the presence of this relay's agents again", "err", err, "agents", len(ps))
			}
			c.requeue(ps)
			return
		}
		ps = ps[len(chunk):]
	}
}

// unstale deletes this run's presence rows of agents it does not hold: a
// deletion lost in a failover to a replica would otherwise leave the
// other relays forwarding that agent's streams here for as long as this
// run lasts. An agent counts as held, and its row is kept, when it is in
// held or has a change pending. Presence rows are written only by flush
// and restore, on Run's goroutine, as this is: a row read here was
// written before, and an agent that connects meanwhile (its change
// pending, or made after the check) has its row written by the next
// flush, after this deletion.
func (c *Cluster) unstale(ctx context.Context) {
	epoch := c.epoch.Load()
	if epoch == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	rows, err := c.cfg.Store.PresentAgents(cctx, c.cfg.ID, epoch)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("read the presence rows of this relay", "err", err)
		}
		return
	}
	var stale []store.Presence
	c.mu.Lock()
	for _, k := range rows {
		_, held := c.held[k]
		_, pending := c.pending[k]
		if !held && !pending {
			stale = append(stale, store.Presence{Tenant: k.Tenant, Agent: k.Agent})
		}
	}
	c.mu.Unlock()
	if len(stale) == 0 {
		return
	}
	if err := c.cfg.Store.SetPresence(cctx, c.cfg.ID, epoch, stale); err != nil {
		if ctx.Err() == nil {
			c.log.Warn("delete the presence rows of agents this relay no longer holds", "err", err, "agents", len(stale))
		}
		return
	}
	c.log.Warn("deleted presence rows that said this relay holds agents it does not hold (their deletion was lost, as in a failover to a replica that lacked it)",
		"relay_id", c.cfg.ID, "agents", len(stale))
}

// requeue queues ps for the next flush, but for the agents with a newer
// change pending.
func (c *Cluster) requeue(ps []store.Presence) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range ps {
		k := store.AgentKey{Tenant: p.Tenant, Agent: p.Agent}
		if _, newer := c.pending[k]; !newer {
			c.pending[k] = p.Sessions
		}
	}
}

// flush writes the waiting presence changes, presenceChunk rows to a
// transaction, each with opTimeout of its own, so that every try makes
// progress however long the backlog a reconnect storm left (one
// transaction of it all could outlast any timeout and never commit). On a
// failure the rows not written wait for the next try (a later change of
// the same agent replaces an earlier).
func (c *Cluster) flush(ctx context.Context) {
	epoch := c.epoch.Load()
	if epoch == 0 {
		return // not joined yet: written after the first heartbeat
	}
	c.mu.Lock()
	if len(c.pending) == 0 {
		c.mu.Unlock()
		return
	}
	batch := c.pending
	c.pending = map[store.AgentKey]int{}
	c.mu.Unlock()
	ps := make([]store.Presence, 0, len(batch))
	for k, n := range batch {
		ps = append(ps, store.Presence{Tenant: k.Tenant, Agent: k.Agent, Sessions: n})
	}
	for len(ps) > 0 {
		chunk := ps[:min(len(ps), presenceChunk)]
		cctx, cancel := context.WithTimeout(ctx, opTimeout)
		err := c.cfg.Store.SetPresence(cctx, c.cfg.ID, epoch, chunk)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				c.log.Warn("write the presence of this relay's agents", "err", err, "agents", len(ps))
			}
			c.requeue(ps) // the next heartbeat tries again
			return
		}
		ps = ps[len(chunk):]
	}
}

// leave marks this relay gone, with a few seconds of its own: the relay's
// context has ended.
func (c *Cluster) leave() {
	epoch := c.epoch.Load()
	if epoch == 0 {
		return // it never joined
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.cfg.Store.LeaveCluster(ctx, c.cfg.ID, epoch); err != nil {
		c.log.Warn("leave the cluster (peers will count this relay as gone after its heartbeat times out)", "err", err, "dead_after", c.cfg.DeadAfter)
	}
}
