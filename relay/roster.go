package relay

import (
	"context"
	"slices"
	"time"
)

// After a restart, a relay knows no agent until each reconnects, which
// takes a fleet seconds (agents notice the restart at their next heartbeat
// and back off with jitter). A backend stream opened in that window to a
// tenant whose agent is on its way back should wait for it rather than
// fail. The roster is how the relay tells those tenants from tenants with
// no agent at all: the set of tenants with a connected agent, written to
// the data directory when a tenant gains its first agent (at most once per
// rosterMinGap), every rosterInterval (which also drops tenants whose
// agents left) and at shutdown, and read at start. A relay that crashes
// thus expects back every tenant whose agent had been connected for
// rosterMinGap.

const (
	rosterInterval = 10 * time.Second
	rosterMinGap   = time.Second
)

// keepRoster saves the roster when a tenant gains its first agent and
// every rosterInterval, until ctx ends. A reconnect storm brings tenants
// back by the thousand; they are written at most once per rosterMinGap.
// Tenants expected back from the previous run stay on the roster until the
// reconnect grace is over, so a second restart inside the grace forgets
// nobody.
func (r *Relay) keepRoster(ctx context.Context) {
	t := time.NewTicker(rosterInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.saveRoster()
		case <-r.reg.newTenants():
			r.saveRoster()
			select {
			case <-ctx.Done():
				return
			case <-time.After(rosterMinGap):
			}
		}
	}
}

func (r *Relay) saveRoster() {
	tenants := r.reg.tenants()
	if r.inGrace() {
		for t := range r.expected {
			if !slices.Contains(tenants, t) {
				tenants = append(tenants, t)
			}
		}
	}
	if err := r.st.SaveRoster(tenants, r.cfg.Now()); err != nil {
		r.log.Warn("save roster of connected tenants", "err", err)
	}
}

// inGrace reports whether the relay started less than ReconnectGrace ago.
func (r *Relay) inGrace() bool {
	return time.Since(r.started) < r.cfg.ReconnectGrace
}

// awaitAgent waits, during the reconnect grace, for an agent of a tenant
// expected back to connect. It returns false at once for other tenants,
// and when ctx or the grace ends first.
func (r *Relay) awaitAgent(ctx context.Context, tenant string, hb time.Duration, exclude map[*agentConn]bool) *agentConn {
	if !r.expected[tenant] || !r.inGrace() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.ReconnectGrace-time.Since(r.started))
	defer cancel()
	for {
		changed := r.reg.changes()
		if ac := r.reg.pick(tenant, hb, exclude); ac != nil {
			return ac
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}
