package session

import (
	"context"

	"github.com/tetherhq/tether/protocol/identity"
)

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
