package relay

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/fulldisk"
	"github.com/tetherhq/tether/relay/internal/audit"
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

// A relay whose store and audit file both fail (a full disk) cannot audit
// what it does: it says it is not ready, so that a load balancer moves
// traffic to relays that can, until space returns.
func TestReadinessFullDisk(t *testing.T) {
	dir := fulldisk.Dir(t, "16m")
	if dir == "" {
		return
	}
	r, err := New(Config{DataDir: dir, AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	defer func() {
		stop()
		<-done
	}()
	deadline := time.Now().Add(5 * time.Second)
	for r.ready(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("serving relay not ready: %v", r.ready(ctx))
		}
		time.Sleep(10 * time.Millisecond)
	}
	free := fulldisk.Fill(t, dir)
	pad := strings.Repeat("x", 4096) // more than the audit file's last page holds
	for i := 0; r.audit.Unwritten() == 0; i++ {
		if i == 20 {
			t.Fatal("20 audit records on a full disk, and none in memory only")
		}
		r.audit.Add(audit.Record{Kind: audit.TenantAdd, Outcome: audit.OutcomeOK, Tenant: "acme", Detail: map[string]any{"pad": pad}})
	}
	if err := r.ready(ctx); !errors.Is(err, audit.ErrNotDurable) {
		t.Fatalf("ready on a full disk = %v, want audit.ErrNotDurable", err)
	}
	ops := r.metrics.Handler(r.ready)
	get := func(path string) (int, string) {
		w := httptest.NewRecorder()
		ops.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
		return w.Code, w.Body.String()
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "the audit trail cannot be written") {
		t.Errorf("/readyz on a full disk: %d %q, want 503 saying the audit trail cannot be written", code, body)
	}
	_, m := get("/metrics")
	for _, want := range []string{"tether_audit_unwritten " + strconv.Itoa(r.audit.Unwritten()), "tether_audit_file_errors_total ", `tether_audit_lost_total{kept_in="none"} 0`} {
		if !strings.Contains(m, "\n"+want) {
			t.Errorf("/metrics on a full disk has no %q", want)
		}
	}
	if strings.Contains(m, "\ntether_audit_file_errors_total 0\n") {
		t.Error("/metrics on a full disk: tether_audit_file_errors_total 0")
	}
	free()
	r.audit.Add(audit.Record{Kind: audit.TenantAdd, Outcome: audit.OutcomeOK, Tenant: "acme"})
	if err := r.ready(ctx); err != nil {
		t.Fatalf("ready once space returned: %v", err)
	}
	if code, body := get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz once space returned: %d %q", code, body)
	}
	if _, m := get("/metrics"); !strings.Contains(m, "\ntether_audit_unwritten 0\n") {
		t.Error("/metrics once space returned: tether_audit_unwritten is not 0")
	}
}
