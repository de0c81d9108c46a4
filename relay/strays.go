package relay

import (
	"sync"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// An isolated relay sends its agents to the other relays (watchStore).
// An agent that cannot reach any of them (a tenant network that lets it
// out to this relay's address only, a relay list it cannot use) comes
// back: refused, its tenant would have no relay at all, where before the
// isolation it kept its session here. So the relay remembers, for a
// while, the agents it sent away; one that comes back strayReturns
// times within strayReturn is admitted (as far as isolation goes: its
// admission still reads its record from the store) and kept: it is not
// sent away again until the isolation ends. Not at its first return: an
// agent that knows the relays by one address (a load balancer) may land
// here again by chance on its way elsewhere, and is refused, to try
// again; landing here three times in a row is unlikely for an agent
// that can reach another relay (one in eight behind a load balancer of
// two relays, less behind more). The others moved, and the tenants of
// the agents that moved are reachable through every other relay, as the
// isolation means them to be; an agent kept here is invisible to the
// other relays as before, but it had nowhere else to be.

const (
	// strayReturn is how long after it was sent away an agent that comes
	// back counts as one that could not connect elsewhere. An agent told
	// to leave passes over this relay until the GoAway's drain deadline
	// (DrainTimeout) and a few seconds more, then retries with backoff.
	strayReturn = 5 * time.Minute
	// strayReturns is the return (counted since it was sent away) at
	// which an agent is admitted: the first two are refused.
	strayReturns = 3
	// maxStrays bounds the agents remembered.
	maxStrays = 100_000
)

// strays is an isolated relay's memory of the agents it sent away.
type strays struct {
	mu sync.Mutex // guards m
	m  map[store.AgentKey]stray
}

// stray is one agent sent away: when, and whether it came back and is
// kept.
type stray struct {
	sent    time.Time
	returns int // times it came back and was refused
	kept    bool
}

// sentAway records that the agent was told to leave at now. It reports
// false, recording nothing, for an agent kept: it is not to be sent away.
func (s *strays) sentAway(k store.AgentKey, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[k]; ok && e.kept {
		return false
	}
	if s.m == nil {
		s.m = map[store.AgentKey]stray{}
	}
	if _, ok := s.m[k]; !ok && len(s.m) >= maxStrays {
		for k, e := range s.m {
			if !e.kept && now.Sub(e.sent) > strayReturn {
				delete(s.m, k)
			}
		}
		if len(s.m) >= maxStrays {
			return true // told to leave, but not remembered
		}
	}
	s.m[k] = stray{sent: now}
	return true
}

// returned reports whether the agent may be admitted while the relay is
// isolated: it is kept, or it was sent away within strayReturn of now
// and this is its strayReturns-th return (it is then kept from now on,
// and first says so).
func (s *strays) returned(k store.AgentKey, now time.Time) (ok, first bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, found := s.m[k]
	switch {
	case !found:
		return false, false
	case e.kept:
		return true, false
	case now.Sub(e.sent) <= strayReturn:
		if e.returns++; e.returns < strayReturns {
			s.m[k] = e
			return false, false
		}
		e.kept = true
		s.m[k] = e
		return true, true
	}
	return false, false
}

// forget forgets every agent (the isolation ended).
func (s *strays) forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m = nil
}
