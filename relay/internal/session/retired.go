package session

import (
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/ca"
)

// closeAudit bounds how long the close of a session on a retired root
// waits for its disconnect record to be committed.
const closeAudit = time.Second

// OnActiveRoot reports whether the session's newest certificate comes from
// one of authority's active roots. A session admitted on a root that was
// retired since (with --force, while its agent was still on it) does not.
func (c *Conn) OnActiveRoot(authority *ca.CA) bool {
	root := authority.Root(c.RootID())
	return root != nil && root.RetiredAt.IsZero()
}

// CloseRetired ends a session whose certificate comes from a CA root no
// longer trusted, as a revoked one ends: the operator retired the root so
// that nothing it issued counts. root is that root as the CA lists it
// among the retired ones (nil when unknown). The agent is told to enrol
// again. The disconnect's record is committed before the session closes,
// so that a relay killed right after keeps it, but waited for no longer
// than closeAudit: a stalled store must not keep the session served (the
// record then stays queued, written when the store answers). The
// retirement itself is audited by its command.
func (c *Conn) CloseRetired(root *ca.Root) {
	why := protocol.Errorf(protocol.CodeUnauthenticated, "this agent's certificate comes from a CA root that was retired: enrol it again with a new join token")
	rootID := c.RootID()
	if root != nil {
		rootID = root.ID()
		why = protocol.Errorf(protocol.CodeUnauthenticated, "this agent's certificate comes from CA root %d (%s), retired at %s: enrol it again with a new join token",
			root.Generation, rootID, root.RetiredAt.UTC().Format(time.RFC3339))
	}
	c.srv.cfg.Audit.QueueWithin(audit.Record{Kind: audit.Disconnect, Outcome: protocol.CodeUnauthenticated.String(), Tenant: c.id.Tenant, Agent: c.id.ID, Actor: "relay",
		Detail: map[string]any{"session": c.sessionID, "ca_root": rootID, "reason": "CA root retired"}}, closeAudit)
	c.CloseWith(why)
}
