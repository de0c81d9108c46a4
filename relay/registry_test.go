package relay

import (
	"testing"
	"time"
)

func TestRegistryPickSkipsUnhealthy(t *testing.T) {
	const hb = 10 * time.Second
	g := newRegistry()
	silent := benchConn("acme", "silent")
	silent.lastHeard.Store(time.Now().Add(-3*hb - time.Second).UnixNano())
	draining := benchConn("acme", "draining")
	draining.draining.Store(true)
	closed := benchConn("acme", "closed")
	close(closed.sess.(*benchSession).done)
	busy := benchConn("acme", "busy")
	busy.open.Store(5)
	idle := benchConn("acme", "idle")
	idle.open.Store(1)
	for _, c := range []*agentConn{silent, draining, closed, busy, idle} {
		g.add(c)
	}
	for range 20 { // the scan starts at a random place
		if got := g.pick("acme", hb, nil); got != idle {
			t.Fatalf("pick = %s, want the least loaded healthy connection", got.id.ID)
		}
	}
	if got := g.pick("acme", hb, map[*agentConn]bool{idle: true}); got != busy {
		t.Fatalf("pick excluding idle = %v, want busy", got)
	}
	if got := g.pick("acme", hb, map[*agentConn]bool{idle: true, busy: true}); got != nil {
		t.Fatalf("pick with only unhealthy connections left = %s, want none", got.id.ID)
	}
	if got := g.pick("globex", hb, nil); got != nil {
		t.Fatalf("pick for a tenant without connections = %s, want none", got.id.ID)
	}
}
