package transport

import (
	"sync/atomic"
	"time"
)

// CopyGate bounds how many bulk copies of a group of splices (the relay
// gives one to each tenant) run at once. A direction of a splice is bulk
// while it copies through the large buffer (see SmallCopyBuffer): it takes
// a slot before each write and gives it back after, so a group's hundred
// bulk streams have at most a few goroutines copying at any moment and
// the rest wait, parked, instead of queueing for the CPU ahead of other
// groups' work. A direction that moves small reads (an interactive
// request and its answer) never takes a slot and never waits.
//
// A write that takes longer than the gate's hold time (its reader is
// slow: flow control, a full socket buffer, a bandwidth limit) gives its
// slot back while it goes on, so one slow reader cannot stall the group's
// other streams for longer than that.
//
// The zero value is not usable; make one with NewCopyGate. A nil
// *CopyGate means no gate.
type CopyGate struct {
	slots   chan struct{}
	hold    time.Duration
	waiting atomic.Int64
}

// NewCopyGate returns a gate of slots concurrent bulk copies (at least 1)
// whose writes keep a slot at most hold (no limit when hold <= 0).
func NewCopyGate(slots int, hold time.Duration) *CopyGate {
	return &CopyGate{slots: make(chan struct{}, max(slots, 1)), hold: hold}
}

// InUse is the number of slots taken now.
func (g *CopyGate) InUse() int { return len(g.slots) }

// Waiting is the number of bulk copies waiting for a slot now.
func (g *CopyGate) Waiting() int { return int(g.waiting.Load()) }

// acquire takes a slot, waiting for one if all are taken. A wait is
// bounded: every slot comes back when its write ends or its hold time
// has passed.
func (g *CopyGate) acquire() {
	select {
	case g.slots <- struct{}{}:
		return
	default:
	}
	g.waiting.Add(1)
	g.slots <- struct{}{}
	g.waiting.Add(-1)
}

func (g *CopyGate) release() { <-g.slots }

// gatedWrite is one copy direction's use of a gate: it takes a slot for
// each write and gives it back when the write ends or when the write has
// run for the gate's hold time, whichever comes first. Its timer is made
// once and re-armed for each write.
type gatedWrite struct {
	gate  *CopyGate
	held  atomic.Bool // a slot is taken and not yet given back
	timer *time.Timer // gives the slot back after hold; nil until the first write, or when hold <= 0
}

// write writes p to dst holding a slot of the gate.
func (g *gatedWrite) write(dst Stream, p []byte) (int, error) {
	g.gate.acquire()
	g.held.Store(true)
	if h := g.gate.hold; h > 0 {
		if g.timer == nil {
			g.timer = time.AfterFunc(h, g.giveBack)
		} else {
			g.timer.Reset(h)
		}
	}
	n, err := dst.Write(p)
	if g.timer != nil {
		g.timer.Stop()
	}
	g.giveBack()
	return n, err
}

// giveBack returns the slot if this direction still holds it. The write's
// end and the hold timer both call it; exactly one of them returns the
// slot. (A timer that fires late, after the next write took a slot, only
// ends that write's hold early.)
func (g *gatedWrite) giveBack() {
	if g.held.CompareAndSwap(true, false) {
		g.gate.release()
	}
}

// stop disarms the timer once the direction is done.
func (g *gatedWrite) stop() {
	if g.timer != nil {
		g.timer.Stop()
	}
	g.giveBack()
}
