package relay

import (
	"context"
	"sync"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// A store down for every relay. A relay that has gone StaleAfter without
// confirming that it is current refuses new connections (admit), since a
// revocation or a removed grant written meanwhile through another relay
// could be missed; its backends' credentials are read again after a
// minute and its agents' records at every connection, and fail. When the
// store is down for every relay (a restart that takes minutes, a
// failover), every tenant is then unreachable for new connections,
// though no relay can write a revocation either. So while watchStore
// finds that every other relay it last saw live answers, and none
// reaches the store (downForAll), and for at most StoreOutageGrace since
// it was last current, the relay serves from what it last read: new
// streams are admitted with the grants, limits and revocations in
// memory; a backend's credential older than the cache's minute is used
// when the store cannot be read (frontdoor.Config.Outage); an agent it
// admitted before is admitted from that record (session.Config.Outage);
// a stream to a tenant whose agents are held by another relay is
// forwarded to the relays last read as holding them (holdersOf).
// A relay alone on its store (no other relay) has nobody to ask, and
// counts as the only one. A relay whose store others reach (isolated),
// or that cannot ask one of them, refuses as before. What an operator
// writes to the store directly meanwhile (tetherctl and tether-relay
// commands reach PostgreSQL, not the relays) applies once the relay
// reaches the store again, through the change feed.

// staleFor is how long ago the relay was last current: its heartbeat
// written and its change feed read (the older of the two), on the
// monotonic clock, so that a step of the wall clock neither refuses
// streams nor lets them through.
func (r *Relay) staleFor() time.Duration {
	beat := r.member.LastHeartbeat()
	if beat.IsZero() {
		beat = r.started // no heartbeat yet: the first is on its way
	}
	return max(time.Since(*r.feedReadAt.Load()), time.Since(beat))
}

// inOutageGrace reports whether a relay last current since ago serves
// from what it last read: it is stale, the store is down for every relay
// it can ask, and the grace is not spent.
func (r *Relay) inOutageGrace(since time.Duration) bool {
	return r.cfg.StoreOutageGrace > 0 && store.IsPostgres(r.cfg.Store) &&
		since > r.cfg.StaleAfter && since <= r.cfg.StoreOutageGrace && r.downForAll.Load()
}

// storeOutage reports whether the relay serves from what it last read
// now (session.Config.Outage, frontdoor.Config.Outage).
func (r *Relay) storeOutage() bool {
	return r.downForAll.Load() && r.inOutageGrace(r.staleFor())
}

// noteOutage logs the grace's beginning and end, at each of watchStore's
// rounds; graced is whether the relay was in it at the last round.
func (r *Relay) noteOutage(graced *bool) {
	if r.cfg.StoreOutageGrace <= 0 {
		return
	}
	since := r.staleFor()
	now := r.inOutageGrace(since)
	if now == *graced {
		return
	}
	*graced = now
	if now {
		r.log.Warn("the store is down for every relay this relay can ask: it serves new connections from what it last read (grants, limits, revocations, backends' credentials, the records of agents it admitted before) until the store is back or the outage grace is spent; a revocation written to the store meanwhile applies once it is back",
			"relay_id", r.relayID, "last_current", since.Round(time.Millisecond), "store_outage_grace", r.cfg.StoreOutageGrace,
			"grace_left", (r.cfg.StoreOutageGrace - since).Round(time.Second))
		return
	}
	switch {
	case since <= r.cfg.StaleAfter || time.Since(r.member.LastHeartbeat()) <= r.member.DeadAfter():
		r.log.Warn("the store outage grace ends: this relay reaches its store again, and catches up through the change feed", "relay_id", r.relayID)
	case since > r.cfg.StoreOutageGrace:
		r.log.Warn("the store outage grace is spent: this relay refuses new connections until it reaches its store again", "relay_id", r.relayID,
			"last_current", since.Round(time.Millisecond), "store_outage_grace", r.cfg.StoreOutageGrace)
	default:
		r.log.Warn("the store outage grace ends: another relay reaches the store, or cannot be asked; this relay refuses new connections until it reaches its store again", "relay_id", r.relayID,
			"last_current", since.Round(time.Millisecond))
	}
}

// outageLookup bounds a store read while the relay serves from what it
// last read: the store has been down for a while.
const outageLookup = 2 * time.Second

// holdersOf is the other live relays holding agents of tenant
// (cluster.Cluster.Holders), for forwarding. While the relay serves from
// what it last read, a read that fails because the store cannot be
// reached (bounded by outageLookup) is answered with the relays last
// read as holding them: the agents may have moved since, and a relay
// that no longer holds one answers so (no_agent). With the grace off
// nothing is kept.
func (r *Relay) holdersOf(ctx context.Context, tenant string, fresh bool) ([]store.Holding, error) {
	outage := r.storeOutage()
	if outage {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, outageLookup)
		defer cancel()
	}
	hs, err := r.member.Holders(ctx, tenant, fresh)
	if err == nil {
		if r.cfg.StoreOutageGrace > 0 { // else never served from: not kept
			r.holders.put(tenant, hs)
		}
		return hs, nil
	}
	if outage && r.dir.Store.Unreachable(err) {
		if hs, ok := r.holders.get(tenant); ok {
			return hs, nil
		}
	}
	return nil, err
}

// maxHolders bounds the tenants whose holders are kept (lastHolders);
// past it, the kept ones start over.
const maxHolders = 100000

// lastHolders keeps, per tenant, the relays last read as holding its
// agents (holdersOf).
type lastHolders struct {
	mu sync.Mutex // guards m
	m  map[string][]store.Holding
}

func (l *lastHolders) put(tenant string, hs []store.Holding) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil || len(l.m) >= maxHolders {
		l.m = make(map[string][]store.Holding)
	}
	l.m[tenant] = hs
}

func (l *lastHolders) get(tenant string) ([]store.Holding, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	hs, ok := l.m[tenant]
	return hs, ok
}
