package cluster

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// holdsWithin waits up to 10 s for the store to count agent a1 of acme as
// held by relay-1 (want) or not (!want), and reports whether it did.
func holdsWithin(t *testing.T, st *store.Store, want bool) bool {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		held, err := st.AgentRelays(context.Background(), "acme", DefaultDeadAfter)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(held[store.AgentKey{Tenant: "acme", Agent: "a1"}], "relay-1") == want {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPresenceBackAfterRemove: an operator removes a running relay
// ("relay remove", which deletes its row and its presence rows). Its row
// comes back at its next heartbeat, and now so does the presence of the
// agents it holds; they stayed gone, and the other relays never forwarded
// to those agents, until each agent's sessions changed.
func TestPresenceBackAfterRemove(t *testing.T) {
	eachEngine(t, func(t *testing.T, open func() *store.Store) {
		st := open()
		r := start(t, st, time.Now().UnixNano())
		r.c.Present("acme", "a1", 1)
		if !holdsWithin(t, st, true) {
			t.Fatal("relay-1's agent a1 not in the store within 10 s")
		}
		if err := st.RemoveRelay(context.Background(), "relay-1"); err != nil {
			t.Fatal(err)
		}
		if !holdsWithin(t, st, true) {
			rs, _ := st.Relays(context.Background())
			t.Fatalf("relay-1 was removed while running: its row is back (%+v), but a1, still connected to it, is not held by it in the store 10 s later", rs)
		}
	})
}

// TestPresenceRewritten: presence rows lost while the relay's row stays
// (a failover to a replica that lacked the newest writes) are written
// again within presenceRewrite heartbeats.
func TestPresenceRewritten(t *testing.T) {
	defer func(n int) { presenceRewrite = n }(presenceRewrite)
	presenceRewrite = 5
	eachEngine(t, func(t *testing.T, open func() *store.Store) {
		st := open()
		r := start(t, st, time.Now().UnixNano())
		r.c.Present("acme", "a1", 2)
		r.c.Present("acme", "gone", 1)
		r.c.Present("acme", "gone", 0)
		if !holdsWithin(t, st, true) {
			t.Fatal("relay-1's agent a1 not in the store within 10 s")
		}
		if err := st.ClearPresence(context.Background(), "relay-1", 0); err != nil { // every epoch's rows
			t.Fatal(err)
		}
		if !holdsWithin(t, st, true) {
			t.Fatalf("relay-1's presence rows were lost; a1 not written again within 10 s (every %d heartbeats of 20 ms)", presenceRewrite)
		}
		held, err := st.AgentRelays(context.Background(), "acme", DefaultDeadAfter)
		if err != nil || len(held) != 1 {
			t.Fatalf("held after the rewrite: %v, %v; want a1 only (the agent that left is not written back)", held, err)
		}
		// An agent that leaves is not brought back by a later rewrite.
		r.c.Present("acme", "a1", 0)
		if !holdsWithin(t, st, false) {
			t.Fatal("a1 left relay-1, and is still held by it 10 s later")
		}
	})
}

// presentAgents is the agents of relay-1's presence rows of epoch.
func presentAgents(t *testing.T, st *store.Store, epoch int64) []string {
	t.Helper()
	ks, err := st.PresentAgents(context.Background(), "relay-1", epoch)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range ks {
		out = append(out, k.Agent)
	}
	return out
}

// TestPresenceStaleRowsDeleted: a presence row of the relay's run for an
// agent it does not hold (its deletion lost in a failover to a replica)
// is deleted by the periodic rewrite; the other relays forwarded that
// agent's streams to it otherwise, for as long as the run lasted. The
// rows of the agents it holds stay.
func TestPresenceStaleRowsDeleted(t *testing.T) {
	defer func(n int) { presenceRewrite = n }(presenceRewrite)
	presenceRewrite = 5
	eachEngine(t, func(t *testing.T, open func() *store.Store) {
		st := open()
		r := start(t, st, time.Now().UnixNano())
		r.c.Present("acme", "a1", 1)
		if !holdsWithin(t, st, true) {
			t.Fatal("relay-1's agent a1 not in the store within 10 s")
		}
		// The row of an agent that left, as a replica lacking its
		// deletion has it.
		if err := st.SetPresence(context.Background(), "relay-1", r.c.Epoch(), []store.Presence{{Tenant: "acme", Agent: "ghost", Sessions: 1}}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := presentAgents(t, st, r.c.Epoch())
			if slices.Equal(got, []string{"a1"}) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("relay-1's presence rows 10 s after a row of an agent it does not hold was written (rewrite every %d heartbeats of 20 ms): %v, want [a1]", presenceRewrite, got)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// TestPresenceRewriteKeepsConnecting: the rewrite does not delete the row
// of an agent whose connect is in flight (its change not yet written):
// only the rows of agents neither held nor pending go.
func TestPresenceRewriteKeepsConnecting(t *testing.T) {
	eachEngine(t, func(t *testing.T, open func() *store.Store) {
		ctx := context.Background()
		st := open()
		c := New(Config{Store: st, ID: "relay-1", Epoch: 1, Logger: slog.New(slog.DiscardHandler)})
		c.beat(ctx)
		rows := []store.Presence{{Tenant: "acme", Agent: "a1", Sessions: 1}, {Tenant: "acme", Agent: "b1", Sessions: 1}, {Tenant: "acme", Agent: "ghost", Sessions: 1}}
		if err := st.SetPresence(ctx, "relay-1", c.Epoch(), rows); err != nil {
			t.Fatal(err)
		}
		c.Present("acme", "a1", 1)
		c.flush(ctx)
		c.Present("acme", "b1", 1) // connecting: pending, not flushed
		c.restore(ctx)
		if got, want := presentAgents(t, st, c.Epoch()), []string{"a1", "b1"}; !slices.Equal(got, want) {
			t.Fatalf("presence rows after the rewrite: %v, want %v", got, want)
		}
		c.Present("acme", "b1", 0) // left again before its row was written
		c.restore(ctx)
		c.flush(ctx)
		if got, want := presentAgents(t, st, c.Epoch()), []string{"a1"}; !slices.Equal(got, want) {
			t.Fatalf("presence rows after b1 left: %v, want %v", got, want)
		}
	})
}
