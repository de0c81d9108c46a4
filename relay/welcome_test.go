package relay

import (
	"context"
	"testing"
	"time"
)

// TestAgentListedOnceWelcomed: the moment an agent holds its welcome,
// the relay lists its session and routes streams to it. The session used
// to join the relay's set just after the welcome was written, so a
// backend's stream opened as the agent read it could be refused no_agent
// (a cluster test hit that under load).
func TestAgentListedOnceWelcomed(t *testing.T) {
	r := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: "127.0.0.1:0"})
	ctx := context.Background()
	if err := r.adm.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	a := newTestAgent(t, r, "a1")
	listed := func(id string) bool {
		for _, l := range r.LiveAgents("acme") {
			if l.SessionID == id {
				return true
			}
		}
		return false
	}
	for i := range 50 {
		s, err := a.connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !listed(s.id) {
			t.Fatalf("connection %d: welcomed as session %s, which the relay does not list", i, s.id)
		}
		s.close()
		for deadline := time.Now().Add(10 * time.Second); listed(s.id); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("connection %d: session %s still listed 10 s after it closed", i, s.id)
			}
		}
	}
}
