package session

import (
	"context"
	"slices"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
)

// relaysFor returns the Relays message for an agent that said hello h:
// nil unless it asked for the list and there is one to send.
func (s *Server) relaysFor(h *protocol.Hello) *protocol.Relays {
	if s.cfg.Relays == nil || !slices.Contains(h.Capabilities, protocol.CapRelays) {
		return nil
	}
	list := s.cfg.Relays()
	if len(list) == 0 {
		return nil
	}
	return &protocol.Relays{Relays: list}
}

// SendRelays sends the cluster's current relays to every agent session
// that asked for them. It does not block: each send runs on its own
// goroutine, counted in wg.
func (s *Server) SendRelays(wg interface{ Go(func()) }) int {
	var list []protocol.RelayInfo
	if s.cfg.Relays != nil {
		list = s.cfg.Relays()
	}
	if len(list) == 0 {
		return 0
	}
	n := 0
	for _, c := range s.set.Select("", false, nil) {
		if !slices.Contains(c.hello.Capabilities, protocol.CapRelays) {
			continue
		}
		n++
		m := &protocol.Relays{Relays: list}
		wg.Go(func() {
			if err := c.Send(m); err != nil {
				c.log.Debug("send the cluster's relays", "err", err)
			}
		})
	}
	return n
}

// connectedAgents counts the agents of id's tenant connected now, id's
// own not among them: to this relay and, in a cluster, to any relay
// (ClusterAgents). An agent already connected elsewhere may connect here
// too (its second connection) without counting twice. When the cluster
// cannot be asked, the count is this relay's own: a limit is never
// applied more strictly because the store is slow.
func (s *Server) connectedAgents(ctx context.Context, id identity.Agent) int {
	agents := map[string]bool{}
	for _, c := range s.set.Select(id.Tenant, true, nil) {
		agents[c.id.ID] = true
	}
	if s.cfg.ClusterAgents != nil {
		elsewhere, err := s.cfg.ClusterAgents(ctx, id.Tenant)
		if err != nil {
			s.log.Warn("count the tenant's agents across the cluster; counting this relay's", "tenant", id.Tenant, "err", err)
		}
		for a := range elsewhere {
			agents[a] = true
		}
	}
	if agents[id.ID] {
		return 0 // connected elsewhere: not one more agent
	}
	return len(agents)
}
