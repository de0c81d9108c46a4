package throttle

import (
	"context"
	"time"
)

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
