package relay

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/store"
)

func csrFor(t *testing.T) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestAdminCARotation runs rotate, status and retire against a data
// directory, as the tether-relay ca commands do.
func TestAdminCARotation(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, err := OpenAdmin(ctx, dir, "")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	first := a.st.CA().Signer()
	now := time.Now()
	// One agent from before rotation existed (no root recorded), one with
	// its root recorded.
	for _, x := range []store.Agent{
		{ID: "legacy", Tenant: "acme", Hostname: "db-1", CreatedAt: now, CertSerial: "1", CertNotAfter: now.Add(time.Hour)},
		{ID: "recorded", Tenant: "acme", Hostname: "db-2", CreatedAt: now, CertSerial: "2", CertNotAfter: now.Add(time.Hour), CertRoot: first.ID()},
	} {
		if err := a.st.store.AddAgent(ctx, x); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.RetireCA(ctx, false); !IsNotRotating(err) {
		t.Fatalf("retire without a rotation: %v", err)
	}
	_, before, err := a.CreateToken(ctx, "acme", time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}

	st, err := a.RotateCA(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Rotating || len(st.Roots) != 2 || st.Roots[0].Agents != 2 || st.Roots[1].Agents != 0 || st.Roots[0].Tokens != 1 {
		t.Fatalf("status after rotate: %+v", st)
	}
	if strings.Join(st.Roots[0].Roles, ",") != "serving" || strings.Join(st.Roots[1].Roles, ",") != "signing" {
		t.Fatalf("roles: %v, %v", st.Roots[0].Roles, st.Roots[1].Roles)
	}
	if _, err := a.RotateCA(ctx, false); err == nil {
		t.Fatal("a second rotation during the overlap was accepted")
	}
	// Tokens made during the overlap pin the old (serving) root too.
	tok, during, err := a.CreateToken(ctx, "acme", time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	pt, _ := protocol.ParseJoinToken(tok)
	if pt.CAFingerprint != first.Fingerprint() || during.CARoot != first.ID() || before.CARoot != first.ID() {
		t.Fatalf("tokens pin %s and %s, want the old root %s", before.CARoot, during.CARoot, first.ID())
	}

	// Both agents still depend on the old root: retire refuses and names them.
	_, err = a.RetireCA(ctx, false)
	if err == nil || !strings.Contains(err.Error(), "2 agent(s)") || !strings.Contains(err.Error(), "acme/legacy (db-1") || !strings.Contains(err.Error(), "acme/recorded") {
		t.Fatalf("retire with agents on the old root: %v", err)
	}
	// One renews onto the new root, the other is revoked.
	newRoot := a.st.CA().Signer().ID()
	if err := a.st.store.SetAgentCert(ctx, "recorded", "3", now.Add(time.Hour), newRoot); err != nil {
		t.Fatal(err)
	}
	if _, err := a.RenewNowCA(ctx); err != nil {
		t.Fatal(err)
	}
	st, _ = a.CAStatus(ctx)
	if st.Roots[0].Agents != 1 || st.Roots[1].Agents != 1 || !st.RenewNow {
		t.Fatalf("status after one renewal: %+v", st)
	}
	if _, err := a.RevokeAgent(ctx, "legacy", "gone"); err != nil {
		t.Fatal(err)
	}
	res, err := a.RetireCA(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Retired.Fingerprint != first.ID() || len(res.Stranded) != 0 || len(res.Tokens) != 2 {
		t.Fatalf("retire result: %+v", res)
	}
	st, _ = a.CAStatus(ctx)
	if st.Rotating || len(st.Roots) != 1 || st.Roots[0].Fingerprint != newRoot || len(st.Retired) != 1 || st.RenewNow {
		t.Fatalf("status after retire: %+v", st)
	}
	// New tokens pin the new root.
	if _, info, _ := a.CreateToken(ctx, "acme", time.Hour, 1); info.CARoot != newRoot {
		t.Fatalf("token after retirement pins %s, want %s", info.CARoot, newRoot)
	}

	// --force strands an agent and says so.
	if _, err := a.RotateCA(ctx, false); err != nil {
		t.Fatal(err)
	}
	res, err = a.RetireCA(ctx, true)
	if err != nil || len(res.Stranded) != 1 || res.Stranded[0].ID != "recorded" {
		t.Fatalf("forced retire: %+v, %v", res, err)
	}
	recs, err := a.Audit(ctx, AuditFilter{Kind: "ca."})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, r := range recs {
		kinds = append(kinds, r.Kind)
	}
	if got := strings.Join(kinds, ","); got != "ca.rotate,ca.renew_now,ca.retire,ca.rotate,ca.retire" {
		t.Fatalf("audit kinds %s", got)
	}
	if d := recs[len(recs)-1].Detail; d["forced"] != true || d["agents_stranded"] != float64(1) {
		t.Fatalf("forced retire audit detail %v", d)
	}
}

// TestRelayFollowsCARotation: a relay picks up a rotation and a retirement
// made by another process at its next poll: new agent certificates from
// the new root, both roots trusted during the overlap, the server
// certificate on the old root until retirement and on the new one after.
func TestRelayFollowsCARotation(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r, err := New(Config{DataDir: dir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: Off})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.audit.Start()
	defer r.audit.Stop()
	a, err := OpenAdmin(ctx, dir, "")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	oldRoot := r.st.CA().Signer()
	id := identity.Agent{TrustDomain: r.TrustDomain(), Tenant: "acme", ID: "a1"}
	if err := r.st.store.AddAgent(ctx, store.Agent{ID: id.ID, Tenant: id.Tenant, CreatedAt: time.Now(), CertRoot: oldRoot.ID()}); err != nil {
		t.Fatal(err)
	}
	issue := func() *x509.Certificate {
		t.Helper()
		resp, _, _, err := r.renewCert(ctx, id, &protocol.RenewRequest{CSR: csrFor(t)})
		if err != nil {
			t.Fatal(err)
		}
		c, err := parsePEMCert(resp.Certificate)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(resp.CACertificates, "BEGIN CERTIFICATE"); n != len(r.st.CA().Roots()) {
			t.Fatalf("renewal sent %d roots, want %d", n, len(r.st.CA().Roots()))
		}
		return c
	}
	serverRoot := func() string {
		t.Helper()
		c, err := r.tls.Certificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		return protocol.FormatFingerprint(protocol.Fingerprint(c.Certificate[len(c.Certificate)-1]))
	}
	fromOld := issue()

	if _, err := a.RotateCA(ctx, true); err != nil {
		t.Fatal(err)
	}
	r.refreshCA(ctx)
	newRoot := r.st.CA().Signer()
	if newRoot.ID() == oldRoot.ID() || !r.st.CA().RenewNow() {
		t.Fatal("the relay did not pick up the rotation")
	}
	fromNew := issue()
	if fromNew.Issuer.CommonName != newRoot.Cert.Subject.CommonName {
		t.Fatalf("renewal during the overlap issued by %q", fromNew.Issuer.CommonName)
	}
	if rec, _ := r.st.store.Agent(ctx, id.ID); rec.CertRoot != newRoot.ID() {
		t.Fatalf("store records root %s, want %s", rec.CertRoot, newRoot.ID())
	}
	for name, c := range map[string]*x509.Certificate{"old": fromOld, "new": fromNew} {
		if _, err := r.st.auth.VerifyAgent([]*x509.Certificate{c}, r.cfg.Now()); err != nil {
			t.Errorf("during the overlap, a certificate from the %s root is refused: %v", name, err)
		}
	}
	if got := serverRoot(); got != oldRoot.ID() {
		t.Fatalf("server certificate during the overlap chains to %s, want the old root", got)
	}

	if _, err := a.RetireCA(ctx, false); err != nil {
		t.Fatal(err)
	}
	r.refreshCA(ctx)
	if got := serverRoot(); got != newRoot.ID() {
		t.Fatalf("server certificate after retirement chains to %s, want the new root", got)
	}
	if _, err := r.st.auth.VerifyAgent([]*x509.Certificate{fromNew}, r.cfg.Now()); err != nil {
		t.Fatalf("certificate from the new root refused after retirement: %v", err)
	}
	_, err = r.st.auth.VerifyAgent([]*x509.Certificate{fromOld}, r.cfg.Now())
	if err == nil || !strings.Contains(err.Error(), "retired") || !strings.Contains(err.Error(), "enrol again") {
		t.Fatalf("certificate from the retired root: %v", err)
	}
	if _, err := ca.Load(r.st.caDir()); err != nil {
		t.Fatal(err)
	}
}

func parsePEMCert(s string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}
