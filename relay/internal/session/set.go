package session

import (
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/route"
)

// Set holds the live agent sessions by tenant, and keeps them in the
// routing table as carriers. The session of an update trial (Conn.trial)
// is held but is no carrier: it serves no streams.
type Set struct {
	routes *route.Table
	// present, when set, is told how many sessions an agent holds here
	// after each add and remove (cluster presence); it must not block. A
	// trial's session is not counted: it cannot take the agent's streams.
	present func(tenant, agent string, sessions int)

	mu       sync.RWMutex // guards byTenant and changed
	byTenant map[string][]*Conn
	changed  chan struct{} // closed and replaced when a session is added
}

func newSet(routes *route.Table, present func(tenant, agent string, sessions int)) *Set {
	return &Set{routes: routes, present: present, byTenant: map[string][]*Conn{}, changed: make(chan struct{})}
}

// Changes returns a channel closed at the next session added.
func (s *Set) Changes() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changed
}

// add registers c. Sessions of the same agent from an earlier process
// (another boot id) are stale — that process is gone — so they are closed
// at once rather than left to time out while streams are sent to them.
// The session of an update trial joins the set (it is listed, offered
// nothing, closed with its agent's) but not the routing table: the trial
// exits moments after its Welcome, and with no streams open it would
// otherwise be the least loaded connection of its tenant, handed the
// tenant's new streams only to cut them when it exits.
func (s *Set) add(c *Conn) {
	var stale []*Conn
	defer func() { // after the lock is released: a close can take seconds
		for _, old := range stale {
			old.log.Info("closing stale session: the agent restarted", "new_boot_id", c.hello.BootID)
			old.sess.Close()
		}
	}()
	s.mu.Lock()
	list := s.byTenant[c.id.Tenant]
	if c.hello.BootID != "" {
		for _, old := range list {
			if old.id.ID == c.id.ID && old.hello.BootID != "" && old.hello.BootID != c.hello.BootID && !old.draining.Swap(true) {
				old.cause.CompareAndSwap(nil, &errAgentRestarted)
				stale = append(stale, old)
			}
		}
	}
	s.byTenant[c.id.Tenant] = append(list, c)
	close(s.changed)
	s.changed = make(chan struct{})
	n := s.countLocked(c.id.Tenant, c.id.ID)
	s.mu.Unlock()
	if c.trial() {
		return
	}
	s.routes.Add(c)
	if s.present != nil {
		s.present(c.id.Tenant, c.id.ID, n)
	}
}

// countLocked counts the sessions of agent id of tenant that carry
// streams (not an update trial's); s.mu is held.
func (s *Set) countLocked(tenant, id string) int {
	n := 0
	for _, c := range s.byTenant[tenant] {
		if c.id.ID == id && !c.trial() {
			n++
		}
	}
	return n
}

