package relay

import (
	"context"
	"sync"
	"time"
)

// readyFor is how long /readyz reuses a readiness check's answer.
const readyFor = time.Second

// readiness remembers the answer of a readiness check (Relay.ready, which
// pings the store) for a while, so that /readyz, which anyone who reaches
// the metrics listener may ask as often as they like, costs the store at
// most one ping in flight and about one a second, however many ask.
// Callers that find no fresh answer while a check is in flight wait for
// that one check (each no longer than its own context lasts) rather than
// starting another. The answer stays honest: one is reused for at most
// its ttl after its check ended, so a store that stops answering is
// reported within ttl and the check's own timeout. Safe for concurrent
// use.
type readiness struct {
	check func(context.Context) error
	ttl   time.Duration
	now   func() time.Time // the clock; time.Now in the relay

	mu      sync.Mutex    // guards the fields below
	err     error         // the last answer
	at      time.Time     // when its check ended; zero before the first
	pending chan struct{} // closed when the check in flight ends; nil when none
}

func newReadiness(check func(context.Context) error, ttl time.Duration) *readiness {
	return &readiness{check: check, ttl: ttl, now: time.Now}
}

// ready returns the last answer while it is fresh, else the answer of a
// new check (or of the one in flight).
func (c *readiness) ready(ctx context.Context) error {
	c.mu.Lock()
	if !c.at.IsZero() && c.now().Sub(c.at) < c.ttl {
		defer c.mu.Unlock()
		return c.err
	}
	if done := c.pending; done != nil {
		c.mu.Unlock()
		select {
		case <-done:
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	done := make(chan struct{})
	c.pending = done
	c.mu.Unlock()
	// The check answers every caller waiting for it, so it does not end
	// with this caller's request; it has a timeout of its own.
	err := c.check(context.WithoutCancel(ctx))
	c.mu.Lock()
	c.err, c.at, c.pending = err, c.now(), nil
	c.mu.Unlock()
	close(done)
	return err
}

// readyz is ready as /readyz asks it: a relay that is not accepting
// (starting, or shutting down) says so at once, and the rest of the check
// is reused for up to readyFor (readiness).
func (r *Relay) readyz(ctx context.Context) error {
	if !r.serving.Load() {
		return errNotServing
	}
	return r.readyMemo.ready(ctx)
}
