package agent

import (
	"bufio"
	"context"
	"math"
	"net"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/tcp"
)

// testSession is an agent session over a yamux pair on an in-memory pipe,
// with its control stream open; relay is the relay's end of it.
func testSession(t *testing.T, a *Agent) (s *session, relayCtl transport.Stream) {
	t.Helper()
	ac, rc := net.Pipe()
	as, err := tcp.Client(ac, nil)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := tcp.Server(rc, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	s = a.newSession(as, "relay:7443", TransportTCP, "configured", a.log)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accepted := make(chan transport.Stream, 1)
	go func() {
		st, err := rs.AcceptStream(ctx)
		if err != nil {
			t.Error(err)
		}
		accepted <- st
	}()
	if s.ctl, err = as.OpenStream(ctx); err != nil {
		t.Fatal(err)
	}
	s.br = bufio.NewReader(s.ctl)
	if relayCtl = <-accepted; relayCtl == nil {
		t.FailNow()
	}
	return s, relayCtl
}

// The agent drains a session that got a GoAway until the deadline the
// relay gave, capped at an hour, or by its own drain timeout when the
// relay gave none.
func TestGoAwayDrainDeadline(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	a.cfg.DrainTimeout = 10 * time.Second
	for _, tc := range []struct {
		name   string
		millis int64
		want   time.Duration
	}{
		{"no drain from the relay", 0, 10 * time.Second},
		{"a relay draining longer", 30000, 30 * time.Second},
		{"a relay draining shorter", 2000, 2 * time.Second},
		{"negative", -30000, 10 * time.Second},
		{"absurd", math.MaxInt64, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, relayCtl := testSession(t, a)
			s.wg.Go(s.readLoop)
			defer s.close()
			before := time.Now()
			if err := protocol.WriteMessage(relayCtl, &protocol.GoAway{Reason: "shutdown", DrainMillis: tc.millis}); err != nil {
				t.Fatal(err)
			}
			select {
			case <-s.goaway:
			case <-time.After(10 * time.Second):
				t.Fatal("GoAway not seen")
			}
			after := time.Now()
			got := s.drainDeadline()
			if got.Before(before.Add(tc.want)) || got.After(time.Now().Add(tc.want)) {
				t.Fatalf("drain deadline %v after the GoAway was sent, want %v (the GoAway took %v)", got.Sub(before), tc.want, after.Sub(before))
			}
		})
	}
}

// drainAndClose keeps a session with a stream in flight until the
// deadline it is given, past the agent's own drain timeout; when the agent
// stops meanwhile, it waits no longer than its drain timeout from then.
func TestDrainAndCloseDeadlines(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	a.cfg.DrainTimeout = 300 * time.Millisecond
	t.Run("relay deadline past the agent's drain timeout", func(t *testing.T) {
		s, _ := testSession(t, a)
		s.open.Add(1) // a stream in flight that does not end
		start := time.Now()
		s.drainAndClose(context.Background(), start.Add(1500*time.Millisecond), nil)
		if el := time.Since(start); el < 1500*time.Millisecond || el > 5*time.Second {
			t.Fatalf("closed after %v, want at the relay's deadline, 1.5s", el)
		}
	})
	t.Run("agent stops during a long relay drain", func(t *testing.T) {
		s, _ := testSession(t, a)
		s.open.Add(1)
		ctx, cancel := context.WithCancel(context.Background())
		start := time.Now()
		time.AfterFunc(200*time.Millisecond, cancel)
		s.drainAndClose(ctx, start.Add(time.Hour), nil)
		if el := time.Since(start); el < 500*time.Millisecond || el > 5*time.Second {
			t.Fatalf("closed after %v, want the stop (0.2s) plus the agent's drain timeout (0.3s)", el)
		}
	})
	t.Run("streams end before the deadline", func(t *testing.T) {
		s, _ := testSession(t, a)
		s.open.Add(1)
		start := time.Now()
		time.AfterFunc(100*time.Millisecond, func() {
			s.open.Add(-1)
			s.streamDone <- struct{}{}
		})
		s.drainAndClose(context.Background(), start.Add(time.Hour), nil)
		if el := time.Since(start); el > 5*time.Second {
			t.Fatalf("closed after %v, want as soon as the last stream ended", el)
		}
	})
}

// close resets the service connections of the streams still in flight,
// so that no handler waits on a service that never closes its side.
func TestCloseResetsServiceConnections(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	s, _ := testSession(t, a)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	svc, err := ln.Accept() // the service: it never writes or closes
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if !s.addService(conn) {
		t.Fatal("addService refused a connection on an open session")
	}
	s.close()
	svc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := svc.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("the service's read got %v, want the connection reset", err)
	}
	other, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if s.addService(other) {
		t.Fatal("addService took a connection after close")
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