func (s *Set) remove(c *Conn) {
	trial := c.trial()
	if !trial {
		s.routes.Remove(c)
	}
	s.mu.Lock()
	list := s.byTenant[c.id.Tenant]
	for i, x := range list {
		if x == c {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(s.byTenant, c.id.Tenant)
	} else {
		s.byTenant[c.id.Tenant] = list
	}
	n := s.countLocked(c.id.Tenant, c.id.ID)
	s.mu.Unlock()
	if s.present != nil && !trial {
		s.present(c.id.Tenant, c.id.ID, n)
	}
}

// Select returns the sessions of tenant ("" for every tenant) for which
// keep (nil: all) is true. With onePerAgent it returns at most one session
// per agent, skipping draining ones: for what is asked of an agent once
// (an update offer, a renewal), not of each of its sessions.
func (s *Set) Select(tenant string, onePerAgent bool, keep func(*Conn) bool) []*Conn {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*Conn
	var seen map[string]bool
	if onePerAgent {
		seen = map[string]bool{}
	}
	pick := func(list []*Conn) {
		for _, c := range list {
			if onePerAgent && (seen[c.id.ID] || c.draining.Load()) {
				continue
			}
			if keep != nil && !keep(c) {
				continue
			}
			if onePerAgent {
				seen[c.id.ID] = true
			}
			out = append(out, c)
		}
	}
	if tenant != "" {
		pick(s.byTenant[tenant])
		return out
	}
	for _, list := range s.byTenant {
		pick(list)
	}
	return out
}

// ofAgent selects the sessions of agent id of tenant.
func (s *Set) ofAgent(tenant, id string) []*Conn {
	return s.Select(tenant, false, func(c *Conn) bool { return c.id.ID == id })
}

// sessionsOfProcess counts the sessions of agent id of tenant from the
// process that booted as boot (and those of agents too old to say): the
// sessions a new one from that process joins, where those of another
// process are closed as stale when it joins (add).
func (s *Set) sessionsOfProcess(tenant, id, boot string) int {
	return len(s.Select(tenant, false, func(c *Conn) bool {
		return c.id.ID == id && (c.hello.BootID == boot || c.hello.BootID == "" || boot == "")
	}))
}

// doubtSiblings doubts every other session of c's agent process (see
// Conn.doubt): when one session of an agent stops answering, its others,
// from the same process and most often over the same path, have most
// likely stopped too; a live one answers the ping within a round trip.
func (s *Set) doubtSiblings(c *Conn) {
	for _, o := range s.Select(c.id.Tenant, false, func(o *Conn) bool {
		return o != c && o.id.ID == c.id.ID && o.hello.BootID == c.hello.BootID
	}) {
		o.doubt()
	}
}

// CloseAgent closes every session of agent id (of tenant) with err and
// reports how many there were.
func (s *Set) CloseAgent(tenant, id string, err error) int {
	conns := s.ofAgent(tenant, id)
	// At once, not one after another: each may wait for its Reject's
	// deadline and its transport's close, and the caller is the change
	// feed, which every relay's streams wait on.
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { c.CloseWith(err) })
	}
	wg.Wait()
	return len(conns)
}

// renewed moves every session of from's agent process (its boot id) to
// the certificate with serial, valid until notAfter, issued by CA root
// root.
func (s *Set) renewed(from *Conn, serial string, notAfter time.Time, root string) {
	for _, c := range s.ofAgent(from.id.Tenant, from.id.ID) {
		if c != from && c.hello.BootID != from.hello.BootID {
			continue
		}
		if c.notAfter.Load() <= notAfter.UnixNano() { // the same second as the last one: still the newer certificate
			c.notAfter.Store(notAfter.UnixNano())
			c.setRoot(root)
			c.setSerial(serial)
		}
	}
}

// SessionsOf counts the sessions of agent id of tenant.
func (s *Set) SessionsOf(tenant, id string) int { return len(s.ofAgent(tenant, id)) }

// GoAway marks the sessions of agent id of tenant draining ("" for every
// session) and sends each a GoAway with reason and msg that tells the
// agent how long its streams in flight stay open (drain), so that it
// keeps them that long rather than by its own drain timeout. The sends run
// on wg because a send blocks while an agent is not reading; they end at
// the latest when the sessions close. It returns how many sessions were
// told.
func (s *Set) GoAway(wg *sync.WaitGroup, tenant, id, reason, msg string, drain time.Duration) int {
	var conns []*Conn
	if id == "" {
		conns = s.Select("", false, nil)
	} else {
		conns = s.ofAgent(tenant, id)
	}
	for _, c := range conns {
		if reason == protocol.GoAwayDrain && c.draining.Load() {
			continue // already told to go (an operator's drain seen twice)
		}
		c.draining.Store(true)
		wg.Go(func() {
			if err := c.Send(&protocol.GoAway{Reason: reason, Message: msg, DrainMillis: drain.Milliseconds()}); err != nil {
				c.log.Debug("send goaway", "err", err)
			}
		})
	}
	return len(conns)
}
