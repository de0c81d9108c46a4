package store

import (
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// The store records an agent's newest certificate and the one it
// replaced: a renewal replaces only the certificate it read as newest,
// the overlap of the replaced one ends at the newest one's first use, and
// the certificate an agent connects with is recorded only for agents
// whose issued certificates the store does not know.
func TestAgentCertificates(t *testing.T) { eachEngine(t, testAgentCertificates) }

func testAgentCertificates(t *testing.T, e engine) {
	s, _ := e.open(t)
	s.AddTenant(ctx, "acme", t0)
	issued := t0.Add(123 * time.Millisecond)
	if err := s.AddAgent(ctx, Agent{ID: "a1", Tenant: "acme", CreatedAt: t0, CertSerial: "01", CertNotAfter: t0.Add(time.Hour), CertRoot: "sha256:r1", CertIssuedAt: issued}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddAgent(ctx, Agent{ID: "old", Tenant: "acme", CreatedAt: t0, CertSerial: "0a", CertNotAfter: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	a, err := s.Agent(ctx, "a1")
	if err != nil || a.CertSerial != "01" || !a.CertIssuedAt.Equal(issued) || a.CertBootID != "" || a.PrevCertSerial != "" || !a.PrevCertUntil.IsZero() {
		t.Fatalf("enrolled agent: %+v, %v; want serial 01 issued at %v, no previous certificate", a, err, issued)
	}

	renewedAt := t0.Add(40 * time.Minute)
	next := AgentCert{Serial: "02", NotAfter: renewedAt.Add(time.Hour), Root: "sha256:r2", IssuedAt: renewedAt, BootID: "boot1"}
	if err := s.RenewAgentCert(ctx, "a1", "01", next, "01", renewedAt.Add(5*time.Minute)); err != nil {
		t.Fatal(err)
	}
	a, _ = s.Agent(ctx, "a1")
	if a.CertSerial != "02" || a.CertRoot != "sha256:r2" || !a.CertNotAfter.Equal(next.NotAfter) || !a.CertIssuedAt.Equal(renewedAt) || a.CertBootID != "boot1" ||
		a.PrevCertSerial != "01" || !a.PrevCertUntil.Equal(renewedAt.Add(5*time.Minute)) {
		t.Fatalf("after a renewal: %+v; want 02 newest, 01 accepted until %v", a, renewedAt.Add(5*time.Minute))
	}

	// A renewal that read 01 as newest comes second: nothing changes.
	late := AgentCert{Serial: "03", NotAfter: renewedAt.Add(time.Hour), IssuedAt: renewedAt}
	if err := s.RenewAgentCert(ctx, "a1", "01", late, "01", renewedAt.Add(5*time.Minute)); !errors.Is(err, ErrCertChanged) {
		t.Fatalf("a renewal of a certificate no longer newest: got %v, want ErrCertChanged", err)
	}
	if a, _ := s.Agent(ctx, "a1"); a.CertSerial != "02" || a.PrevCertSerial != "01" {
		t.Fatalf("after the late renewal: %+v; want 02 and 01 kept", a)
	}
	if err := s.RenewAgentCert(ctx, "nosuch", "01", late, "01", renewedAt); !errors.Is(err, ErrNotFound) {
		t.Fatalf("renewal of a missing agent: got %v, want ErrNotFound", err)
	}

	// The overlap ends at the newest certificate's first use, once.
	used := renewedAt.Add(time.Minute)
	if ended, err := s.EndCertOverlap(ctx, "a1", "01", used); err != nil || ended {
		t.Fatalf("EndCertOverlap with the replaced certificate: %v, %v; want nothing ended", ended, err)
	}
	if ended, err := s.EndCertOverlap(ctx, "a1", "02", used); err != nil || !ended {
		t.Fatalf("EndCertOverlap with the newest certificate: %v, %v; want the overlap ended", ended, err)
	}
	if a, _ := s.Agent(ctx, "a1"); a.PrevCertSerial != "01" || !a.PrevCertUntil.Equal(used) {
		t.Fatalf("after the first use: %+v; want 01 accepted until %v", a, used)
	}
	if ended, err := s.EndCertOverlap(ctx, "a1", "02", used.Add(time.Second)); err != nil || ended {
		t.Fatalf("EndCertOverlap a second time: %v, %v; want nothing ended", ended, err)
	}

	// The certificate an agent connects with is recorded only for an
	// agent whose issued certificates the store does not know.
	if err := s.SetAgentCert(ctx, "a1", "09", t0.Add(3*time.Hour), "sha256:r1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetAgentCert of an agent with its certificates on record: got %v, want ErrNotFound", err)
	}
	if a, _ := s.Agent(ctx, "a1"); a.CertSerial != "02" {
		t.Fatalf("SetAgentCert replaced a recorded certificate: %+v", a)
	}
	if err := s.SetAgentCert(ctx, "old", "0b", t0.Add(2*time.Hour), "sha256:r1"); err != nil {
		t.Fatal(err)
	}
	// Its first renewal records a certificate, whatever was seen before.
	first := AgentCert{Serial: "0c", NotAfter: renewedAt.Add(time.Hour), Root: "sha256:r2", IssuedAt: renewedAt}
	if err := s.RenewAgentCert(ctx, "old", "", first, "0a", renewedAt.Add(5*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if a, _ := s.Agent(ctx, "old"); a.CertSerial != "0c" || !a.CertIssuedAt.Equal(renewedAt) || a.PrevCertSerial != "0a" {
		t.Fatalf("the first renewal of an agent without certificates on record: %+v", a)
	}
}

// Agents enrolled before migration 12 keep their last certificate seen,
// with nothing on record of those issued.
func TestMigrationToAgentCertificates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tether.db")
	writeVersion(t, path, 10,
		`INSERT INTO tenants VALUES ('acme', 0)`,
		`INSERT INTO agents (id, tenant, created_at, cert_serial, cert_not_after, cert_root) VALUES ('a1', 'acme', 0, '01', 1900000000, 'sha256:r1')`)
	s, err := OpenDSN(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, _ := s.SchemaVersion(ctx); v != latestMigration() {
		t.Fatalf("schema version %d, want %d", v, latestMigration())
	}
	a, err := s.Agent(ctx, "a1")
	if err != nil || a.CertSerial != "01" || !a.CertIssuedAt.IsZero() || a.PrevCertSerial != "" || !a.PrevCertUntil.IsZero() {
		t.Fatalf("agent after migration: %+v, %v; want serial 01 and no certificate issued on record", a, err)
	}
}
