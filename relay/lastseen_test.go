package relay

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/store"
)

// The periodic pass records every connected agent's last-heard time in one
// batch, and connect/disconnect marks are written with it.
func TestLastSeenBatch(t *testing.T) {
	r, err := New(Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	t0 := time.Now().Truncate(time.Second).Add(-time.Hour)
	if err := r.st.store.AddTenant(ctx, "acme", t0); err != nil {
		t.Fatal(err)
	}
	const n = 1500
	for i := range n {
		id := fmt.Sprintf("a%04d", i)
		if err := r.st.store.AddAgent(ctx, store.Agent{ID: id, Tenant: "acme", CreatedAt: t0}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 { // half connected, heard at t0+i seconds
			c := &agentConn{id: identity.Agent{Tenant: "acme", ID: id}}
			c.lastHeard.Store(t0.Add(time.Duration(i) * time.Second).UnixNano())
			r.reg.byTenant["acme"] = append(r.reg.byTenant["acme"], c)
		}
	}
	r.seen.mark("a0001", t0.Add(5*time.Second)) // a disconnect
	r.markConnected()
	r.writeLastSeen()
	if p := r.seen.take(); len(p) != 0 {
		t.Fatalf("%d marks left after a write", len(p))
	}
	agents, err := r.st.store.ListAgents(ctx, "acme")
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
