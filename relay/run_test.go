package relay

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
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

// A relay that cannot read the tenants' limits at start does not start:
// it would serve every tenant without them (allowed networks, stream and
// rate caps) until the next change to any tenant's limits.
func TestNewRefusesWithoutLimits(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: "127.0.0.1:0"}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "tether.db"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = db.Exec(`ALTER TABLE tenant_limits RENAME TO tenant_limits_gone`)
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	r, err = New(cfg)
	if err == nil {
		r.Close()
		t.Fatal("the relay started without reading the tenants' limits")
	}
	if !strings.Contains(err.Error(), "tenant limits") {
		t.Fatalf("New: %v, want it to say the tenant limits could not be read", err)
	}
}
