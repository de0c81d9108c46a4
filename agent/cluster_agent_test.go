package agent

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// The agent against several test relays (testrelay_test.go) on distinct
// loopback addresses: real transports, real TLS, the real protocol.

// runClusterAgent runs an agent enrolled with ca's root; it stops when the
// test ends.
func runClusterAgent(t *testing.T, ca *testCA, cfg Config) *Agent {
	t.Helper()
	cfg.Logger = slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.Reconnect = Backoff{Initial: 100 * time.Millisecond, Max: time.Second}
	cfg.NoFileWatch = true
	a := enrolledWith(t, cfg, ca.root, ca.root)
	runUntilCleanup(t, a)
	return a
}

// runUntilCleanup runs a until the test ends, and fails the test if
// Run returns an error then.
func runUntilCleanup(t *testing.T, a *Agent) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// waitFor polls cond until it returns nil, for at most d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not so after %v: %v", what, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// held returns the relay id of each connected slot of a, by slot.
func held(a *Agent) map[int]string {
	out := map[int]string{}
	for _, s := range a.Status().Sessions {
		if s.State == StateConnected {
			out[s.Slot] = s.RelayID
		}
	}
	return out
}

// waitDistinct waits until a's k slots are connected to k distinct relays
// for which ok is true, and returns their ids by slot.
func waitDistinct(t *testing.T, a *Agent, k int, d time.Duration, ok func(id string) bool) map[int]string {
	t.Helper()
	var h map[int]string
	waitFor(t, d, fmt.Sprintf("%d slots on distinct relays", k), func() error {
		h = held(a)
		ids := slices.Sorted(maps.Values(h))
		if len(h) != k || len(slices.Compact(slices.Clone(ids))) != k {
			return fmt.Errorf("slots hold %v", h)
		}
		for _, id := range ids {
			if !ok(id) {
				return fmt.Errorf("slots hold %v", h)
			}
		}
		return nil
	})
	return h
}

func anyRelay(string) bool { return true }

func infos(rs ...*testRelay) []protocol.RelayInfo {
	var out []protocol.RelayInfo
	for _, r := range rs {
		out = append(out, r.info())
	}
	return out
}

func setLists(list []protocol.RelayInfo, rs ...*testRelay) {
	for _, r := range rs {
		r.setList(list)
	}
}

func byID(rs []*testRelay, id string) *testRelay {
	for _, r := range rs {
		if r.id == id {
			return r
		}
	}
	return nil
}

// onlyOpen returns the one session open at r.
func onlyOpen(t *testing.T, r *testRelay) *relayConn {
	t.Helper()
	open := r.open()
	if len(open) != 1 {
		t.Fatalf("relay %s has %d sessions open, want 1", r.id, len(open))
	}
	return open[0]
}

