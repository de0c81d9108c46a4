package update

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/store"
)

// testClock is a clock the test moves.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Each tick of the rollout loop reads the agents' update states of the
// active version that changed since the last tick, not the version's
// every row: rows written by another relay of the cluster (another store
// handle on the database) included, and all of them every minute. The
// decisions are those of the whole table: a rollout halts when the
// failures another relay recorded reach its bound.
func TestRolloutTicksReadWhatChanged(t *testing.T) {
	ctx := context.Background()
	a1 := &fakeAgent{id: "a1"}
	u, dir := newTestRollouts(t, []Agent{a1})
	clock := &testClock{t: time.Now()}
	u.cfg.Now = clock.now
	other, err := store.Open(ctx, dir.File("tether.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	rid := publish(t, dir.Store, "2.0.0", store.Rollout{HaltAt: 0.5})
	const n = 300
	set := func(st *store.Store, i int, state string) {
		t.Helper()
		if err := st.SetAgentUpdate(ctx, store.AgentUpdate{Agent: fmt.Sprintf("s%03d", i), Tenant: "acme", Version: "2.0.0", Rollout: rid,
			State: state, Reason: "apply", UpdatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		set(dir.Store, i, protocol.UpdateSucceeded)
	}
	tick := func(wantRead int, wantFull bool) {
		t.Helper()
		if err := u.offerAll(ctx); err != nil {
			t.Fatal(err)
		}
		u.sends.Wait()
		if u.states.read != wantRead || u.states.full != wantFull {
			t.Fatalf("a tick read %d rows (whole: %v), want %d (whole: %v)", u.states.read, u.states.full, wantRead, wantFull)
		}
	}
	// What the ticks kept is what the store holds.
	same := func() {
		t.Helper()
		whole, err := dir.Store.AgentUpdates(ctx, "2.0.0")
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]store.AgentUpdate{}
		for _, s := range whole {
			want[s.Agent] = s
		}
		if !maps.Equal(u.states.rows, want) {
			t.Fatalf("the ticks kept %d rows, the store has %d (or they differ)", len(u.states.rows), len(want))
		}
	}

	tick(n, true) // the first reads the version whole
	if a1.offers.Load() != 1 {
		t.Fatalf("a1 was offered 2.0.0 %d times, want 1", a1.offers.Load())
	}
	tick(1, false) // a1's offer, recorded by the tick before
	tick(0, false)
	same()

	// Another relay records 150 failures: 150 of the 301 agents offered,
	// below the rollout's halt at 50%.
	for i := range 150 {
		set(other, i, protocol.UpdateFailed)
	}
	tick(150, false)
	same()
	if ro, err := dir.Store.ActiveRollout(ctx); err != nil || ro.ID != rid {
		t.Fatalf("the rollout halted at 150 failures of 301: %+v, %v", ro, err)
	}
	// A minute after the last whole read, a tick reads whole again.
	clock.add(fullReadEvery)
	tick(n+1, true)
	tick(0, false)

	// One more failure, recorded by the other relay: the tick sees it,
	// and halts the rollout.
	set(other, 150, protocol.UpdateFailed)
	tick(1, false)
	rs, err := dir.Store.Rollouts(ctx, false)
	if err != nil || len(rs) != 1 || rs[0].State != store.RolloutHalted {
		t.Fatalf("rollouts after 151 failures of 301 at a halt of 50%%: %+v, %v; want it halted", rs, err)
	}
	t.Logf("halted: %s", rs[0].Reason)
	// With no rollout active, the states are not kept.
	tick(0, false)
	if u.states.rows != nil {
		t.Errorf("%d agents' update states kept with no rollout active", len(u.states.rows))
	}
}
