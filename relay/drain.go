package relay

import (
	"sync"

	"github.com/tetherhq/tether/protocol"
)

// DrainAgent tells the sessions of agent id of tenant to go away (the
// admin view of the live relay, admin.Live).
func (l liveView) DrainAgent(tenant, id, msg string) int {
	return l.r.reg.drainAgent(&l.r.bg, tenant, id, msg)
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