// Three relays behind one name (a second listener of r1): the agent
// reaches one through the name, learns the list, and holds K=2
// connections to distinct relays, the second dialled at its advertised
// address. A relay it holds is killed: a different relay replaces it
// within seconds, never through the name. A fourth relay joins: nothing
// moves.
func TestClusterSlotsOnDistinctRelays(t *testing.T) {
	for _, transport := range []string{TransportQUIC, TransportTCP} {
		t.Run(transport, func(t *testing.T) {
			ca := newTestCA(t)
			rs := []*testRelay{
				newTestRelay(t, ca, "r1", "127.0.0.2", true),
				newTestRelay(t, ca, "r2", "127.0.0.3", true),
				newTestRelay(t, ca, "r3", "127.0.0.4", true),
			}
			shared := rs[0].listen("127.0.0.1")
			setLists(infos(rs...), rs...)
			a := runClusterAgent(t, ca, Config{Relays: []string{shared}, RelayConnections: 2, Transport: transport})

			h := waitDistinct(t, a, 2, 10*time.Second, anyRelay)
			if h[0] != "r1" {
				t.Fatalf("slot 0 holds %s, want r1, the relay behind the shared name", h[0])
			}
			if n := rs[0].hellosVia(shared); n != 1 {
				t.Fatalf("%d sessions came through the shared name, want 1 (the first)", n)
			}
			st := a.Status()
			if got := st.Relays; len(got) != 2 || got[0] != (protocol.HeldRelay{ID: "r1", Addr: shared}) || got[1].ID != h[1] || got[1].Addr != byID(rs, h[1]).addr {
				t.Fatalf("the report lists held relays %+v, want r1 at %s and %s at its advertised address", got, shared, h[1])
			}
			if len(st.Cluster) != 3 {
				t.Fatalf("the status lists the cluster %+v, want the 3 relays", st.Cluster)
			}

			victim := byID(rs, h[1])
			killed := time.Now()
			victim.kill()
			h = waitDistinct(t, a, 2, 10*time.Second, func(id string) bool { return id != victim.id })
			t.Logf("%s killed: replaced by %s after %v", victim.id, h[1], time.Since(killed).Round(time.Millisecond))
			if h[0] != "r1" {
				t.Fatalf("slot 0 moved to %s, want it to stay on r1", h[0])
			}
			for _, s := range a.Status().Sessions {
				if strings.Contains(s.LastError, "dial "+victim.addr) {
					t.Fatalf("slot %d dialled the relay it had just lost: %s", s.Slot, s.LastError)
				}
			}

			// The cluster notices: the list drops the victim; then r4 joins.
			var live []*testRelay
			for _, r := range rs {
				if r != victim {
					live = append(live, r)
				}
			}
			setLists(infos(live...), live...)
			r4 := newTestRelay(t, ca, "r4", "127.0.0.5", true)
			live = append(live, r4)
			setLists(infos(live...), live...)
			waitFor(t, 5*time.Second, "r4 in the agent's list", func() error {
				for _, r := range a.Status().Cluster {
					if r.ID == "r4" {
						return nil
					}
				}
				return errNotYet
			})
			before := sessionIDs(a)
			// No event marks a move that does not happen: watch for a while.
			for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
				if n := len(r4.sessions()); n != 0 {
					t.Fatalf("r4 got %d sessions, want none: the agent already held 2 distinct live relays", n)
				}
				if now := sessionIDs(a); !maps.Equal(now, before) {
					t.Fatalf("sessions changed from %v to %v when r4 joined, want no move", before, now)
				}
			}
			if n := rs[0].hellosVia(shared); n != 1 {
				t.Fatalf("%d sessions came through the shared name, want 1: the agent dials listed addresses once it has the list", n)
			}
		})
	}
}

func sessionIDs(a *Agent) map[int]string {
	out := map[int]string{}
	for _, s := range a.Status().Sessions {
		out[s.Slot] = s.SessionID
	}
	return out
}

