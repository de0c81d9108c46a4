package relay

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
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
	a := openAdmin(t, dir, "acme")
	oldRoot := r.auth.CA().Signer()
	id := identity.Agent{TrustDomain: r.TrustDomain(), Tenant: "acme", ID: "a1"}
	if err := r.dir.Store.AddAgent(ctx, store.Agent{ID: id.ID, Tenant: id.Tenant, CreatedAt: time.Now(), CertRoot: oldRoot.ID()}); err != nil {
		t.Fatal(err)
	}
	session := &renewing{id: id, at: time.Now(), root: oldRoot.ID()}
	issue := func() *x509.Certificate {
		t.Helper()
		resp := r.enrol.Renew(ctx, session, &protocol.RenewRequest{CSR: csrFor(t)})
		if resp.Code != "" {
			t.Fatalf("renewal refused: %s: %s", resp.Code, resp.Message)
		}
		c, err := parsePEMCert(resp.Certificate)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(resp.CACertificates, "BEGIN CERTIFICATE"); n != len(r.auth.CA().Roots()) {
			t.Fatalf("renewal sent %d roots, want %d", n, len(r.auth.CA().Roots()))
		}
		checkEndorsements(t, resp.CAEndorsements, oldRoot, r.auth.CA().Roots()...)
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

	st, err := a.RotateCA(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Roots) != 2 || st.Roots[0].EndorsedBy != 0 || st.Roots[1].EndorsedBy != 1 {
		t.Fatalf("ca status after the rotation: %+v; want root 2 endorsed by root 1", st.Roots)
	}
	r.rotation.Apply(ctx)
	newRoot := r.auth.CA().Signer()
	if newRoot.ID() == oldRoot.ID() || !r.auth.CA().RenewNow() {
		t.Fatal("the relay did not pick up the rotation")
	}
	fromNew := issue()
	if fromNew.Issuer.CommonName != newRoot.Cert.Subject.CommonName {
		t.Fatalf("renewal during the overlap issued by %q", fromNew.Issuer.CommonName)
	}
	if rec, _ := r.dir.Store.Agent(ctx, id.ID); rec.CertRoot != newRoot.ID() {
		t.Fatalf("store records root %s, want %s", rec.CertRoot, newRoot.ID())
	}
	for name, c := range map[string]*x509.Certificate{"old": fromOld, "new": fromNew} {
		if _, err := r.auth.VerifyAgent([]*x509.Certificate{c}, r.cfg.Now()); err != nil {
			t.Errorf("during the overlap, a certificate from the %s root is refused: %v", name, err)
		}
	}
	if got := serverRoot(); got != oldRoot.ID() {
		t.Fatalf("server certificate during the overlap chains to %s, want the old root", got)
	}

	if _, err := a.RetireCA(ctx, false); err != nil {
		t.Fatal(err)
	}
	r.rotation.Apply(ctx)
	if got := serverRoot(); got != newRoot.ID() {
		t.Fatalf("server certificate after retirement chains to %s, want the new root", got)
	}
	if _, err := r.auth.VerifyAgent([]*x509.Certificate{fromNew}, r.cfg.Now()); err != nil {
		t.Fatalf("certificate from the new root refused after retirement: %v", err)
	}
	issue() // the answer still carries the new root's endorsement (the chain a later rotation extends)
	_, err = r.auth.VerifyAgent([]*x509.Certificate{fromOld}, r.cfg.Now())
	if err == nil || !strings.Contains(err.Error(), "retired") || !strings.Contains(err.Error(), "enrol again") {
		t.Fatalf("certificate from the retired root: %v", err)
	}
	if _, err := ca.Load(ctx, r.auth.Storage()); err != nil {
		t.Fatal(err)
	}
}

