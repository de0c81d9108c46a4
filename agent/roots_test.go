package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
)

// testRoot is a CA root made the way the relay makes them.
type testRoot struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestRoot(t *testing.T, td, name string) testRoot {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		URIs:     []*url.URL{identity.TrustDomainURI(td)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return testRoot{c, key}
}

func (r testRoot) issue(t *testing.T, id identity.Agent, key *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{id.URI()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.cert, &key.PublicKey, r.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// enrolled writes an agent state trusting roots, with a certificate from
// issuer, and returns the agent loaded from it.
func enrolled(t *testing.T, issuer testRoot, roots ...testRoot) *Agent {
	t.Helper()
	return enrolledWith(t, Config{Services: map[string]Service{}, Logger: slog.New(slog.DiscardHandler)}, issuer, roots...)
}

// enrolledWith is enrolled with cfg (its state directory is set here).
func enrolledWith(t *testing.T, cfg Config, issuer testRoot, roots ...testRoot) *Agent {
	t.Helper()
	dir := t.TempDir()
	id := identity.Agent{TrustDomain: "tether.internal", Tenant: "acme", ID: "a1"}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	var certs []*x509.Certificate
	for _, r := range roots {
		certs = append(certs, r.cert)
	}
	s := &State{Dir: dir, AgentID: id.ID, Tenant: id.Tenant, TrustDomain: id.TrustDomain, Relay: "relay:7443"}
	if err := s.save(pemBlock("PRIVATE KEY", kder), pemBlock("CERTIFICATE", issuer.issue(t, id, key).Raw), rootsPEM(certs)); err != nil {
		t.Fatal(err)
	}
	cfg.StateDir = dir
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func renewalFrom(t *testing.T, a *Agent, issuer testRoot, sent ...testRoot) (*protocol.RenewResponse, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id := identity.Agent{TrustDomain: a.state.TrustDomain, Tenant: a.state.Tenant, ID: a.state.AgentID}
	var certs []*x509.Certificate
	for _, r := range sent {
		certs = append(certs, r.cert)
	}
	return &protocol.RenewResponse{Certificate: string(pemBlock("CERTIFICATE", issuer.issue(t, id, key).Raw)), CACertificates: string(rootsPEM(certs))}, key
}

// TestRenewalOntoANewRoot: during a CA rotation the relay answers a renewal
// with a certificate from the new root and both roots; the agent checks it,
// installs all three files, and loads them again after a restart.
func TestRenewalOntoANewRoot(t *testing.T) {
	oldRoot, newRoot := newTestRoot(t, "tether.internal", "old"), newTestRoot(t, "tether.internal", "new")
	a := enrolled(t, oldRoot, oldRoot)
	resp, key := renewalFrom(t, a, newRoot, oldRoot, newRoot)
	resp.CAEndorsements = string(pemBlock("CERTIFICATE", endorseRoot(t, oldRoot, newRoot, time.Time{}).Raw))

	if a.certFromRoot(protocol.FormatFingerprint(protocol.Fingerprint(newRoot.cert.Raw))) {
		t.Fatal("certFromRoot says the old certificate comes from the new root")
	}
	cert, roots, caPEM, err := a.checkRenewal(resp, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(roots) != 2 || strings.Count(string(caPEM), "BEGIN CERTIFICATE") != 2 {
		t.Fatalf("got %d roots to trust, want both", len(roots))
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	if err := a.state.replaceKeyPair(pemBlock("PRIVATE KEY", kder), pemBlock("CERTIFICATE", cert.Raw), caPEM); err != nil {
		t.Fatal(err)
	}
	st, err := LoadState(a.state.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.RootCerts) != 2 || st.Cert.Leaf.Issuer.CommonName != "new" {
		t.Fatalf("after the renewal: %d roots, certificate from %q", len(st.RootCerts), st.Cert.Leaf.Issuer.CommonName)
	}
	a.cert.Store(&tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert})
	a.rootList.Store(&roots)
	if !a.certFromRoot(protocol.FormatFingerprint(protocol.Fingerprint(newRoot.cert.Raw))) {
		t.Fatal("certFromRoot does not recognise the new root")
	}

	// After the retirement, the relay sends the new root alone.
	resp, key = renewalFrom(t, a, newRoot, newRoot)
	if _, roots, _, err := a.checkRenewal(resp, key); err != nil || len(roots) != 1 {
		t.Fatalf("renewal after the retirement: %d roots, %v", len(roots), err)
	}
}

// TestInterruptedRenewalStillLoads: a renewal that stopped after writing
// the new roots (ca.crt is written first) leaves the old key and
// certificate with both roots, which load; one stopped after the key
// finishes on the next load.
func TestInterruptedRenewalStillLoads(t *testing.T) {
	oldRoot, newRoot := newTestRoot(t, "tether.internal", "old"), newTestRoot(t, "tether.internal", "new")
	a := enrolled(t, oldRoot, oldRoot)
	dir := a.state.Dir
	if err := writeFileAtomic(filepath.Join(dir, caFile), rootsPEM([]*x509.Certificate{oldRoot.cert, newRoot.cert})); err != nil {
		t.Fatal(err)
	}
	st, err := LoadState(dir)
	if err != nil || len(st.RootCerts) != 2 || st.Cert.Leaf.Issuer.CommonName != "old" {
		t.Fatalf("stopped after ca.crt: %v", err)
	}
	// Stopped after the key was replaced, before the certificate moved in.
	resp, key := renewalFrom(t, a, newRoot, oldRoot, newRoot)
	resp.CAEndorsements = string(pemBlock("CERTIFICATE", endorseRoot(t, oldRoot, newRoot, time.Time{}).Raw))
	cert, _, _, err := a.checkRenewal(resp, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	writeFileAtomic(filepath.Join(dir, certFile+nextSuffix), pemBlock("CERTIFICATE", cert.Raw))
	writeFileAtomic(filepath.Join(dir, keyFile), pemBlock("PRIVATE KEY", kder))
	st, err = LoadState(dir)
	if err != nil || st.Cert.Leaf.Issuer.CommonName != "new" {
		t.Fatalf("stopped after the key: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, certFile+nextSuffix)); !os.IsNotExist(err) {
		t.Fatalf("the interrupted renewal was not finished: %v", err)
	}
}

func TestRenewalRootChecks(t *testing.T) {
	oldRoot, newRoot := newTestRoot(t, "tether.internal", "old"), newTestRoot(t, "tether.internal", "new")
	foreign := newTestRoot(t, "other.example", "foreign")
	a := enrolled(t, oldRoot, oldRoot)
	tests := []struct {
		name   string
		issuer testRoot
		sent   []testRoot
		want   string
	}{
		{"roots that share none with those trusted", newRoot, []testRoot{newRoot}, "share none"},
		{"a root of another trust domain", oldRoot, []testRoot{oldRoot, foreign}, "not a CA of trust domain"},
		{"a certificate from a root not sent", newRoot, []testRoot{oldRoot}, "does not chain"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, key := renewalFrom(t, a, tc.issuer, tc.sent...)
			if _, _, _, err := a.checkRenewal(resp, key); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("checkRenewal = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Roots that are not CAs are refused in ca.crt too.
	leaf := oldRoot.issue(t, identity.Agent{TrustDomain: "tether.internal", Tenant: "acme", ID: "x"}, oldRoot.key)
	if _, _, err := parseRoots(rootsPEM([]*x509.Certificate{oldRoot.cert, leaf}), "tether.internal"); err == nil {
		t.Fatal("parseRoots accepted a certificate that is not a CA")
	}
	if _, _, err := parseRoots([]byte("not PEM"), "tether.internal"); err == nil {
		t.Fatal("parseRoots accepted no certificate")
	}
}

// TestRenewNowRequests: a relay's request is queued once, with its spread
// bounded.
func TestRenewNowRequests(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "old")
	a := enrolled(t, root, root)
	a.requestRenewal(&protocol.RenewNow{Root: "sha256:00", SpreadMillis: int64(time.Hour / time.Millisecond)})
	a.requestRenewal(&protocol.RenewNow{Root: "sha256:01", SpreadMillis: -5})
	req := <-a.renewNow
	if req.root != "sha256:00" || req.spread != maxRenewSpread {
		t.Fatalf("queued %+v", req)
	}
	select {
	case req := <-a.renewNow:
		t.Fatalf("a second request was queued: %+v", req)
	default:
	}
	if !a.certFromRoot(protocol.FormatFingerprint(protocol.Fingerprint(root.cert.Raw))) {
		t.Fatal("certFromRoot does not recognise the root that issued the certificate")
	}
}
