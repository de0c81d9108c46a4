package store

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

func TestRelaysAndPresence(t *testing.T) { eachEngine(t, testRelaysAndPresence) }

func testRelaysAndPresence(t *testing.T, e engine) {
	s, _ := e.open(t)
	const dead = 10 * time.Second
	beat := func(id string, epoch int64, draining bool) {
		t.Helper()
		if _, err := s.Heartbeat(ctx, Relay{ID: id, Epoch: epoch, AgentAddr: id + ":7443", PeerAddr: id + ":7444", Version: "1.0.0", StartedAt: t0, Draining: draining, Agents: 1}); err != nil {
			t.Fatal(err)
		}
	}
	// age sets a relay's heartbeat d in the past, by the database clock.
	age := func(id string, d time.Duration) {
		t.Helper()
		if _, err := s.db.ExecContext(ctx, `UPDATE relays SET heartbeat_ms = `+s.d.nowMillis()+` - $1 WHERE id = $2`, d.Milliseconds(), id); err != nil {
			t.Fatal(err)
		}
	}
	beat("r1", 100, false)
	beat("r2", 100, false)
	beat("r3", 100, true)
	rs, err := s.Relays(ctx)
	if err != nil || len(rs) != 3 {
		t.Fatalf("Relays = %+v, %v", rs, err)
	}
	for _, r := range rs {
		if !r.Alive(dead) || r.Age > 5*time.Second || r.PeerAddr != r.ID+":7444" || r.Draining != (r.ID == "r3") {
			t.Fatalf("relay row %+v", r)
		}
	}

	set := func(id string, epoch int64, ps ...Presence) {
		t.Helper()
		if err := s.SetPresence(ctx, id, epoch, ps); err != nil {
			t.Fatal(err)
		}
	}
	set("r1", 100, Presence{"acme", "a1", 2}, Presence{"acme", "a2", 1}, Presence{"globex", "g1", 1})
	set("r2", 100, Presence{"acme", "a1", 1})
	set("r3", 100, Presence{"acme", "a2", 1})
	holding := func(tenant string) []Holding {
		t.Helper()
		hs, err := s.TenantRelays(ctx, tenant, dead)
		if err != nil {
			t.Fatal(err)
		}
		return hs
	}
	want := []Holding{{"r1", 100, "r1:7444", false, 2}, {"r2", 100, "r2:7444", false, 1}, {"r3", 100, "r3:7444", true, 1}}
	if got := holding("acme"); !reflect.DeepEqual(got, want) {
		t.Fatalf("TenantRelays(acme) = %+v, want %+v", got, want)
	}
	ar, err := s.AgentRelays(ctx, "acme", dead)
	if err != nil || !reflect.DeepEqual(ar, map[AgentKey][]string{{"acme", "a1"}: {"r1", "r2"}, {"acme", "a2"}: {"r1", "r3"}}) {
		t.Fatalf("AgentRelays(acme) = %v, %v", ar, err)
	}
	if ar, _ := s.AgentRelays(ctx, "", dead); len(ar) != 3 {
		t.Fatalf("AgentRelays(all) = %v", ar)
	}

	// An agent leaving r1 takes its row away; a count change updates it.
	set("r1", 100, Presence{"acme", "a2", 0}, Presence{"acme", "a1", 1})
	if got := holding("acme"); got[0] != (Holding{"r1", 100, "r1:7444", false, 1}) {
		t.Fatalf("after a2 left r1: %+v", got)
	}

	// A dead relay's rows stop counting, with nobody deleting them.
	age("r2", 11*time.Second)
	if got := holding("acme"); len(got) != 2 || got[0].RelayID != "r1" || got[1].RelayID != "r3" {
		t.Fatalf("with r2 dead: %+v", got)
	}
	beat("r2", 100, false)

	// r1 restarts (a later epoch): its earlier run's rows stop counting
	// at once, and a stale process of the earlier run is fenced.
	beat("r1", 200, false)
	if got := holding("globex"); len(got) != 0 {
		t.Fatalf("a restarted relay's earlier rows count: %+v", got)
	}
	if _, err := s.Heartbeat(ctx, Relay{ID: "r1", Epoch: 100, StartedAt: t0}); !errors.Is(err, ErrFenced) {
		t.Fatalf("heartbeat of an earlier epoch: %v, want ErrFenced", err)
	}
	set("r1", 100, Presence{"globex", "g2", 1}) // the stale process writes on
	if got := holding("globex"); len(got) != 0 {
		t.Fatalf("a stale run's rows count: %+v", got)
	}
	set("r1", 200, Presence{"globex", "g1", 1})
	if got := holding("globex"); len(got) != 1 || got[0].RelayID != "r1" {
		t.Fatalf("after r1's new run wrote: %+v", got)
	}
	// The fenced process of the earlier run stops and leaves: the new
	// run's row and presence are not its to take away.
	if err := s.LeaveCluster(ctx, "r1", 100); err != nil {
		t.Fatal(err)
	}
	if got := holding("globex"); len(got) != 1 || got[0].RelayID != "r1" || got[0].Epoch != 200 {
		t.Fatalf("after r1's fenced earlier run left: %+v, want r1's run 200 still holding g1", got)
	}
	if err := s.LeaveCluster(ctx, "r1", 200); err != nil {
		t.Fatal(err)
	}
	if got := holding("globex"); len(got) != 0 {
		t.Fatalf("after r1's run 200 left: %+v, want none", got)
	}
	set("r1", 200, Presence{"globex", "g1", 1})
	beat("r1", 200, false)
	if err := s.ClearPresence(ctx, "r1", 200); err != nil {
		t.Fatal(err)
	}
	var n int
	s.db.QueryRowContext(ctx, `SELECT count(*) FROM presence WHERE relay_id = 'r1' AND epoch <> 200`).Scan(&n)
	if n != 0 {
		t.Fatalf("%d rows of r1's earlier run left after ClearPresence", n)
	}

	// Pruning removes rows that no longer count and long-dead relays.
	age("r3", 2*time.Hour)
	if err := s.PruneRelays(ctx, time.Hour, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	s.db.QueryRowContext(ctx, `SELECT count(*) FROM presence WHERE relay_id = 'r3'`).Scan(&n)
	if n != 0 {
		t.Fatalf("%d presence rows of a relay dead for 2 h after pruning", n)
	}
	if rs, _ := s.Relays(ctx); len(rs) != 3 {
		t.Fatalf("a relay dead for 2 h was removed: %+v", rs)
	}
	age("r3", 48*time.Hour)
	if err := s.PruneRelays(ctx, time.Hour, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	if rs, _ := s.Relays(ctx); len(rs) != 2 {
		t.Fatalf("a relay dead for 2 days was kept: %+v", rs)
	}
	if err := s.RemoveRelay(ctx, "r2"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveRelay(ctx, "r2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removing a removed relay: %v", err)
	}
}

func TestClaimAgentUpdate(t *testing.T) { eachEngine(t, testClaimAgentUpdate) }

func testClaimAgentUpdate(t *testing.T, e engine) {
	s, _ := e.open(t)
	now := t0.Add(time.Hour)
	u := AgentUpdate{Agent: "a1", Tenant: "acme", Version: "1.1.0", Rollout: 1, State: "offered", UpdatedAt: now}
	claim := func(at time.Time) bool {
		t.Helper()
		u.UpdatedAt = at
		ok, err := s.ClaimAgentUpdate(ctx, u, at.Add(-15*time.Minute), at.Add(-30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !claim(now) {
		t.Fatal("the first offer was not claimed")
	}
	if claim(now.Add(time.Second)) {
		t.Fatal("a second offer a second later was claimed (two relays would both offer)")
	}
	if !claim(now.Add(time.Minute)) {
		t.Fatal("an offer unanswered for a minute could not be offered again")
	}
	if err := s.SetAgentUpdate(ctx, AgentUpdate{Agent: "a1", Tenant: "acme", Version: "1.1.0", Rollout: 1, State: "downloading", UpdatedAt: now.Add(2 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if claim(now.Add(10 * time.Minute)) {
		t.Fatal("an offer was claimed while the agent downloads")
	}
	if !claim(now.Add(20 * time.Minute)) {
		t.Fatal("a download stale for 18 minutes kept the agent from another offer")
	}
	if err := s.SetAgentUpdate(ctx, AgentUpdate{Agent: "a1", Tenant: "acme", Version: "1.1.0", Rollout: 1, State: "refused", Reason: "busy", UpdatedAt: now.Add(21 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if !claim(now.Add(21*time.Minute + time.Second)) {
		t.Fatal("an agent that refused for being busy could not be offered again")
	}
}

// TestJoinClusterEpoch: a run's epoch is the relay's proposal (its start
// on its own clock), or one more than the last run's when the proposal is
// not above it, so that a relay restarted on a clock that went back (an
// NTP step, a VM restored) joins rather than being fenced by its own
// earlier run; and a run that joined fences any earlier one still
// heartbeating, whatever their clocks.
func TestJoinClusterEpoch(t *testing.T) { eachEngine(t, testJoinClusterEpoch) }

func testJoinClusterEpoch(t *testing.T, e engine) {
	s, _ := e.open(t)
	join := func(proposed int64) int64 {
		t.Helper()
		epoch, err := s.JoinCluster(ctx, Relay{ID: "relay-1", Epoch: proposed, StartedAt: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		return epoch
	}
	beat := func(epoch int64) error {
		_, err := s.Heartbeat(ctx, Relay{ID: "relay-1", Epoch: epoch, StartedAt: time.Now()})
		return err
	}
	now := time.Now().UnixNano()
	first := join(now)
	if first != now {
		t.Fatalf("first run's epoch %d, want its proposal %d", first, now)
	}
	if err := beat(first); err != nil {
		t.Fatal(err)
	}
	if err := s.LeaveCluster(ctx, "relay-1", first); err != nil { // a clean stop
		t.Fatal(err)
	}
	// Restarted on a host whose clock is 30 s behind.
	second := join(now - int64(30*time.Second))
	if second <= first {
		t.Fatalf("a run started on a clock 30 s behind got epoch %d, not above the earlier run's %d", second, first)
	}
	if err := beat(second); err != nil {
		t.Fatalf("the restarted relay (no other process under its id) heartbeats: %v", err)
	}
	// The earlier run, still heartbeating (two processes under one id):
	// fenced.
	if err := beat(first); !errors.Is(err, ErrFenced) {
		t.Fatalf("an earlier run's heartbeat after a later run joined: %v, want ErrFenced", err)
	}
	// A third run joins while the second runs, its clock a minute behind:
	// it takes the row, and the second is fenced.
	third := join(now - int64(time.Minute))
	if third <= second {
		t.Fatalf("third run's epoch %d, not above the second's %d", third, second)
	}
	if err := beat(second); !errors.Is(err, ErrFenced) {
		t.Fatalf("the second run's heartbeat after the third joined: %v, want ErrFenced", err)
	}
	if err := beat(third); err != nil {
		t.Fatal(err)
	}
	rs, err := s.Relays(ctx)
	if err != nil || len(rs) != 1 || rs[0].Epoch != third || !rs[0].Alive(10*time.Second) {
		t.Fatalf("relays %+v, %v; want relay-1 alive at epoch %d", rs, err, third)
	}
	// A proposal above the row's epoch is taken as it is.
	if later := time.Now().Add(time.Hour).UnixNano(); join(later) != later {
		t.Fatal("a proposal above the last epoch was not taken")
	}
	// Runs joining at once get epochs of their own.
	const n = 8
	epochs := make(chan int64, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			epoch, err := s.JoinCluster(ctx, Relay{ID: "relay-2", Epoch: 1, StartedAt: time.Now()})
			epochs <- epoch
			errs <- err
		}()
	}
	seen := map[int64]bool{}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		seen[<-epochs] = true
	}
	if len(seen) != n {
		t.Fatalf("%d runs joining at once got %d epochs: %v", n, len(seen), seen)
	}
}

// TestHeartbeatCreated: Heartbeat tells a run when its row was gone and
// written anew (removed by an operator, lost in a failover), so that the
// relay writes its presence rows again; SetPresence writes many agents
// at once, the last of an agent named twice counting.
func TestHeartbeatCreated(t *testing.T) { eachEngine(t, testHeartbeatCreated) }

func testHeartbeatCreated(t *testing.T, e engine) {
	s, _ := e.open(t)
	beat := func(epoch int64) bool {
		t.Helper()
		created, err := s.Heartbeat(ctx, Relay{ID: "relay-1", Epoch: epoch, StartedAt: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		return created
	}
	epoch, err := s.JoinCluster(ctx, Relay{ID: "relay-1", Epoch: 100, StartedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if beat(epoch) {
		t.Fatal("a heartbeat of the run that holds the row says it created it")
	}
	var ps []Presence
	for i := range 1234 {
		ps = append(ps, Presence{Tenant: "acme", Agent: fmt.Sprintf("a%04d", i), Sessions: 1 + i%3})
	}
	ps = append(ps, Presence{Tenant: "acme", Agent: "a0000", Sessions: 0}, Presence{Tenant: "acme", Agent: "a0001", Sessions: 7})
	if err := s.SetPresence(ctx, "relay-1", epoch, ps); err != nil {
		t.Fatal(err)
	}
	held, err := s.AgentRelays(ctx, "acme", 10*time.Second)
	if err != nil || len(held) != 1233 || held[AgentKey{"acme", "a0000"}] != nil {
		t.Fatalf("%d agents held (%v), want 1233 without a0000", len(held), err)
	}
	var sessions int
	s.db.QueryRowContext(ctx, `SELECT sessions FROM presence WHERE agent = 'a0001'`).Scan(&sessions)
	if sessions != 7 {
		t.Fatalf("a0001 has %d sessions, want the last given (7)", sessions)
	}
	if err := s.RemoveRelay(ctx, "relay-1"); err != nil {
		t.Fatal(err)
	}
	if !beat(epoch) {
		t.Fatal("the heartbeat after the relay's row was removed does not say it wrote the row anew")
	}
	if beat(epoch) {
		t.Fatal("the heartbeat after that says it created the row again")
	}
	// A later run (by a heartbeat of a later epoch) takes the row: its
	// presence rows are to be written too.
	if !beat(epoch + 1) {
		t.Fatal("a heartbeat that took the row from an earlier run does not say so")
	}
	if _, err := s.Heartbeat(ctx, Relay{ID: "relay-1", Epoch: epoch, StartedAt: time.Now()}); !errors.Is(err, ErrFenced) {
		t.Fatalf("the earlier run's heartbeat: %v, want ErrFenced", err)
	}
}

// TestRestorePresence: RestorePresence writes the rows that are missing
// and leaves those there as they are.
func TestRestorePresence(t *testing.T) { eachEngine(t, testRestorePresence) }

func testRestorePresence(t *testing.T, e engine) {
	s, _ := e.open(t)
	epoch, err := s.JoinCluster(ctx, Relay{ID: "relay-1", Epoch: 100, StartedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetPresence(ctx, "relay-1", epoch, []Presence{{"acme", "a1", 2}}); err != nil {
		t.Fatal(err)
	}
	var ps []Presence
	for i := range 700 {
		ps = append(ps, Presence{Tenant: "acme", Agent: fmt.Sprintf("a%d", i), Sessions: 5})
	}
	ps = append(ps, Presence{"acme", "left", 0}, Presence{"acme", "a2", 6})
	if err := s.RestorePresence(ctx, "relay-1", epoch, ps); err != nil {
		t.Fatal(err)
	}
	held, err := s.AgentRelays(ctx, "acme", 10*time.Second)
	if err != nil || len(held) != 700 || held[AgentKey{"acme", "left"}] != nil {
		t.Fatalf("%d agents held (%v), want 700, without the one with no session", len(held), err)
	}
	got := map[string]int{}
	rows, err := s.db.QueryContext(ctx, `SELECT agent, sessions FROM presence WHERE agent IN ('a1', 'a2')`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var agent string
		var n int
		rows.Scan(&agent, &n)
		got[agent] = n
	}
	if got["a1"] != 2 || got["a2"] != 6 {
		t.Fatalf("sessions %v: want a1's row left as it was (2), a2's written as last given (6)", got)
	}
}
