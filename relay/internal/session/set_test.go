package session

import (
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/route"
)

func TestPickSkipsUnhealthy(t *testing.T) {
	const hb = testHeartbeat
	srv := testServer()
	g := srv.set
	silent := benchConn(srv, "acme", "silent")
	silent.lastHeard.Store(time.Now().Add(-3*hb - time.Second).UnixNano())
	draining := benchConn(srv, "acme", "draining")
	draining.draining.Store(true)
	closed := benchConn(srv, "acme", "closed")
	close(closed.sess.(*benchSession).done)
	busy := benchConn(srv, "acme", "busy")
	busy.open.Store(5)
	idle := benchConn(srv, "acme", "idle")
	idle.open.Store(1)
	for _, c := range []*Conn{silent, draining, closed, busy, idle} {
		g.add(c)
	}
	for range 20 { // the scan starts at a random place
		if got := g.routes.Pick("acme", nil); got != route.Carrier(idle) {
			t.Fatalf("pick = %s, want the least loaded healthy connection", got.Agent())
		}
	}
	if got := g.routes.Pick("acme", map[route.Carrier]bool{idle: true}); got != route.Carrier(busy) {
		t.Fatalf("pick excluding idle = %v, want busy", got)
	}
	if got := g.routes.Pick("acme", map[route.Carrier]bool{idle: true, busy: true}); got != nil {
		t.Fatalf("pick with only unhealthy connections left = %s, want none", got.Agent())
	}
	if got := g.routes.Pick("globex", nil); got != nil {
		t.Fatalf("pick for a tenant without connections = %s, want none", got.Agent())
	}
}
