package session

import (
	"context"
	"testing"
	"time"
)

func TestHandshakeGate(t *testing.T) {
	g := newHandshakeGate(2)
	g.wait = 50 * time.Millisecond
	ctx := context.Background()
	for i := range 2 {
		if !g.enter(ctx) {
			t.Fatalf("a gate of 2 refused entry %d", i+1)
		}
	}
	if g.enter(ctx) {
		t.Fatal("a full gate let a third in")
	}
	// A slot freed while a newcomer waits goes to it.
	go func() {
		time.Sleep(10 * time.Millisecond)
		g.leave()
	}()
	g.wait = 5 * time.Second
	if !g.enter(ctx) {
		t.Fatal("a waiter did not get the slot that was freed")
	}
	// A cancelled context stops the wait.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if g.enter(cctx) {
		t.Fatal("entered a full gate with a cancelled context")
	}
	g.leave()
	g.leave()
	if len(g.slots) != 0 {
		t.Fatalf("%d slots still taken after every leave", len(g.slots))
	}
}
