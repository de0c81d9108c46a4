package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/internal/store"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopShared()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// A backlog of presence changes larger than one transaction's worth (a
// reconnect storm) is written whole, chunk by chunk, and so are the
// removals that follow.
func TestPresenceBacklogWrittenInChunks(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "relay.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := New(Config{Store: st, ID: "relay-1", Epoch: 1, Logger: slog.New(slog.DiscardHandler)})
	c.beat(ctx) // the relay's row: presence rows count only beside a live one

	const n = 2*presenceChunk + 17
	for i := range n {
		c.Present("acme", fmt.Sprintf("agent-%04d", i), 1+i%2)
	}
	c.flush(ctx)
	held, err := st.AgentRelays(ctx, "acme", c.DeadAfter())
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != n {
		t.Fatalf("%d agents held after the flush, want %d", len(held), n)
	}
	for i := range n {
		k := store.AgentKey{Tenant: "acme", Agent: fmt.Sprintf("agent-%04d", i)}
		if rs := held[k]; len(rs) != 1 || rs[0] != "relay-1" {
			t.Fatalf("%v held by %v, want relay-1", k, rs)
		}
	}
	c.mu.Lock()
	left := len(c.pending)
	c.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d presence changes still pending after a flush that succeeded", left)
	}

	for i := range n {
		c.Present("acme", fmt.Sprintf("agent-%04d", i), 0)
	}
	c.flush(ctx)
	if held, err = st.AgentRelays(ctx, "acme", c.DeadAfter()); err != nil || len(held) != 0 {
		t.Fatalf("after the agents left: %d held (%v), want none", len(held), err)
	}
}