// A relay that drains (the list marks it) is left for another relay, the
// new connection first; its stream in flight goes on until it ends. A
// relay that sends GoAway "leaving" is left the same way: its session
// closes only once the replacement is up.
func TestClusterDrainingRelay(t *testing.T) {
	for _, transport := range []string{TransportQUIC, TransportTCP} {
		t.Run(transport, func(t *testing.T) {
			ca := newTestCA(t)
			rs := []*testRelay{
				newTestRelay(t, ca, "r1", "127.0.0.2", true),
				newTestRelay(t, ca, "r2", "127.0.0.3", true),
				newTestRelay(t, ca, "r3", "127.0.0.4", true),
				newTestRelay(t, ca, "r4", "127.0.0.5", true),
			}
			list := infos(rs...)
			setLists(list, rs...)
			a := runClusterAgent(t, ca, Config{Relays: []string{rs[0].addr}, RelayConnections: 2, Transport: transport,
				Services: map[string]Service{"echo": {Address: echoService(t)}}})
			h := waitDistinct(t, a, 2, 10*time.Second, anyRelay)
			x, y := byID(rs, h[0]), byID(rs, h[1])

			// x drains, with a stream in flight.
			xs := onlyOpen(t, x)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			st, err := xs.openStream(ctx, "echo")
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := roundTrip(st, "before"); err != nil {
				t.Fatal(err)
			}
			for i := range list {
				list[i].Draining = list[i].ID == x.id
			}
			setLists(list, rs...)
			h = waitDistinct(t, a, 2, 10*time.Second, func(id string) bool { return id != x.id })
			if h[1] != y.id {
				t.Fatalf("slot 1 moved from %s to %s, want it to stay: its relay does not drain", y.id, h[1])
			}
			z := byID(rs, h[0])
			zs := onlyOpen(t, z)
			select {
			case <-xs.done:
				t.Fatalf("the session to the draining relay %s closed with a stream in flight", x.id)
			default:
			}
			if err := roundTrip(st, "after the move"); err != nil {
				t.Fatalf("the stream on the draining relay: %v", err)
			}
			st.Close()
			select {
			case <-xs.done:
			case <-time.After(10 * time.Second):
				t.Fatal("the session to the draining relay stayed open after its last stream ended")
			}
			if xs.closedAt.Before(zs.openedAt) {
				t.Fatalf("the session to %s closed %v before the one to %s opened, want after", x.id, zs.openedAt.Sub(xs.closedAt), z.id)
			}

			// y leaves: GoAway "leaving", nothing in flight.
			ys := onlyOpen(t, y)
			y.goAway(&protocol.GoAway{Reason: protocol.GoAwayLeaving, Message: "leaving the cluster", DrainMillis: 5000})
			h = waitDistinct(t, a, 2, 10*time.Second, func(id string) bool { return id != x.id && id != y.id })
			w := byID(rs, h[1])
			ws := onlyOpen(t, w)
			select {
			case <-ys.done:
			case <-time.After(10 * time.Second):
				t.Fatal("the session to the leaving relay stayed open")
			}
			if ys.closedAt.Before(ws.openedAt) {
				t.Fatalf("the session to the leaving relay %s closed %v before the one to %s opened, want after", y.id, ws.openedAt.Sub(ys.closedAt), w.id)
			}
			if n := len(x.sessions()) + len(y.sessions()); n != 2 {
				t.Fatalf("the draining and leaving relays got %d sessions, want only the 2 they had", n)
			}
		})
	}
}

// Two configured addresses that both lead to r1: both slots land on it;
// once the list is known, the higher slot moves to a relay the agent
// does not hold, connecting there before it leaves r1, and neither
// configured address is dialled again.
func TestClusterTwoSlotsOnOneRelay(t *testing.T) {
	ca := newTestCA(t)
	rs := []*testRelay{
		newTestRelay(t, ca, "r1", "127.0.0.2", true),
		newTestRelay(t, ca, "r2", "127.0.0.3", true),
		newTestRelay(t, ca, "r3", "127.0.0.4", true),
	}
	nameA, nameB := rs[0].listen("127.0.0.1"), rs[0].listen("127.0.0.1")
	rs[0].holdList(2) // both slots reach r1 before either knows the list
	setLists(infos(rs...), rs...)
	a := runClusterAgent(t, ca, Config{Relays: []string{nameA, nameB}, RelayConnections: 2, Transport: TransportTCP})
	h := waitDistinct(t, a, 2, 10*time.Second, anyRelay)
	if h[0] != "r1" || h[1] == "r1" {
		t.Fatalf("slots hold %v, want slot 0 on r1 and slot 1 elsewhere", h)
	}
	first := rs[0].sessions()
	if len(first) != 2 {
		t.Fatalf("r1 got %d sessions, want 2 (one per configured address)", len(first))
	}
	var moved *relayConn
	for _, c := range first {
		if c.via == nameB {
			moved = c
		}
	}
	if moved == nil {
		t.Fatalf("no session of r1 came through %s", nameB)
	}
	select {
	case <-moved.done:
	case <-time.After(10 * time.Second):
		t.Fatal("slot 1's first session to r1 stayed open after the move")
	}
	other := onlyOpen(t, byID(rs, h[1]))
	if moved.closedAt.Before(other.openedAt) {
		t.Fatalf("slot 1 left r1 %v before it connected to %s, want after", other.openedAt.Sub(moved.closedAt), h[1])
	}
	if na, nb := rs[0].hellosVia(nameA), rs[0].hellosVia(nameB); na != 1 || nb != 1 {
		t.Fatalf("sessions through the configured addresses: %d and %d, want 1 each", na, nb)
	}
}

