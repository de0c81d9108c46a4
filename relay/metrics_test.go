package relay

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
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

func TestStreamMetricLabels(t *testing.T) {
	for code, want := range map[protocol.Code][2]bool{
		protocol.CodeOK:                {true, true},
		protocol.CodeTargetUnreachable: {true, true},
		protocol.CodeUnknownService:    {true, false},
		protocol.CodeNoAgent:           {true, false},
		protocol.CodeNotAllowed:        {false, false}, // the tenant may not exist
		protocol.CodeUnknownTenant:     {false, false},
		protocol.CodeUnauthenticated:   {false, false},
		protocol.CodeBadRequest:        {false, false},
	} {
		if got := [2]bool{tenantVerified(code), serviceVerified(code)}; got != want {
			t.Errorf("%v: tenant, service labelled = %v, want %v", code, got, want)
		}
	}
}
