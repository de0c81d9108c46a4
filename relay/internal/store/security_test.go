package store

import (
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestRevokeAgent(t *testing.T) { eachEngine(t, testRevokeAgent) }

func testRevokeAgent(t *testing.T, e engine) {
	s, _ := e.open(t)
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

func TestAudit(t *testing.T) { eachEngine(t, testAudit) }

func testAudit(t *testing.T, e engine) {
	s, _ := e.open(t)
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

func TestLimits(t *testing.T) { eachEngine(t, testLimits) }

func testLimits(t *testing.T, e engine) {
	s, _ := e.open(t)
	s.AddTenant(ctx, "acme", t0)
	if err := s.SetLimits(ctx, Limits{Tenant: "ghost", UpdatedAt: t0}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("limits for an unknown tenant: got %v, want ErrNotFound", err)
	}
	l := Limits{Tenant: "acme", MaxAgents: 3, MaxStreams: 10, OpenRate: 2.5, OpenBurst: 5, CIDRs: []string{"10.0.0.0/8", "192.168.1.0/24"}, UpdatedAt: t0}
	if err := s.SetLimits(ctx, l); err != nil {
		t.Fatal(err)
	}
	// The bandwidth limit (migration 13) reads back, 64-bit.
	l.Bandwidth = 5 << 30
	if err := s.SetLimits(ctx, l); err != nil {
		t.Fatal(err)
	}
	all, err := s.AllLimits(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := all["acme"]; got.Bandwidth != 5<<30 || got.MaxStreams != 10 {
		t.Fatalf("limits with a bandwidth: got %+v, want bandwidth %d", got, int64(5<<30))
	}
	l2 := Limits{Tenant: "acme", MaxStreams: 4, UpdatedAt: t0.Add(time.Hour)}
	if err := s.SetLimits(ctx, l2); err != nil {
		t.Fatal(err)
	}
	all, err = s.AllLimits(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := all["acme"]
	if len(all) != 1 || got.MaxStreams != 4 || got.MaxAgents != 0 || got.OpenRate != 0 || got.Bandwidth != 0 || len(got.CIDRs) != 0 || !got.UpdatedAt.Equal(l2.UpdatedAt) {
		t.Fatalf("limits after replacement: %+v", all)
	}
}

func TestAgentsByCertRoot(t *testing.T) { eachEngine(t, testAgentsByCertRoot) }

func testAgentsByCertRoot(t *testing.T, e engine) {
	s, _ := e.open(t)
	s.AddTenant(ctx, "acme", t0)
	for _, a := range []Agent{
		{ID: "old1", Tenant: "acme", CreatedAt: t0, CertNotAfter: t0.Add(time.Hour)},                           // before rotation existed
		{ID: "old2", Tenant: "acme", CreatedAt: t0, CertNotAfter: t0.Add(time.Hour), CertRoot: "sha256:01"},    // first root, recorded
		{ID: "new1", Tenant: "acme", CreatedAt: t0, CertNotAfter: t0.Add(time.Hour), CertRoot: "sha256:02"},    // new root
		{ID: "gone", Tenant: "acme", CreatedAt: t0, CertNotAfter: t0.Add(-time.Minute), CertRoot: "sha256:01"}, // expired
		{ID: "revd", Tenant: "acme", CreatedAt: t0, CertNotAfter: t0.Add(time.Hour), CertRoot: "sha256:01"},    // revoked below
		{ID: "new2", Tenant: "acme", Hostname: "h", CreatedAt: t0, CertNotAfter: t0.Add(time.Hour), CertRoot: "sha256:02"},
	} {
		if err := s.AddAgent(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.RevokeAgent(ctx, "revd", "", t0); err != nil {
		t.Fatal(err)
	}
	got, err := s.AgentsByCertRoot(ctx, t0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[""] != 1 || got["sha256:01"] != 1 || got["sha256:02"] != 2 {
		t.Fatalf("AgentsByCertRoot = %v", got)
	}
	on, err := s.AgentsOnCertRoots(ctx, []string{"sha256:01", ""}, t0, 10)
	if err != nil || agentIDs(on) != "old1,old2" {
		t.Fatalf("AgentsOnCertRoots(first root) = %s, %v", agentIDs(on), err)
	}
	if on, _ := s.AgentsOnCertRoots(ctx, []string{"sha256:02"}, t0, 1); agentIDs(on) != "new1" {
		t.Fatalf("AgentsOnCertRoots with limit 1 = %s", agentIDs(on))
	}
	// A renewal moves an agent to the root that issued it.
	if err := s.SetAgentCert(ctx, "old1", "09", t0.Add(2*time.Hour), "sha256:02"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.AgentsByCertRoot(ctx, t0); got[""] != 0 || got["sha256:02"] != 3 {
		t.Fatalf("after a renewal: %v", got)
	}
	if a, _ := s.Agent(ctx, "old1"); a.CertRoot != "sha256:02" {
		t.Fatalf("Agent.CertRoot = %q", a.CertRoot)
	}

	// Tokens record the root they pin; LiveTokens skips expired and used-up ones.
	for _, tk := range []Token{
		{ID: "live", Tenant: "acme", SecretHash: hash("s"), CreatedAt: t0, ExpiresAt: t0.Add(time.Hour), MaxUses: 2, CARoot: "sha256:01"},
		{ID: "expired", Tenant: "acme", SecretHash: hash("s"), CreatedAt: t0, ExpiresAt: t0, MaxUses: 1, CARoot: "sha256:01"},
		{ID: "usedup", Tenant: "acme", SecretHash: hash("s"), CreatedAt: t0, ExpiresAt: t0.Add(time.Hour), MaxUses: 1},
	} {
		if err := s.AddToken(ctx, tk); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.ConsumeToken(ctx, "usedup", matches("s"), t0, nil); err != nil {
		t.Fatal(err)
	}
	live, err := s.LiveTokens(ctx, t0)
	if err != nil || len(live) != 1 || live[0].ID != "live" || live[0].CARoot != "sha256:01" || live[0].SecretHash != nil {
		t.Fatalf("LiveTokens = %+v, %v", live, err)
	}
}

// TestMigrationKeepsRowsOfVersion2 opens a database written at schema
// version 2 (before CA rotation): its agents and tokens get "" for their
// root, which means the CA's first root.
func TestMigrationKeepsRowsOfVersion2(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tether.db")
	writeVersion(t, path, 2,
		`INSERT INTO tenants VALUES ('acme', 0)`,
		`INSERT INTO agents (id, tenant, created_at, cert_serial, cert_not_after) VALUES ('a1', 'acme', 0, '01', 1900000000)`,
		`INSERT INTO join_tokens (id, tenant, secret_hash, created_at, expires_at, max_uses) VALUES ('t1', 'acme', '00', 0, 1900000000, 1)`)
	s, err := OpenDSN(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, _ := s.SchemaVersion(ctx); v != latestMigration() {
		t.Fatalf("schema version %d, want %d", v, latestMigration())
	}
	a, err := s.Agent(ctx, "a1")
	if err != nil || a.CertRoot != "" || a.CertSerial != "01" {
		t.Fatalf("agent after migration: %+v, %v", a, err)
	}
	if got, _ := s.AgentsByCertRoot(ctx, t0); got[""] != 1 {
		t.Fatalf("AgentsByCertRoot after migration = %v", got)
	}
	toks, err := s.LiveTokens(ctx, t0)
	if err != nil || len(toks) != 1 || toks[0].CARoot != "" {
		t.Fatalf("tokens after migration: %+v, %v", toks, err)
	}
}
