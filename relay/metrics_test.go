package relay

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestReadiness(t *testing.T) {
	r, err := New(Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := r.ready(ctx); err == nil || !strings.Contains(err.Error(), "not accepting") {
		t.Fatalf("before Run: ready = %v, want not accepting", err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	deadline := time.Now().Add(5 * time.Second)
	for r.ready(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("serving relay not ready: %v", r.ready(ctx))
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := r.ready(ctx); err == nil {
		t.Fatal("stopped relay says it is ready")
	}
}
