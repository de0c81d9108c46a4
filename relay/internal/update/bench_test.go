package update

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/store"
)

// BenchmarkRolloutTick is a tick of the rollout loop (no agent connected
// here) while a rollout of a version with 10 000 agents' update states is
// active, 10 of which changed since the tick before.
func BenchmarkRolloutTick(b *testing.B) {
	ctx := context.Background()
	u, dir := newTestRollouts(b, nil)
	rid := publish(b, dir.Store, "2.0.0", store.Rollout{})
	const n, changed = 10000, 10
	set := func(i int, state string) {
		if err := dir.Store.SetAgentUpdate(ctx, store.AgentUpdate{Agent: fmt.Sprintf("ag%05d", i), Tenant: "acme", Version: "2.0.0", Rollout: rid,
			State: state, From: "1.0.0", UpdatedAt: time.Now()}); err != nil {
			b.Fatal(err)
		}
	}
	for i := range n {
		set(i, protocol.UpdateOffered)
	}
	if err := u.offerAll(ctx); err != nil {
		b.Fatal(err)
	}
	states := []string{protocol.UpdateDownloading, protocol.UpdateDownloaded, protocol.UpdateApplied, protocol.UpdateSucceeded}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		for j := range changed {
			set((i*changed+j)%n, states[i%len(states)])
		}
		b.StartTimer()
		if err := u.offerAll(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
