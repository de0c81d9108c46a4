package relay

import (
	"context"
	"sync"

	"github.com/tetherhq/tether/relay/internal/audit"

	"github.com/tetherhq/tether/protocol"
)

// DrainAgent tells every session of agent id to go away (GoAway "drain"):
// the relay sends it no new streams there, streams in flight continue, and
// the agent reconnects. It reports how many sessions were told; actor
// names the operator in the audit record.
func (r *Relay) DrainAgent(ctx context.Context, id, msg, actor string) (int, error) {
	a := r.admin(actor)
	info, err := a.Agent(ctx, id)
	if err != nil {
		return 0, err
	}
	if len(msg) > 500 {
		return 0, invalidf("drain message is longer than 500 bytes")
	}
	if msg == "" {
		msg = "drained by an operator"
	}
	n := r.reg.drainAgent(&r.bg, info.Tenant, id, msg)
	a.record(audit.Drain, info.Tenant, id, "", map[string]any{"sessions": n, "message": msg})
	return n, nil
}

// drainAgent marks the sessions of agent id (of tenant) draining and sends
// each a GoAway on wg; it returns how many there were.
func (g *registry) drainAgent(wg *sync.WaitGroup, tenant, id, msg string) int {
	g.mu.RLock()
	defer g.mu.RUnlock()
	n := 0
	for _, c := range g.byTenant[tenant] {
		if c.id.ID != id {
			continue
		}
		n++
		c.draining.Store(true)
		wg.Go(func() {
			if err := c.send(&protocol.GoAway{Reason: "drain", Message: msg}); err != nil {
				c.log.Debug("send goaway", "err", err)
			}
		})
	}
	return n
}