// checkEndorsements checks that a renewal's endorsements (PEM) are those
// the CA's rotations made: for each of roots after first, its certificate
// from the root before it; none for first.
func checkEndorsements(t *testing.T, endorsements string, first *ca.Root, roots ...*ca.Root) {
	t.Helper()
	var got []*x509.Certificate
	for rest := []byte(endorsements); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, c)
	}
	want := 0
	for i, r := range roots {
		if r.ID() == first.ID() {
			continue
		}
		want++
		by := first
		if i > 0 {
			by = roots[i-1]
		}
		if !slices.ContainsFunc(got, func(e *x509.Certificate) bool { return ca.Endorses(by.Cert, r.Cert, e) }) {
			t.Fatalf("the renewal carries no endorsement of CA root %d by root %d (%d endorsements)", r.Generation, by.Generation, len(got))
		}
	}
	if len(got) != want {
		t.Fatalf("the renewal carries %d endorsements, want %d", len(got), want)
	}
}

// TestRelayEndorsesOverlapBegunBefore: a relay that starts in an overlap
// whose roots.json has no endorsement of the new root (a rotation made by
// a relay from before endorsements) has the old root endorse it, and
// sends that with renewals, so that agents it serves can move; the next
// change to the CA (renew-now here) stores it.
func TestRelayEndorsesOverlapBegunBefore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a := openAdmin(t, dir, "acme")
	if _, err := a.RotateCA(ctx, false); err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(dir, "ca", ca.ManifestFile)
	var m map[string]any
	raw, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	roots := m["roots"].([]any)
	if roots[1].(map[string]any)["endorsement"] == nil {
		t.Fatal("ca rotate stored no endorsement of the new root")
	}
	delete(roots[1].(map[string]any), "endorsement")
	raw, _ = json.Marshal(m)
	if err := os.WriteFile(manifest, raw, 0o644); err != nil {
		t.Fatal(err)
	}

	r, err := New(Config{DataDir: dir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: Off})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.audit.Start()
	defer r.audit.Stop()
	c := r.auth.CA()
	oldRoot := c.Serving()
	id := identity.Agent{TrustDomain: r.TrustDomain(), Tenant: "acme", ID: "a1"}
	if err := r.dir.Store.AddAgent(ctx, store.Agent{ID: id.ID, Tenant: id.Tenant, CreatedAt: time.Now(), CertRoot: oldRoot.ID()}); err != nil {
		t.Fatal(err)
	}
	resp := r.enrol.Renew(ctx, &renewing{id: id, at: time.Now(), root: oldRoot.ID()}, &protocol.RenewRequest{CSR: csrFor(t)})
	if resp.Code != "" {
		t.Fatalf("renewal refused: %s: %s", resp.Code, resp.Message)
	}
	checkEndorsements(t, resp.CAEndorsements, oldRoot, c.Roots()...)

	if _, err := a.RenewNowCA(ctx); err != nil {
		t.Fatal(err)
	}
	raw, _ = os.ReadFile(manifest)
	if !strings.Contains(string(raw), `"endorsement"`) {
		t.Fatalf("ca renew-now did not store the endorsement:\n%s", raw)
	}
}

// renewing is an agent session as renewal sees it, without a connection:
// it stands on the certificate it was last renewed to, from CA root root.
type renewing struct {
	id     identity.Agent
	serial string
	root   string
	at     time.Time
	boot   string
}

func (a *renewing) Identity() identity.Agent { return a.id }
func (a *renewing) SessionID() string        { return "test" }
func (a *renewing) Logger() *slog.Logger     { return slog.New(slog.DiscardHandler) }
func (a *renewing) CertSerial() string       { return a.serial }
func (a *renewing) RootID() string           { return a.root }
func (a *renewing) ConnectedAt() time.Time   { return a.at }
func (a *renewing) NotAfter() time.Time      { return time.Now().Add(time.Hour) }
func (a *renewing) Hello() *protocol.Hello   { return &protocol.Hello{BootID: a.boot} }
func (a *renewing) Renewed(serial string, _ time.Time, root string) {
	a.serial, a.root = serial, root
}

func parsePEMCert(s string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}
