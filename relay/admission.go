package relay

import (
	"context"
	"time"
)

// handshakeGate bounds the agent handshakes (TLS, then the hello) the relay
// works on at once. After a relay restart a whole fleet reconnects within
// seconds; without a bound every handshake competes for the CPU, all of
// them slow down past the agents' timeouts, and the agents retry: a login
// storm that feeds itself. With the gate, handshakes in progress finish
// quickly while the rest queue; a connection that finds no slot within
// gateWait is closed before any work is done, and its agent retries after a
// jittered backoff.
//
// A slot is held for the whole handshake, which includes round trips to the
// agent, so the bound must be far above what the CPU alone would suggest: a
// handshake over a 100 ms WAN path holds its slot for about 300 ms, and 512
// slots then admit ~1 700 handshakes a second, more than two cores can
// complete. The gate does not throttle a healthy relay; it keeps a storm of
// ten thousand simultaneous handshakes from sharing the CPU so thinly that
// all of them time out.
type handshakeGate struct {
	slots chan struct{}
	wait  time.Duration
}

// gateWait is how long a new connection waits for a handshake slot.
const gateWait = 8 * time.Second

func newHandshakeGate(n int) *handshakeGate {
	return &handshakeGate{slots: make(chan struct{}, n), wait: gateWait}
}

// enter takes a slot, waiting up to g.wait; it reports whether it got one.
func (g *handshakeGate) enter(ctx context.Context) bool {
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

// leave returns a slot taken by enter.
func (g *handshakeGate) leave() { <-g.slots }
