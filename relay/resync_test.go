package relay

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// TestResyncRevocationFromClockBehind: a revocation written, while the
// relay runs, by a host whose clock is two minutes behind the relay's
// (an admin command elsewhere, another relay) is dated before the relay
// started; a resync (after the feed was pruned past the relay, or went
// back, or its notices were interrupted) still applies it. It read
// revocations from a second before the relay's start only, by the
// relay's own clock.
func TestResyncRevocationFromClockBehind(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	// Polling off: on SQLite the relay reads another process's change
	// only when it polls, so only the resync below can apply it.
	r := runRelay(t, Config{DataDir: dir, AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off,
		DisableQUIC: true, DrainTimeout: time.Millisecond, ChangePoll: time.Hour})
	other, err := store.Open(ctx, filepath.Join(dir, "tether.db")) // an admin command's
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	behind := r.started.Add(-2 * time.Minute)
	if err := other.AddTenant(ctx, "acme", behind); err != nil {
		t.Fatal(err)
	}
	if err := other.AddAgent(ctx, store.Agent{ID: "a1", Tenant: "acme", CreatedAt: behind}); err != nil {
		t.Fatal(err)
	}
	if _, err := other.RevokeAgent(ctx, "a1", "lost laptop", behind.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := r.resync(ctx); err != nil {
		t.Fatal(err)
	}
	if r.pol.Revoked("a1") == nil {
		t.Fatal("a revocation written while the relay ran, dated by a clock 2 minutes behind the relay's, was not applied by a resync")
	}
}
