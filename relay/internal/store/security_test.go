package store

import (
	"errors"
	"slices"
	"testing"
	"time"
)

func TestRevokeAgent(t *testing.T) {
	s, _ := open(t)
	s.AddTenant(ctx, "acme", t0)
	for _, id := range []string{"a1", "a2"} {
		if err := s.AddAgent(ctx, Agent{ID: id, Tenant: "acme", CreatedAt: t0}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.RevokeAgent(ctx, "nope", "x", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke unknown agent: got %v, want ErrNotFound", err)
	}
	a, err := s.RevokeAgent(ctx, "a1", "stolen", t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if !a.RevokedAt.Equal(t0.Add(time.Minute)) || a.RevokedReason != "stolen" {
		t.Fatalf("revoked agent: %+v", a)
	}
	// A second revocation keeps the first time and reason.
	a, err = s.RevokeAgent(ctx, "a1", "again", t0.Add(time.Hour))
	if err != nil || !a.RevokedAt.Equal(t0.Add(time.Minute)) || a.RevokedReason != "stolen" {
		t.Fatalf("second revocation: %+v, %v", a, err)
	}
	if n, err := s.CountAgents(ctx, "acme"); err != nil || n != 1 {
		t.Fatalf("CountAgents = %d, %v; want 1 (revoked agents do not count)", n, err)
	}
	revs, err := s.RevokedSince(ctx, t0)
	if err != nil || len(revs) != 1 || revs[0].Agent != "a1" || revs[0].Tenant != "acme" {
		t.Fatalf("RevokedSince(t0) = %+v, %v", revs, err)
	}
	if revs, _ := s.RevokedSince(ctx, t0.Add(2*time.Minute)); len(revs) != 0 {
		t.Fatalf("RevokedSince after the revocation = %+v, want none", revs)
	}
	if got, _ := s.Agent(ctx, "a2"); !got.RevokedAt.IsZero() {
		t.Fatalf("a2 revoked too: %+v", got)
	}
}

func TestAudit(t *testing.T) {
	s, _ := open(t)
	recs := []AuditRecord{
		{At: t0, Kind: "agent.enrol", Outcome: "ok", Tenant: "acme", Agent: "a1", Detail: map[string]any{"token": "t1"}},
		{At: t0.Add(time.Second), Kind: "stream", Outcome: "ok", Tenant: "acme", Agent: "a1", Backend: "billing", Detail: map[string]any{"bytes_to_service": 10.0}},
		{At: t0.Add(2 * time.Second), Kind: "stream", Outcome: "not_allowed", Tenant: "beta", Backend: "billing"},
		{At: t0.Add(3 * time.Second), Kind: "agent.revoke", Outcome: "ok", Tenant: "acme", Agent: "a1", Actor: "operator"},
	}
	if err := s.AddAudit(ctx, recs); err != nil {
		t.Fatal(err)
	}
	if recs[0].Seq == 0 || recs[3].Seq <= recs[0].Seq {
		t.Fatalf("sequence numbers not set in order: %d, %d", recs[0].Seq, recs[3].Seq)
	}
	kinds := func(f AuditFilter) []string {
		t.Helper()
		got, err := s.ListAudit(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range got {
			out = append(out, r.Kind+"/"+r.Outcome)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		f    AuditFilter
		want []string
	}{
		{"all", AuditFilter{}, []string{"agent.enrol/ok", "stream/ok", "stream/not_allowed", "agent.revoke/ok"}},
		{"tenant", AuditFilter{Tenant: "beta"}, []string{"stream/not_allowed"}},
		{"agent", AuditFilter{Agent: "a1"}, []string{"agent.enrol/ok", "stream/ok", "agent.revoke/ok"}},
		{"backend", AuditFilter{Backend: "billing"}, []string{"stream/ok", "stream/not_allowed"}},
		{"kind", AuditFilter{Kind: "stream"}, []string{"stream/ok", "stream/not_allowed"}},
		{"kind prefix", AuditFilter{Kind: "agent."}, []string{"agent.enrol/ok", "agent.revoke/ok"}},
		{"prefix is not a substring match", AuditFilter{Kind: "gent."}, nil},
		{"time range", AuditFilter{Since: t0.Add(time.Second), Until: t0.Add(3 * time.Second)}, []string{"stream/ok", "stream/not_allowed"}},
		{"newest first, limited", AuditFilter{NewestFirst: true, Limit: 2}, []string{"agent.revoke/ok", "stream/not_allowed"}},
		{"injection attempt is a plain value", AuditFilter{Tenant: "acme' OR '1'='1"}, nil},
	} {
		if got := kinds(tc.f); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	got, _ := s.ListAudit(ctx, AuditFilter{Kind: "agent.enrol"})
	if len(got) != 1 || got[0].Detail["token"] != "t1" || !got[0].At.Equal(t0) {
		t.Fatalf("enrol record read back as %+v", got)
	}
}

func TestLimits(t *testing.T) {
	s, _ := open(t)
	s.AddTenant(ctx, "acme", t0)
	if err := s.SetLimits(ctx, Limits{Tenant: "ghost", UpdatedAt: t0}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("limits for an unknown tenant: got %v, want ErrNotFound", err)
	}
	l := Limits{Tenant: "acme", MaxAgents: 3, MaxStreams: 10, OpenRate: 2.5, OpenBurst: 5, CIDRs: []string{"10.0.0.0/8", "192.168.1.0/24"}, UpdatedAt: t0}
	if err := s.SetLimits(ctx, l); err != nil {
		t.Fatal(err)
	}
	l2 := Limits{Tenant: "acme", MaxStreams: 4, UpdatedAt: t0.Add(time.Hour)}
	if err := s.SetLimits(ctx, l2); err != nil {
		t.Fatal(err)
	}
	all, err := s.AllLimits(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := all["acme"]
	if len(all) != 1 || got.MaxStreams != 4 || got.MaxAgents != 0 || got.OpenRate != 0 || len(got.CIDRs) != 0 || !got.UpdatedAt.Equal(l2.UpdatedAt) {
		t.Fatalf("limits after replacement: %+v", all)
	}
}
