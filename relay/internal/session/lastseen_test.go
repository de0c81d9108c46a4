package session

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// The periodic pass records every connected agent's last-heard time in one
// batch, and connect/disconnect marks are written with it.
func TestLastSeenBatch(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "tether.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := testServer()
	r.cfg.Store = st
	t0 := time.Now().Truncate(time.Second).Add(-time.Hour)
	if err := st.AddTenant(ctx, "acme", t0); err != nil {
		t.Fatal(err)
	}
	const n = 1500
	for i := range n {
		id := fmt.Sprintf("a%04d", i)
		if err := st.AddAgent(ctx, store.Agent{ID: id, Tenant: "acme", CreatedAt: t0}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 { // half connected, heard at t0+i seconds
			c := benchConn(r, "acme", id)
			c.lastHeard.Store(t0.Add(time.Duration(i) * time.Second).UnixNano())
			r.set.add(c)
		}
	}
	r.seen.mark("a0001", t0.Add(5*time.Second)) // a disconnect
	r.markConnected()
	r.writeLastSeen(ctx)
	if p := r.seen.take(); len(p) != 0 {
		t.Fatalf("%d marks left after a write", len(p))
	}
	agents, err := st.ListAgents(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range agents {
		var want time.Time
		switch {
		case i%2 == 0:
			want = t0.Add(time.Duration(i) * time.Second)
		case i == 1:
			want = t0.Add(5 * time.Second)
		}
		if !a.LastSeen.Equal(want) {
			t.Fatalf("agent %s: last seen %v, want %v", a.ID, a.LastSeen, want)
		}
	}
}
