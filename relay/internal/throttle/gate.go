package throttle

import (
	"context"
	"sync/atomic"
	"time"
)

// HandshakeStats counts a listener's handshakes by outcome: the agent
// port's (session.Stats) and the relay-to-relay listener's (peer.Stats),
// reported as tether_agent_handshakes_total and
// tether_peer_handshakes_total.
type HandshakeStats struct {
	OK            atomic.Int64 // admitted: an agent's session, a peer's link up
	Failed        atomic.Int64 // handshakes that failed or timed out (TLS, or an agent's hello)
	Throttled     atomic.Int64 // turned away: no handshake slot within the gate's wait (over QUIC, once per attempt however many Initial packets it sent)
	SourceLimited atomic.Int64 // turned away by the bound per source address or network, or a network's share of a busy gate
}

// Gate bounds the handshakes a listener works on at once, before their
// connections are authenticated: a connection holds a slot from before its
// TLS handshake until it is admitted or closed. A connection that finds
// no slot within the gate's wait is closed before any work is done.
// Sources bounds what one source may hold of it; ShareWhenBusy with Busy
// bounds what one network may hold while it fills up. Every method is safe
// for concurrent use.
type Gate struct {
	slots chan struct{}
	wait  time.Duration
}

// NewGate returns a gate of n slots (at least one) whose Enter waits up
// to wait for one.
func NewGate(n int, wait time.Duration) *Gate {
	return &Gate{slots: make(chan struct{}, max(n, 1)), wait: wait}
}

// Enter takes a slot, waiting up to the gate's wait or until ctx ends; it
// reports whether it got one.
func (g *Gate) Enter(ctx context.Context) bool {
	select {
	case g.slots <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(g.wait)
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// TryEnter takes a slot if one is free now.
func (g *Gate) TryEnter() bool {
	select {
	case g.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// Leave returns a slot taken by Enter or TryEnter.
func (g *Gate) Leave() { <-g.slots }

// Busy reports whether more than half of the gate's slots are taken.
func (g *Gate) Busy() bool { return 2*len(g.slots) > cap(g.slots) }

// InUse is how many slots are taken.
func (g *Gate) InUse() int { return len(g.slots) }
