package session

import (
	"context"
	"sync"

	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/store"
)

// maxRecords bounds the admission records kept (recordCache): past it,
// one already held makes room for each new one.
const maxRecords = 100000

// recordCache keeps the store record each agent was last admitted with,
// for admission while the store is down for every relay (Config.Outage).
// A record is kept from a successful admission (and read again after a
// renewal over the agent's session here: renewals are not in the feed,
// and the agent comes back with the new certificate; one renewed through
// another relay is admitted with a certificate newer than the record's,
// newerThanKept) until the change feed
// tells of a revocation of its agent (Server.ForgetRecord; a resync
// applies every recent revocation again, and so forgets them too).
type recordCache struct {
	mu sync.Mutex // guards m and gen
	m  map[string]store.Agent
	// gen counts the forgets: an admission stores what it read only if
	// no forget came since it read it, or the revocation told meanwhile
	// would be undone.
	gen uint64
}

// generation is the count of forgets so far, to pass to put.
func (c *recordCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// put keeps rec, read when the count of forgets was gen.
func (c *recordCache) put(gen uint64, rec store.Agent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	if c.m == nil {
		c.m = make(map[string]store.Agent)
	}
	if _, ok := c.m[rec.ID]; !ok && len(c.m) >= maxRecords {
		for id := range c.m {
			delete(c.m, id)
			break
		}
	}
	c.m[rec.ID] = rec
}

// get returns the record kept for agent id.
func (c *recordCache) get(id string) (store.Agent, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rec, ok := c.m[id]
	return rec, ok
}

// forget drops the record of agent id.
func (c *recordCache) forget(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
	c.gen++
}

// ForgetRecord drops what the relay keeps of agent id's record for
// admission during a store outage: the change feed told of a change to
// it (a revocation).
func (s *Server) ForgetRecord(id string) { s.records.forget(id) }

// renewed keeps the record of agent id read again after a renewal over
// one of its sessions here changed its newest certificate, when a record
// is kept for it (best effort: on a failed read the old record stays,
// and an admission from it with the new certificate is refused).
func (s *Server) renewed(ctx context.Context, id identity.Agent) {
	if s.cfg.Outage == nil {
		return
	}
	if _, ok := s.records.get(id.ID); !ok {
		return
	}
	gen := s.records.generation()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	rec, err := s.cfg.Store.Agent(ctx, id.ID)
	if err != nil || rec.Tenant != id.Tenant || !rec.RevokedAt.IsZero() {
		return
	}
	s.records.put(gen, rec)
}