// A cluster of one relay and K=2: both slots on it (the second at its
// advertised address, not the shared name); a second relay joins and the
// second slot moves to it.
func TestClusterFewerRelaysThanSlots(t *testing.T) {
	ca := newTestCA(t)
	r1 := newTestRelay(t, ca, "r1", "127.0.0.2", true)
	shared := r1.listen("127.0.0.1")
	r1.setList(infos(r1))
	a := runClusterAgent(t, ca, Config{Relays: []string{shared}, RelayConnections: 2, Transport: TransportQUIC})
	waitFor(t, 10*time.Second, "both slots on r1", func() error {
		if h := held(a); len(h) != 2 || h[0] != "r1" || h[1] != "r1" {
			return fmt.Errorf("slots hold %v", h)
		}
		return nil
	})
	if n, m := r1.hellosVia(shared), r1.hellosVia(r1.addr); n != 1 || m != 1 {
		t.Fatalf("sessions through the shared name and r1's own address: %d and %d, want 1 each", n, m)
	}
	r2 := newTestRelay(t, ca, "r2", "127.0.0.3", true)
	setLists(infos(r1, r2), r1, r2)
	h := waitDistinct(t, a, 2, 10*time.Second, anyRelay)
	if h[0] != "r1" || h[1] != "r2" {
		t.Fatalf("slots hold %v, want slot 0 on r1 and slot 1 moved to r2", h)
	}
	// The slot holds r2 once its new session is up; its old session on
	// r1 is closed just after, and r1 learns of it from the close
	// arriving, a moment later again.
	waitFor(t, 10*time.Second, "r1 to have one session left", func() error {
		if n := len(r1.open()); n != 1 {
			return fmt.Errorf("r1 has %d sessions open after the move, want 1", n)
		}
		return nil
	})
}

// A relay that says nothing of a cluster (no relays capability, no id):
// every connection goes to the configured relay, as before clusters.
func TestRelayWithoutList(t *testing.T) {
	for _, k := range []Config{{RelayConnections: 2}, {Connections: 2}, {RelayConnections: 3}} {
		t.Run(fmt.Sprintf("relay_connections %d connections %d", k.RelayConnections, k.Connections), func(t *testing.T) {
			ca := newTestCA(t)
			r := newTestRelay(t, ca, "r1", "127.0.0.2", false)
			k.Relays, k.Transport = []string{r.addr}, TransportTCP
			a := runClusterAgent(t, ca, k)
			want := slotCount(k)
			waitFor(t, 10*time.Second, "every slot on the relay", func() error {
				h := held(a)
				if len(h) != want {
					return fmt.Errorf("slots hold %v", h)
				}
				for _, id := range h {
					if id != "" {
						return fmt.Errorf("a slot holds relay id %q from a relay that sends none", id)
					}
				}
				return nil
			})
			if n := len(r.open()); n != want {
				t.Fatalf("the relay has %d sessions, want %d", n, want)
			}
			if c := a.Status().Cluster; len(c) != 0 {
				t.Fatalf("the status lists a cluster %+v, want none", c)
			}
		})
	}
}

func slotCount(c Config) int { return max(c.RelayConnections, c.Connections) }

// A message the agent cannot read (here a relay list that breaks the
// rules) is skipped: the session goes on, and the next list is taken.
func TestMalformedMessageSkipped(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	s, relayCtl := testSession(t, a)
	s.relayID = "r1"
	s.wg.Go(s.readLoop)
	defer s.close()
	bad := &protocol.Unknown{MessageType: protocol.TypeRelays, Payload: []byte(`{"relays":[{"id":"r1","addr":"0.0.0.0:7443"}]}`)}
	if err := protocol.WriteMessage(relayCtl, bad); err != nil {
		t.Fatal(err)
	}
	// A public address: a private one is left out of the list when no
	// configured relay is on one (relayaddr.go).
	if err := protocol.WriteMessage(relayCtl, &protocol.Relays{Relays: protocol.RelayList{{ID: "r1", Addr: "198.51.100.1:7443"}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the valid list taken", func() error {
		if c := a.view.cluster(); len(c) != 1 || c[0].Addr != "198.51.100.1:7443" {
			return fmt.Errorf("the view holds %+v", c)
		}
		return nil
	})
	select {
	case <-s.readDone:
		t.Fatalf("the control stream ended on a message that could be skipped: %v", s.endErr())
	default:
	}
}
