package throttle

import (
	"context"
	"testing"
	"time"
)

func TestGate(t *testing.T) {
	g := NewGate(2, 50*time.Millisecond)
	ctx := context.Background()
	for i := range 2 {
		if !g.Enter(ctx) {
			t.Fatalf("a gate of 2 refused entry %d", i+1)
		}
	}
	if !g.Busy() || g.InUse() != 2 {
		t.Fatalf("a full gate of 2: busy %v, %d in use", g.Busy(), g.InUse())
	}
	if g.Enter(ctx) || g.TryEnter() {
		t.Fatal("a full gate let a third in")
	}
	// A slot freed while a newcomer waits goes to it.
	g.wait = 5 * time.Second
	got := make(chan bool)
	go func() { got <- g.Enter(ctx) }()
	g.Leave()
	if !<-got {
		t.Fatal("a waiter did not get the slot that was freed")
	}
	// A cancelled context stops the wait.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if g.Enter(cctx) {
		t.Fatal("entered a full gate with a cancelled context")
	}
	g.Leave()
	if g.Busy() {
		t.Fatal("a gate of 2 with one slot taken is busy")
	}
	g.Leave()
	if g.InUse() != 0 {
		t.Fatalf("%d slots still taken after every leave", g.InUse())
	}
}
