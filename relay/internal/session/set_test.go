package session

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/datadir"
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

// TestTrialCarriesNoStreams: the session of an update trial (a new binary
// that connects once, then exits) is never handed a stream, though it has
// none open and its agent's running session has several: with the running
// session there every stream goes to it, and with the trial alone a stream
// is refused as no_agent rather than served by the trial. The trial's
// session is still listed with the tenant's, but does not count as the
// agent's presence here.
func TestTrialCarriesNoStreams(t *testing.T) {
	srv := testServer()
	type presence struct {
		tenant, agent string
		n             int
	}
	var told []presence
	srv.set = newSet(route.NewTable(), func(tenant, agent string, n int) { told = append(told, presence{tenant, agent, n}) })
	g := srv.set
	r := route.NewRouter(route.Config{Table: g.routes, StreamOpenTimeout: 5 * time.Second,
		Dir: &datadir.Dir{Path: t.TempDir()}, Logger: discardLog, Now: time.Now})
	dial := func(id string) (*route.Tunnel, error) {
		return r.Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: id}, nil)
	}

	trial := benchConn(srv, "acme", "a1")
	trial.hello = protocol.Hello{Capabilities: []string{protocol.CapHeartbeat, protocol.CapUpdate, protocol.CapUpdateTrial}}
	g.add(trial)
	if got := g.Select("acme", false, nil); len(got) != 1 || got[0] != trial {
		t.Fatalf("sessions of the tenant = %v, want the trial's listed", got)
	}
	if len(told) != 0 {
		t.Errorf("presence told %v for a trial alone, want nothing", told)
	}
	tun, err := dial("r0")
	var pe *protocol.Error
	switch {
	case err == nil:
		tun.Carrier.StreamDone()
		t.Errorf("stream with only a trial connected: opened on %s, want no_agent", tun.Agent)
	case !errors.As(err, &pe) || pe.Code != protocol.CodeNoAgent:
		t.Errorf("stream with only a trial connected: %v, want no_agent", err)
	}

	running := benchConn(srv, "acme", "a1")
	running.hello = protocol.Hello{Capabilities: []string{protocol.CapHeartbeat, protocol.CapUpdate}, BootID: "boot-1"}
	running.open.Store(3)
	g.add(running)
	if want := (presence{"acme", "a1", 1}); len(told) != 1 || told[0] != want {
		t.Errorf("presence told %v, want %v", told, []presence{want})
	}
	name := func(c route.Carrier) string {
		switch c {
		case route.Carrier(trial):
			return "the trial's session"
		case route.Carrier(running):
			return "the running session"
		}
		return fmt.Sprint(c)
	}
	for i := range 20 { // the scan starts at a random place
		if got := g.routes.Pick("acme", nil); got != route.Carrier(running) {
			t.Fatalf("pick = %s, want the running session, not the idle trial's", name(got))
		}
		tun, err := dial(fmt.Sprintf("r%d", i+1))
		if err != nil {
			t.Fatal(err)
		}
		tun.Carrier.StreamDone()
		if tun.Carrier != route.Carrier(running) {
			t.Fatalf("stream went to %s, want the running session", name(tun.Carrier))
		}
	}
	if n := trial.total.Load(); n != 0 {
		t.Errorf("the trial's session opened %d streams, want none", n)
	}

	g.remove(trial)
	if want := (presence{"acme", "a1", 1}); told[len(told)-1] != want {
		t.Errorf("presence after the trial left: %v, want %v", told, want)
	}
	if got := g.Select("acme", false, nil); len(got) != 1 || got[0] != running {
		t.Fatalf("sessions after the trial left = %v, want the running one", got)
	}
	if got := g.routes.Connected("acme"); got != 1 {
		t.Fatalf("carriers of the tenant = %d, want 1", got)
	}
}
