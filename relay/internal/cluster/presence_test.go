package cluster

import (
	"context"
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
