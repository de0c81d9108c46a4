package frontdoor

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/credential"
	"github.com/tetherhq/tether/relay/internal/store"
)

// With the backends' credentials in memory (LoadBackends), a source
// throttled for failed attempts costs the store nothing, whatever names
// it tries, and every registered backend's valid key still works from
// it, one never used through this relay included. A backend the change
// feed tells of (Forget) is read even from a throttled source.
func TestAuthenticateFromThrottledSource(t *testing.T) {
	fd := benchDoors(t)
	ctx := context.Background()
	now := time.Now()
	if err := fd.cfg.Store.AddTenant(ctx, "acme", now); err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	add := func(name string) {
		t.Helper()
		keys[name] = credential.NewAPIKey()
		if err := fd.cfg.Store.AddBackend(ctx, store.Backend{Name: name, KeyHash: credential.Hash(keys[name]), Grants: []store.Grant{{Tenant: "acme", Service: store.Any}}, CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	add("billing")
	add("ledger")
	if err := fd.LoadBackends(ctx); err != nil {
		t.Fatal(err)
	}
	reads := func() uint64 {
		var m dto.Metric
		fd.cfg.Metrics.StoreDuration.WithLabelValues("backend_lookup").(prometheus.Histogram).Write(&m)
		return m.GetHistogram().GetSampleCount()
	}
	// try authenticates as a door does: the refusal counted against the
	// source.
	const src = "192.0.2.7:4000"
	try := func(name, key string) error {
		_, err := fd.authenticate(ctx, src, name, key)
		return fd.guard.refused(src, reasonBadKey, name, err)
	}
	r0 := reads()
	for i := range 50 {
		err := try(fmt.Sprintf("guess-%d", i), "tbk1_wrong")
		if want := protocol.CodeUnauthenticated; i >= 10 {
			want = protocol.CodeRateLimited
			if protocol.CodeOf(err) != want {
				t.Fatalf("guess %d: %v; want %s", i+1, err, want)
			}
		}
	}
	if n := reads() - r0; n > 10 {
		t.Errorf("50 unknown names from one source: %d store reads, want at most its 10 failures", n)
	}
	r0 = reads()
	for _, name := range []string{"billing", "ledger"} {
		if c, err := fd.authenticate(ctx, src, name, keys[name]); err != nil || c.name != name {
			t.Errorf("%s's valid key from the throttled source: %+v, %v; want it authenticated", name, c, err)
		}
	}
	if err := try("ledger", "tbk1_wrong"); !errors.Is(err, protocol.ErrRateLimited) {
		t.Errorf("a wrong key for ledger from the throttled source: %v; want rate_limited", err)
	}
	if n := reads() - r0; n != 0 {
		t.Errorf("registered backends from the throttled source: %d store reads, want none (held in memory)", n)
	}
	// Added while the relay runs: known once the feed tells.
	add("payroll")
	if _, err := fd.authenticate(ctx, src, "payroll", keys["payroll"]); err == nil {
		t.Fatal("payroll before the feed told of it, from the throttled source: authenticated without a store read?")
	}
	fd.Forget("payroll")
	if c, err := fd.authenticate(ctx, src, "payroll", keys["payroll"]); err != nil || c.name != "payroll" {
		t.Errorf("payroll once the feed told of it, from the throttled source: %+v, %v; want it authenticated", c, err)
	}
}
