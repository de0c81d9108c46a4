package admin

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func ptr[T any](v T) *T { return &v }

// TestPatchLimitsKeepsTheOthers: a patch changes the limits it names and
// keeps the others (the tenant's networks above all); SetLimits still
// replaces them all; the audit record carries the result and what
// changed.
func TestPatchLimitsKeepsTheOthers(t *testing.T) {
	ctx := context.Background()
	a, err := Open(ctx, Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if err := a.SetLimits(ctx, Limits{Tenant: "acme", MaxAgents: 3, MaxStreams: 10, OpenRate: 2, OpenBurst: 4, CIDRs: []string{"10.0.0.0/8"}}); err != nil {
		t.Fatal(err)
	}

	got, err := a.PatchLimits(ctx, "acme", LimitsPatch{MaxStreams: ptr(5)})
	if err != nil {
		t.Fatal(err)
	}
	want := Limits{Tenant: "acme", MaxAgents: 3, MaxStreams: 5, OpenRate: 2, OpenBurst: 4, CIDRs: []string{"10.0.0.0/8"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("after patching max_streams: got %+v, want %+v", got, want)
	}
	if stored, err := a.Limits(ctx, "acme"); err != nil || !reflect.DeepEqual(stored, want) {
		t.Fatalf("stored limits: got %+v (%v), want %+v", stored, err, want)
	}

	// An empty list of networks is a change (any network), not "keep".
	got, err = a.PatchLimits(ctx, "acme", LimitsPatch{CIDRs: &[]string{}, OpenRate: ptr(0.5)})
	if err != nil {
		t.Fatal(err)
	}
	if got.MaxAgents != 3 || got.MaxStreams != 5 || got.OpenRate != 0.5 || got.OpenBurst != 4 || len(got.CIDRs) != 0 {
		t.Fatalf("after patching cidrs and open_rate: got %+v", got)
	}

	recs, err := a.Audit(ctx, AuditFilter{Kind: "tenant.limits"})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 {
		t.Fatalf("got %d tenant.limits records, want 3 (set, patch, patch)", len(recs))
	}
	d := recs[1].Detail
	if d["max_agents"] != float64(3) || d["max_streams"] != float64(5) || !reflect.DeepEqual(d["cidrs"], []any{"10.0.0.0/8"}) ||
		!reflect.DeepEqual(d["changed"], []any{"max_streams"}) {
		t.Fatalf("patch audit detail: got %v, want the resulting limits and changed [max_streams]", d)
	}
	if _, ok := recs[0].Detail["changed"]; ok {
		t.Fatalf("a replacement's audit detail names changed fields: %v", recs[0].Detail)
	}

	// The bandwidth is patched like the others, and kept by patches of others.
	if got, err = a.PatchLimits(ctx, "acme", LimitsPatch{Bandwidth: ptr(int64(10 << 20))}); err != nil || got.Bandwidth != 10<<20 || got.MaxStreams != 5 {
		t.Fatalf("after patching bandwidth: got %+v, %v", got, err)
	}
	if got, err = a.PatchLimits(ctx, "acme", LimitsPatch{MaxStreams: ptr(6)}); err != nil || got.Bandwidth != 10<<20 {
		t.Fatalf("a patch of max_streams changed the bandwidth: got %+v, %v", got, err)
	}

	// SetLimits replaces: what it leaves zero becomes unlimited.
	if err := a.SetLimits(ctx, Limits{Tenant: "acme", MaxStreams: 7}); err != nil {
		t.Fatal(err)
	}
	if l, _ := a.Limits(ctx, "acme"); l.MaxAgents != 0 || l.MaxStreams != 7 || l.OpenBurst != 0 || l.Bandwidth != 0 {
		t.Fatalf("after SetLimits: got %+v, want max_streams 7 alone", l)
	}

	for _, tc := range []struct {
		name   string
		tenant string
		patch  LimitsPatch
		class  error
	}{
		{"nothing to change", "acme", LimitsPatch{}, ErrInvalid},
		{"negative", "acme", LimitsPatch{MaxAgents: ptr(-1)}, ErrInvalid},
		{"negative bandwidth", "acme", LimitsPatch{Bandwidth: ptr(int64(-1))}, ErrInvalid},
		{"bad network", "acme", LimitsPatch{CIDRs: &[]string{"not-a-net"}}, ErrInvalid},
		{"unknown tenant", "nope", LimitsPatch{MaxAgents: ptr(1)}, ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := a.PatchLimits(ctx, tc.tenant, tc.patch); !errors.Is(err, tc.class) {
				t.Fatalf("got %v, want an error of class %v", err, tc.class)
			}
		})
	}
	if l, _ := a.Limits(ctx, "acme"); l.MaxStreams != 7 {
		t.Fatalf("a refused patch changed the limits: %+v", l)
	}
}

// TestOpenExisting: with Options.Existing, Open refuses a data directory
// that does not exist or that no relay has initialised, and creates
// nothing; an initialised one opens.
func TestOpenExisting(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	missing := filepath.Join(base, "missing")
	empty := filepath.Join(base, "empty")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, dir, want string }{
		{"missing", missing, "does not exist"},
		{"empty", empty, "holds no relay state"},
		{"a file", file, "not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := Open(ctx, Options{DataDir: tc.dir, Existing: true})
			if err == nil {
				a.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, ErrNoDataDir) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "tether-relay serve") {
				t.Fatalf("got %v, want ErrNoDataDir saying %q and how to create one", err, tc.want)
			}
		})
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the refused data directory was created: %v", err)
	}
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Fatalf("the refused empty directory was written to: %v", ents)
	}

	// Initialised (as serve does, by creating it), it opens.
	dir := filepath.Join(base, "relay")
	a, err := Open(ctx, Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	a, err = Open(ctx, Options{DataDir: dir, Existing: true})
	if err != nil {
		t.Fatalf("an initialised data directory: %v", err)
	}
	defer a.Close()
	if _, err := a.Tenants(ctx); err != nil {
		t.Fatalf("tenants: %v", err)
	}
}
