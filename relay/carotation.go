package relay

import (
	"context"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"

	"github.com/tetherhq/tether/protocol"
)

// CA rotation. `tether-relay ca rotate` (Admin.RotateCA) adds a new root in
// the data directory and tells running relays through the change feed
// (refreshCA) and from then on issues agent certificates from the new root
// and accepts certificates from both. Agents move to the new root at their
// next renewal, or at once when the operator asks (RenewNow). `ca retire`
// drops the old root once no agent depends on it; the relay then serves a
// certificate from the new root and refuses certificates from the old one.

// refreshCA applies a change of the CA's roots made by an admin command.
// It runs on the change feed's goroutine.
func (r *Relay) refreshCA(ctx context.Context) {
	if _, _, err := r.st.auth.Reload(ctx); err != nil {
		if ctx.Err() == nil {
			r.log.Warn("CA roots", "err", err)
		}
		return
	}
	// Against the CA whose change was last applied here: the Authority
	// may have been replaced in this process already.
	prev, next := r.caApplied, r.st.auth.CA()
	if next == prev {
		return
	}
	r.caApplied = next
	var ids []string
	for _, root := range next.Roots() {
		ids = append(ids, root.ID())
	}
	r.log.Info("CA roots changed", "roots", ids, "signing_root", next.Signer().ID(), "serving_root", next.Serving().ID(), "renew_now", next.RenewNow())

	// Sessions that stand on a root no longer trusted (retired with
	// --force while its agents were still on it) end now, as revoked ones
	// do: the operator retired the root so that nothing it issued counts.
	active := map[string]bool{}
	for _, id := range ids {
		active[id] = true
	}
	for _, c := range r.reg.notOnRoots(active) {
		root := next.Root(c.rootID())
		why := protocol.Errorf(protocol.CodeUnauthenticated, "this agent's certificate comes from a CA root that was retired: enrol it again with a new join token")
		if root != nil {
			why = protocol.Errorf(protocol.CodeUnauthenticated, "this agent's certificate comes from CA root %d (%s), retired at %s: enrol it again with a new join token",
				root.Generation, root.ID(), root.RetiredAt.UTC().Format(time.RFC3339))
		}
		r.audit.Add(audit.Record{Kind: audit.Disconnect, Outcome: protocol.CodeUnauthenticated.String(), Tenant: c.id.Tenant, Agent: c.id.ID, Actor: "relay",
			Detail: map[string]any{"session": c.sessionID, "ca_root": c.rootID(), "reason": "CA root retired"}})
		c.closeWith(why)
	}

	if next.RenewNow() && (!prev.RenewNow() || prev.Signer().ID() != next.Signer().ID()) {
		r.askRenewals(next.Signer().ID())
	}
}

// renewSpreadPerAgent is how much the window over which asked agents renew
// grows per agent, between 1 s and 5 min: a renewal costs the relay a
// signature and a store write, so ten thousand agents renew over 5 minutes.
const renewSpreadPerAgent = 30 * time.Millisecond

// askRenewals asks every connected agent whose certificate is not from
// root to renew now, spread over a window that grows with their number.
func (r *Relay) askRenewals(root string) {
	conns := r.reg.notOnRoot(root)
	if len(conns) == 0 {
		return
	}
	spread := min(max(time.Duration(len(conns))*renewSpreadPerAgent, time.Second), 5*time.Minute)
	r.log.Info("asking agents to renew their certificates now", "agents", len(conns), "ca_root", root, "spread", spread)
	r.bg.Go(func() {
		for _, c := range conns {
			r.askRenewal(c, root, spread)
		}
	})
}

// askRenewal sends c a RenewNow for root.
func (r *Relay) askRenewal(c *agentConn, root string, spread time.Duration) {
	if err := c.send(&protocol.RenewNow{Root: root, SpreadMillis: spread.Milliseconds()}); err != nil {
		c.log.Debug("send renewal request", "err", err)
		return
	}
	c.log.Debug("asked the agent to renew its certificate now", "ca_root", root)
}

// notOnRoots returns the live sessions whose newest certificate comes from
// none of roots.
func (g *registry) notOnRoots(roots map[string]bool) []*agentConn {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var out []*agentConn
	for _, list := range g.byTenant {
		for _, c := range list {
			if !roots[c.rootID()] {
				out = append(out, c)
			}
		}
	}
	return out
}
