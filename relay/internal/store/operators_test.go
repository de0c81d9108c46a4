package store

import (
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// Operator tokens and console sessions keep the tenant and role they are
// scoped to.
func TestOperatorScopes(t *testing.T) { eachEngine(t, testOperatorScopes) }

func testOperatorScopes(t *testing.T, e engine) {
	s, _ := e.open(t)
	tok := OperatorToken{ID: "op1", Name: "bob", SecretHash: hash("x"), Tenant: "acme", Role: "viewer", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	if err := s.AddOperatorToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	got, err := s.OperatorToken(ctx, "op1")
	if err != nil || got.Tenant != "acme" || got.Role != "viewer" || got.Name != "bob" {
		t.Fatalf("OperatorToken = %+v, %v; want bob, viewer of acme", got, err)
	}
	list, err := s.ListOperatorTokens(ctx)
	if err != nil || len(list) != 1 || list[0].Tenant != "acme" || list[0].Role != "viewer" {
		t.Fatalf("ListOperatorTokens = %+v, %v", list, err)
	}
	cs := ConsoleSession{IDHash: hash("s1"), Operator: "Ann", Subject: "https://idp.example#ann", SSOIssuer: "acme-idp", Tenant: "acme", Role: "admin", CSRF: "c", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	if err := s.AddConsoleSession(ctx, cs); err != nil {
		t.Fatal(err)
	}
	gs, err := s.ConsoleSession(ctx, hash("s1"), t0)
	if err != nil || gs.Subject != cs.Subject || gs.SSOIssuer != "acme-idp" || gs.Tenant != "acme" || gs.Role != "admin" || gs.TokenID != "" || gs.CertSerial != "" {
		t.Fatalf("ConsoleSession = %+v, %v; want %+v", gs, err, cs)
	}
}

// Operator certificates are recorded, listed newest first and revoked; a
// revocation keeps its first time, ends the sessions opened with the
// certificate and appears in the change feed.
func TestOperatorCerts(t *testing.T) { eachEngine(t, testOperatorCerts) }

func testOperatorCerts(t *testing.T, e engine) {
	s, _ := e.open(t)
	c1 := OperatorCert{Serial: "1f", Name: "bob", CreatedAt: t0, NotAfter: t0.Add(24 * time.Hour)}
	c2 := OperatorCert{Serial: "a0", Name: "carol", Tenant: "acme", Role: "admin", CreatedAt: t0.Add(time.Minute), NotAfter: t0.Add(24 * time.Hour)}
	for _, c := range []OperatorCert{c1, c2} {
		if err := s.AddOperatorCert(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddOperatorCert(ctx, c1); !errors.Is(err, ErrExists) {
		t.Fatalf("the same serial twice: %v, want ErrExists", err)
	}
	got, err := s.OperatorCert(ctx, "a0")
	if err != nil || got.Name != "carol" || got.Tenant != "acme" || got.Role != "admin" || !got.NotAfter.Equal(c2.NotAfter) || !got.RevokedAt.IsZero() {
		t.Fatalf("OperatorCert(a0) = %+v, %v", got, err)
	}
	if _, err := s.OperatorCert(ctx, "ff"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown serial: %v, want ErrNotFound", err)
	}
	list, err := s.ListOperatorCerts(ctx)
	if err != nil || len(list) != 2 || list[0].Serial != "a0" || list[1].Serial != "1f" {
		t.Fatalf("ListOperatorCerts = %+v, %v; want a0 then 1f", list, err)
	}

	for _, id := range []string{"s1", "s2"} {
		if err := s.AddConsoleSession(ctx, ConsoleSession{IDHash: hash(id), Operator: "bob", CertSerial: "1f", CSRF: "c", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddConsoleSession(ctx, ConsoleSession{IDHash: hash("s3"), Operator: "carol", CertSerial: "a0", CSRF: "c", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	before, err := s.LatestChange(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.RevokeOperatorCert(ctx, "1f", t0.Add(time.Minute))
	if err != nil || !r.RevokedAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("RevokeOperatorCert = %+v, %v", r, err)
	}
	if r, err := s.RevokeOperatorCert(ctx, "1f", t0.Add(time.Hour)); err != nil || !r.RevokedAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("second revocation = %+v, %v; want the first time kept", r, err)
	}
	if _, err := s.RevokeOperatorCert(ctx, "ff", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke unknown serial: %v, want ErrNotFound", err)
	}
	for _, id := range []string{"s1", "s2"} {
		if _, err := s.ConsoleSession(ctx, hash(id), t0); !errors.Is(err, ErrNotFound) {
			t.Fatalf("session %s of the revoked certificate: %v, want ErrNotFound", id, err)
		}
	}
	if _, err := s.ConsoleSession(ctx, hash("s3"), t0); err != nil {
		t.Fatalf("session of another certificate: %v", err)
	}
	changes, err := s.Changes(ctx, before, 10)
	if err != nil || len(changes) == 0 || changes[0].Kind != ChangeOperatorCert || changes[0].Subject != "1f" {
		t.Fatalf("changes after the revocation = %+v, %v; want operator_cert 1f", changes, err)
	}
}

// A database of schema version 8 keeps its operator tokens and sessions,
// now unscoped (tenant and role empty).
func TestMigrationKeepsOperatorsOfVersion8(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tether.db")
	writeVersion(t, path, 8,
		`INSERT INTO operator_tokens (id, name, secret_hash, created_at, expires_at) VALUES ('op1', 'alice', '00', 0, 1900000000)`,
		`INSERT INTO console_sessions (id_hash, operator, token_id, csrf, created_at, expires_at) VALUES ('aa', 'alice', 'op1', 'c', 0, 1900000000)`)
	s, err := OpenDSN(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, _ := s.SchemaVersion(ctx); v != latestMigration() {
		t.Fatalf("schema version %d, want %d", v, latestMigration())
	}
	tok, err := s.OperatorToken(ctx, "op1")
	if err != nil || tok.Name != "alice" || tok.Tenant != "" || tok.Role != "" {
		t.Fatalf("token after migration: %+v, %v", tok, err)
	}
	cs, err := s.ConsoleSession(ctx, []byte{0xaa}, t0)
	if err != nil || cs.TokenID != "op1" || cs.Tenant != "" || cs.CertSerial != "" || cs.Subject != "" {
		t.Fatalf("session after migration: %+v, %v", cs, err)
	}
}

// A database of schema version 15 keeps its single sign-on sessions,
// with no sign-on issuer recorded (the admin package ends them).
func TestMigrationToSessionIssuer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tether.db")
	writeVersion(t, path, 15,
		`INSERT INTO console_sessions (id_hash, operator, subject, tenant, role, csrf, created_at, expires_at) VALUES ('bb', 'ann', 'https://idp.example#ann', 'acme', 'admin', 'c', 0, 1900000000)`)
	s, err := OpenDSN(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cs, err := s.ConsoleSession(ctx, []byte{0xbb}, t0)
	if err != nil || cs.Subject != "https://idp.example#ann" || cs.SSOIssuer != "" || cs.Tenant != "acme" {
		t.Fatalf("session after migration: %+v, %v", cs, err)
	}
}

// JoinToken returns one join token with its tenant (what a tenant-scoped
// operator's revocation is checked against), without its secret.
func TestJoinToken(t *testing.T) { eachEngine(t, testJoinToken) }

func testJoinToken(t *testing.T, e engine) {
	s, _ := e.open(t)
	s.AddTenant(ctx, "acme", t0)
	addToken(t, s, "one", "s1", 1, time.Hour)
	got, err := s.JoinToken(ctx, "one")
	if err != nil || got.ID != "one" || got.Tenant != "acme" || got.SecretHash != nil || got.MaxUses != 1 {
		t.Fatalf("JoinToken = %+v, %v", got, err)
	}
	if _, err := s.JoinToken(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown token: %v, want ErrNotFound", err)
	}
}
