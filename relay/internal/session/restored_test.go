package session

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/policy"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// After a restore without the audit file, the store knows only the
// backup's certificate (C0) of an agent that renewed twice since (C1,
// then C2; a thief copied C1's key pair in between). Admission of a
// certificate issued in the restore window:
//
//   - writes nothing for an agent its tenant's limits refuse;
//   - accepts the thief's C1 first (newer than C0, and the first of the
//     window seen), which then renews (C3);
//   - still accepts the agent's own C2, newer than C1, over C3, and says
//     that the agent's key pair was probably copied;
//   - from then on refuses C1 (an older certificate of the window: the
//     copy) and C3 (a renewal of it).
func TestRestoredCertificateAdmission(t *testing.T) {
	ctx := context.Background()
	dir, authority, err := datadir.Open(ctx, t.TempDir(), datadir.Options{TrustDomain: "restored.test"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	st := dir.Store
	trail, err := audit.Open(ctx, st, filepath.Join(t.TempDir(), "audit.log"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer trail.Close()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	pol := policy.New(log)
	now := time.Now().Truncate(time.Millisecond)
	s := &Server{cfg: Config{Store: st, Authority: trust.NewAuthority(dir.CAStorage(), authority), Policy: pol, Audit: trail,
		HandshakeTimeout: 10 * time.Second, Now: func() time.Time { return now }}, log: log, set: newSet(nil, nil)}

	backup, restored := now.Add(-30*time.Hour), now.Add(-time.Hour)
	id := identity.Agent{TrustDomain: "restored.test", Tenant: "acme", ID: "a1"}
	issue := func(at time.Time) *x509.Certificate {
		t.Helper()
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatal(err)
		}
		c, err := authority.SignAgent(authority.Signer(), csr, id, 48*time.Hour, at)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	serial := func(c *x509.Certificate) string { return c.SerialNumber.Text(16) }
	c0, c1, c2 := issue(backup.Add(-6*time.Hour)), issue(backup.Add(6*time.Hour)), issue(backup.Add(18*time.Hour))
	if err := st.AddTenant(ctx, "acme", backup.Add(-48*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := st.AddAgent(ctx, store.Agent{ID: "a1", Tenant: "acme", CreatedAt: backup.Add(-48 * time.Hour), CertSerial: serial(c0),
		CertNotAfter: c0.NotAfter, CertRoot: authority.Signer().ID(), CertIssuedAt: backup.Add(-6 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := st.AddRestoreWindow(ctx, store.RestoreWindow{From: backup, To: restored}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	hello := &protocol.Hello{ProtocolVersion: protocol.Version, BootID: "boot"}
	admit := func(c *x509.Certificate) error { return s.admitAgent(ctx, id, c, remote, hello) }
	newest := func() store.Agent {
		t.Helper()
		a, err := st.Agent(ctx, "a1")
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	setCIDRs := func(cidrs ...string) {
		t.Helper()
		if err := st.SetLimits(ctx, store.Limits{Tenant: "acme", CIDRs: cidrs, UpdatedAt: now}); err != nil {
			t.Fatal(err)
		}
		if err := pol.LoadLimits(ctx, st); err != nil {
			t.Fatal(err)
		}
	}

	// Refused by the tenant's allowed networks: nothing recorded.
	setCIDRs("10.0.0.0/8")
	if err := admit(c1); !errors.Is(err, protocol.ErrNotAllowed) {
		t.Fatalf("C1 from outside the tenant's networks: %v, want not_allowed", err)
	}
	if a := newest(); a.CertSerial != serial(c0) || a.WindowCertSerial != "" {
		t.Fatalf("a refused agent changed the record: newest %s, window's newest %q; want C0 %s as before", a.CertSerial, a.WindowCertSerial, serial(c0))
	}
	setCIDRs()

	// The thief's C1 first; it renews (as enrol records a renewal).
	if err := admit(c1); err != nil {
		t.Fatalf("C1: %v", err)
	}
	if a := newest(); a.CertSerial != serial(c1) || a.WindowCertSerial != serial(c1) {
		t.Fatalf("after C1: newest %s, window's newest %q; want C1 %s", a.CertSerial, a.WindowCertSerial, serial(c1))
	}
	c3 := issue(restored.Add(time.Minute))
	if err := st.RenewAgentCert(ctx, "a1", serial(c1), store.AgentCert{Serial: serial(c3), NotAfter: c3.NotAfter, Root: authority.Signer().ID(),
		IssuedAt: restored.Add(time.Minute)}, "", time.Time{}); err != nil {
		t.Fatal(err)
	}

	// The agent's own C2.
	if err := admit(c2); err != nil {
		t.Fatalf("the agent's own C2, newer than the thief's C1, after the thief renewed: %v", err)
	}
	if a := newest(); a.CertSerial != serial(c2) || a.WindowCertSerial != serial(c2) {
		t.Fatalf("after C2: newest %s, window's newest %q; want C2 %s", a.CertSerial, a.WindowCertSerial, serial(c2))
	}
	if !strings.Contains(logs.String(), "probably copied") {
		t.Errorf("no warning of a copied key pair:\n%s", logs.String())
	}
	recs, err := st.ListAudit(ctx, store.AuditFilter{Kind: audit.RestoredCertificate})
	if err != nil || len(recs) != 2 || recs[1].Detail["cert_serial"] != serial(c2) || recs[1].Detail["clone_suspected"] != true || recs[1].Detail["older_window_serial"] != serial(c1) {
		t.Fatalf("audit records %s: %+v, %v; want C1's, then C2's naming C1 as a possible copy", audit.RestoredCertificate, recs, err)
	}

	// The thief, on C1 or on its renewal C3, is refused.
	err = admit(c1)
	if !errors.Is(err, protocol.ErrCertSuperseded) || !strings.Contains(err.Error(), serial(c2)) || !strings.Contains(err.Error(), "probably copied") {
		t.Errorf("C1 after C2: %v; want certificate_superseded naming C2 as a probable copy", err)
	}
	if err := admit(c3); !errors.Is(err, protocol.ErrCertSuperseded) {
		t.Errorf("C3 after C2: %v; want certificate_superseded", err)
	}
	if err := admit(c2); err != nil {
		t.Errorf("C2 again: %v", err)
	}
}
