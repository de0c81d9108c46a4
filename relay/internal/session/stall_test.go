package session

import (
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/route"
)

// TestStallDoubtsSiblingsBeforeWakingOpens: when a session stalls (its
// agent answers no ping), the stream opens waiting on it are woken to look
// for another usable connection of the tenant. The agent's other sessions
// (same process) are held back at that moment too, so a woken open must
// already see them as unusable: otherwise it abandons its stream for a
// sibling that is withdrawn a moment later, finds no connection left, and
// the client is refused at once instead of waiting for the agent.
func TestStallDoubtsSiblingsBeforeWakingOpens(t *testing.T) {
	for i := range 2000 {
		stallRound(t, i)
	}
}

func stallRound(t *testing.T, round int) {
	srv := testServer()
	a := benchConn(srv, "acme", "agent")
	b := benchConn(srv, "acme", "agent") // the same agent process's other session
	now := time.Now()
	for _, c := range []*Conn{a, b} {
		c.notAfter.Store(now.Add(time.Hour).UnixNano())
		srv.set.add(c)
	}
	// A ping on a went unanswered for longer than probeWait.
	a.awaitSince.Store(now.Add(-probeWait - time.Millisecond).UnixNano())

	woken, stop := a.stalls(), make(chan struct{})
	defer close(stop) // ends the watcher below if the stall never comes
	sawSibling, spinning := make(chan bool, 1), make(chan struct{})
	go func() {
		close(spinning)
		// An open's watch, woken by the stall, asks what OpenStream's
		// caller asks: is there another usable connection? It spins
		// rather than blocks, to look the moment it is woken.
		for !isClosed(woken) {
			if isClosed(stop) {
				return
			}
		}
		sawSibling <- srv.set.routes.Pick("acme", map[route.Carrier]bool{a: true}) != nil
	}()
	<-spinning
	if _, err := a.beat(now, testHeartbeat); err != nil {
		t.Fatal(err)
	}
	if !a.Stalled() {
		t.Fatal("the session did not stall")
	}
	if <-sawSibling {
		t.Fatalf("round %d: an open woken by the stall found the agent's other session usable; it is held back at the same moment and must not be offered", round)
	}
	if !b.doubted.Load() {
		t.Fatal("the agent's other session was not held back")
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
