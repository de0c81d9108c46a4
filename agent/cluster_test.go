package agent

import (
	"fmt"
	"log/slog"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

func testView(seed string) *relayView {
	return newRelayView(seed, Backoff{Initial: 100 * time.Millisecond, Max: time.Second}, slog.New(slog.DiscardHandler), func() {})
}

// relays makes a list of relays with ids r1…rn at 10.0.0.i:7443.
func relays(ids ...string) []protocol.RelayInfo {
	out := make([]protocol.RelayInfo, len(ids))
	for i, id := range ids {
		out[i] = protocol.RelayInfo{ID: id, Addr: fmt.Sprintf("10.0.0.%d:7443", i+1)}
	}
	return out
}

// connectAll has slots 0…k-1 pick and connect in turn; it returns the
// relay ids they hold.
func connectAll(t *testing.T, v *relayView, k int) []string {
	t.Helper()
	var held []string
	for slot := range k {
		tgt, ok := v.pick(slot)
		if !ok {
			t.Fatalf("slot %d found no relay to pick", slot)
		}
		v.connected(slot, &session{relayID: tgt.id, relay: tgt.addr}, true)
		held = append(held, tgt.id)
	}
	return held
}

// A relay list heard from session s (whose relay is from).
func hear(v *relayView, from string, list []protocol.RelayInfo) *session {
	s := &session{relayID: from}
	v.setList(s, list)
	return s
}

// Slots pick distinct relays while there are enough, then share the one
// the fewest slots hold; with no list a slot picks nothing (it dials a
// configured address).
func TestPickDistinct(t *testing.T) {
	v := testView("acme/a1")
	if _, ok := v.pick(0); ok {
		t.Fatal("picked a listed relay with no list known")
	}
	hear(v, "r1", relays("r1", "r2", "r3"))
	held := connectAll(t, v, 3)
	if slices.Sort(held); !slices.Equal(held, []string{"r1", "r2", "r3"}) {
		t.Fatalf("3 slots hold %v, want each relay once", held)
	}
	// A fourth slot shares a relay (fewer relays than slots), and a
	// fifth the relay the fourth did not take, not the same one.
	t4, ok := v.pick(3)
	if !ok {
		t.Fatal("slot 3 found no relay with 3 listed and reachable")
	}
	v.connected(3, &session{relayID: t4.id, relay: t4.addr}, true)
	t5, ok := v.pick(4)
	if !ok || t5.id == t4.id {
		t.Fatalf("slot 4 picked %v (%v), want a relay other than slot 3's %s", t5, ok, t4.id)
	}
}

// Draining relays are not picked, and a slot on one moves to another
// relay, even one another slot holds when no other is free.
func TestDrainingRelayAvoided(t *testing.T) {
	v := testView("acme/a1")
	list := relays("r1", "r2", "r3")
	s := hear(v, "r1", list)
	held := connectAll(t, v, 2)
	free := ""
	for i := range list {
		if slices.Contains(held, list[i].ID) {
			list[i].Draining = true
		} else {
			free = list[i].ID
		}
	}
	v.setList(s, list)
	for slot := range 2 {
		tgt, why, _, ok := v.moveTarget(slot)
		if !ok || tgt.id != free || why != "its relay is draining" {
			t.Errorf("slot %d on %s: move to %v (%v, %q), want to %s because its relay drains", slot, held[slot], tgt, ok, why, free)
		}
		v.moveDone(slot, tgt, false)
	}
	v.release(0)
	v.release(1)
	for range 3 {
		if tgt, ok := v.pick(0); !ok || tgt.id != free {
			t.Fatalf("picked %v (%v), want %s, the only relay not draining", tgt, ok, free)
		}
	}
}

// With fewer live relays than slots, slots share; when a relay joins, the
// higher of two slots on one relay moves to it, the lower stays, and a
// slot alone on its relay never moves.
func TestRebalanceTowardK(t *testing.T) {
	v := testView("acme/a1")
	s := hear(v, "r1", relays("r1"))
	if held := connectAll(t, v, 2); held[0] != "r1" || held[1] != "r1" {
		t.Fatalf("2 slots hold %v with one relay listed, want both on r1", held)
	}
	for slot := range 2 {
		if tgt, why, _, ok := v.moveTarget(slot); ok {
			t.Fatalf("slot %d moves to %v (%s) with no other relay", slot, tgt, why)
		}
	}
	v.setList(s, relays("r1", "r2"))
	if tgt, why, _, ok := v.moveTarget(0); ok {
		t.Fatalf("slot 0, the lower of the two on r1, moves to %v (%s), want it to stay", tgt, why)
	}
	tgt, why, _, ok := v.moveTarget(1)
	if !ok || tgt.id != "r2" {
		t.Fatalf("slot 1 moves to %v (%v, %q), want to r2", tgt, ok, why)
	}
	if again, _, _, ok := v.moveTarget(1); ok {
		t.Fatalf("slot 1 was given a second move (to %v) while one is under way", again)
	}
	v.connected(1, &session{relayID: "r2", relay: tgt.addr}, true)
	v.setList(s, relays("r1", "r2", "r3"))
	for slot := range 2 {
		if tgt, why, _, ok := v.moveTarget(slot); ok {
			t.Fatalf("slot %d moves to %v (%s) after r3 joined, want no move: it holds its own relay", slot, tgt, why)
		}
	}
}

// A relay whose session was lost or whose dial failed is passed over for
// a while; when every listed relay failed lately, the slot falls back to a
// configured address; a relay that answers again is forgotten as failed.
func TestFailedRelaysPassedOver(t *testing.T) {
	v := testView("acme/a1")
	hear(v, "r1", relays("r1", "r2", "r3"))
	first, _ := v.pick(0)
	v.failed(0, first)
	second, ok := v.pick(0)
	if !ok || second.id == first.id {
		t.Fatalf("after %s failed the slot picked %v (%v), want another relay", first.id, second, ok)
	}
	v.failed(0, second)
	third, _ := v.pick(0)
	v.failed(0, third)
	if tgt, ok := v.pick(0); ok {
		t.Fatalf("every listed relay failed, yet the slot picked %v, want a configured address", tgt)
	}
	// Slot 1 reached r2 (through the configured name): r2 answers.
	v.connected(1, &session{relayID: "r2", relay: "relays.example:7443"}, true)
	if tgt, ok := v.pick(0); !ok || tgt.id != "r2" {
		t.Fatalf("slot 0 picked %v (%v), want r2, reachable again (shared with slot 1)", tgt, ok)
	}
}

// A slot moves off a relay that the lists of sessions to other relays no
// longer name; a relay's own list is not enough to judge it.
func TestGoneRelay(t *testing.T) {
	v := testView("acme/a1")
	s1 := hear(v, "r1", relays("r1", "r2", "r3"))
	v.connected(0, &session{relayID: "r1", relay: "10.0.0.1:7443"}, true)
	v.setList(s1, relays("r2", "r3")) // r1 does not list itself (yet)
	if tgt, why, _, ok := v.moveTarget(0); ok {
		t.Fatalf("moves to %v (%s) on r1's own list, want no move", tgt, why)
	}
	hear(v, "r2", relays("r2", "r3"))
	tgt, why, _, ok := v.moveTarget(0)
	if !ok || why != "its relay has left the cluster's list" {
		t.Fatalf("got move %v (%v, %q), want a move off r1, which r2's list leaves out", tgt, ok, why)
	}
}

// A relay that said it is leaving is passed over until the lists show it
// gone and then back.
func TestLeavingRelay(t *testing.T) {
	v := testView("acme/a1")
	s := hear(v, "r1", relays("r1", "r2"))
	v.leavingRelay("r1", time.Now().Add(time.Minute))
	for range 3 {
		if tgt, ok := v.pick(0); !ok || tgt.id != "r2" {
			t.Fatalf("picked %v (%v), want r2: r1 is leaving", tgt, ok)
		}
	}
	v.setList(s, relays("r1", "r2")) // a list that still names r1 live: no news
	if tgt, _ := v.pick(0); tgt.id != "r2" {
		t.Fatalf("picked %s after a list that did not show r1 leave, want r2", tgt.id)
	}
	v.setList(s, relays("r2"))       // r1 left
	v.setList(s, relays("r1", "r2")) // and is back (restarted)
	picked := map[string]bool{}
	v.release(0)
	for slot := range 2 {
		tgt, _ := v.pick(slot)
		picked[tgt.id] = true
	}
	if !picked["r1"] {
		t.Fatalf("picked %v once r1 was back in the lists, want r1 among them", picked)
	}
}

// However long the list, the agent considers its best
// maxRelayCandidates relays: a list of 256 never makes it dial more.
func TestCandidatesCapped(t *testing.T) {
	v := testView("acme/a1")
	var ids []string
	for i := range protocol.MaxRelays {
		ids = append(ids, fmt.Sprintf("r%d", i))
	}
	hear(v, "r0", relays(ids...))
	if n := len(v.cluster()); n != maxRelayCandidates {
		t.Fatalf("the view keeps %d relays, want %d", n, maxRelayCandidates)
	}
	dialled := map[string]bool{}
	for range 2 * protocol.MaxRelays {
		tgt, ok := v.pick(0)
		if !ok {
			break
		}
		dialled[tgt.id] = true
		v.failed(0, tgt)
	}
	if len(dialled) != maxRelayCandidates {
		t.Fatalf("the slot dialled %d distinct relays, want %d", len(dialled), maxRelayCandidates)
	}
}

// placement is where a fresh agent's k slots go with list known: the
// relays its slots pick one after another.
func placement(t *testing.T, seed string, list []protocol.RelayInfo, k int) (*relayView, map[string]bool) {
	v := testView(seed)
	hear(v, list[0].ID, list)
	held := map[string]bool{}
	for _, id := range connectAll(t, v, k) {
		held[id] = true
	}
	return v, held
}

// Rendezvous hashing over a fleet of 10 000 agents: every relay takes its
// share, and a fourth relay changes the placement of about a quarter of
// the slots, never more than one slot of an agent. A running agent that
// already holds K distinct live relays moves none when it joins.
func TestRendezvousSpread(t *testing.T) {
	const agents = 10000
	three, four := relays("r1", "r2", "r3"), relays("r1", "r2", "r3", "r4")
	for _, k := range []int{1, 2} {
		t.Run(fmt.Sprintf("K=%d", k), func(t *testing.T) {
			load := map[string]int{}
			moved, agentsMoved, runningMoves := 0, 0, 0
			for i := range agents {
				seed := fmt.Sprintf("tenant-%d/agent-%d", i%7, i)
				v, before := placement(t, seed, three, k)
				_, after := placement(t, seed, four, k)
				for id := range before {
					load[id]++
				}
				n := 0
				for id := range after {
					if !before[id] {
						n++
					}
				}
				if n > 1 {
					t.Fatalf("agent %s: %d slots move when r4 joins (%v → %v), want at most one", seed, n, before, after)
				}
				moved += n
				if n > 0 {
					agentsMoved++
				}
				// The running agent hears of r4.
				hear(v, "r1", four)
				for slot := range k {
					if _, _, _, ok := v.moveTarget(slot); ok {
						runningMoves++
					}
				}
			}
			want := float64(agents*k) / 3
			for id, n := range load {
				if math.Abs(float64(n)-want) > 0.05*want {
					t.Errorf("relay %s holds %d slots of %d agents, want %.0f ± 5%%", id, n, agents, want)
				}
			}
			frac := float64(moved) / float64(agents*k)
			t.Logf("K=%d: r4 joining changes the placement of %d of %d slots (%.3f), of %d agents (%.3f); running agents move %d", k, moved, agents*k, frac, agentsMoved, float64(agentsMoved)/agents, runningMoves)
			if math.Abs(frac-0.25) > 0.02 {
				t.Errorf("r4 joining changes the placement of %.3f of the slots, want 0.25 ± 0.02", frac)
			}
			if runningMoves != 0 {
				t.Errorf("running agents moved %d slots when r4 joined, want none: each holds %d distinct live relays", runningMoves, k)
			}
		})
	}
}

// The mark of a relay that said it is leaving is forgotten once its drain
// deadline (and the grace after it) passed: relays that leave the cluster
// for good, one after another (a deployment that gives each new relay a
// new id), do not leave a mark each for as long as the agent runs.
func TestLeavingMarksForgotten(t *testing.T) {
	v := testView("acme/a1")
	s := hear(v, "r0", relays("r0"))
	past := time.Now().Add(-leavingGrace - time.Second)
	const n = 200
	for i := range n {
		id := fmt.Sprintf("gone%d", i)
		v.setList(s, []protocol.RelayInfo{{ID: "r0", Addr: "10.0.0.1:7443"}, {ID: id, Addr: "10.0.1.1:7443"}})
		v.leavingRelay(id, past)
		v.setList(s, relays("r0")) // it left, and never comes back
	}
	v.mu.Lock()
	kept := len(v.leaving)
	v.mu.Unlock()
	if kept > 1 {
		t.Fatalf("the view keeps %d marks of relays that left %d times and whose drain deadlines passed, want at most 1", kept, n)
	}
	// A mark still in force stays, and is obeyed.
	hear(v, "r0", relays("r0", "r1"))
	v.leavingRelay("r1", time.Now().Add(time.Minute))
	if tgt, ok := v.pick(0); !ok || tgt.id != "r0" {
		t.Fatalf("picked %v (%v), want r0: r1 is leaving", tgt, ok)
	}
}
