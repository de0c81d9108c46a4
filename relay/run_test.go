package relay

import (
	"context"
	"testing"
	"time"
)

// Run returns at shutdown with every listener on: no listener goroutine
// may be left blocked reporting how it ended (with the TLS CONNECT door,
// one more listener than the report channel once held did exactly that).
func TestRunReturnsWithEveryListener(t *testing.T) {
	r, err := New(Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: "127.0.0.1:0", ConnectListen: "127.0.0.1:0",
		ConnectTLSListen: "127.0.0.1:0", MetricsListen: "127.0.0.1:0", DebugListen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", DrainTimeout: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	for deadline := time.Now().Add(5 * time.Second); !r.serving.Load(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("relay never started serving")
		}
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after its context was cancelled")
	}
}
