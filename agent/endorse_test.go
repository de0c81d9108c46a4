package agent

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
)

// endorseRoot issues, with by's key, the endorsement of root that the
// relay's CA makes at a rotation: root's subject and key, issued by by;
// valid for an hour unless notAfter is set.
func endorseRoot(t *testing.T, by, root testRoot, notAfter time.Time) *x509.Certificate {
	t.Helper()
	if notAfter.IsZero() {
		notAfter = time.Now().Add(time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), RawSubject: root.cert.RawSubject,
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter,
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, URIs: root.cert.URIs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, by.cert, root.cert.PublicKey, by.key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func endorsementsPEM(certs ...*x509.Certificate) string {
	return string(rootsPEM(certs))
}

// The audit's scenario: an answer to a renewal (from whoever holds one
// relay's certificate key, without the CA's) brings a root of its own
// with a certificate from it, and keeps the genuine root so as to share
// one with those trusted. No trusted root endorses it: the renewal is
// refused, saying why, and the agent keeps its roots and certificate, on
// disk and in memory, so that the next answer cannot drop the genuine
// root for the attacker's.
func TestRenewalRefusesUnendorsedRoot(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "tenant CA")
	evil := newTestRoot(t, "tether.internal", "attacker")
	a := enrolled(t, root, root)
	before, err := LoadState(a.state.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, endorsements := range map[string]string{
		"none":          "",
		"self-endorsed": endorsementsPEM(endorseRoot(t, evil, evil, time.Time{})),
	} {
		resp, key := renewalFrom(t, a, evil, root, evil)
		resp.CAEndorsements = endorsements
		_, sent, caPEM, err := a.checkRenewal(resp, key)
		if err == nil {
			t.Fatalf("%s: renewal accepted; the agent would trust %d roots", name, len(sent))
		}
		if !strings.Contains(err.Error(), `CA root "attacker"`) || !strings.Contains(err.Error(), "which no root this agent trusts endorses") {
			t.Fatalf("%s: the refusal does not say why: %v", name, err)
		}
		if caPEM != nil || sent != nil {
			t.Fatalf("%s: a refused renewal returned roots to install", name)
		}
	}
	if got := *a.rootList.Load(); len(got) != 1 || !got[0].Equal(root.cert) {
		t.Fatalf("the agent trusts %d roots after the refusals", len(got))
	}
	if why := a.Status().CARootRefused; !strings.Contains(why, `CA root "attacker"`) {
		t.Fatalf("the status does not say why the renewal was refused: %q", why)
	}
	after, err := LoadState(a.state.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(after.RootCerts) != 1 || !after.RootCerts[0].Equal(root.cert) || !bytes.Equal(after.Cert.Leaf.Raw, before.Cert.Leaf.Raw) {
		t.Fatal("ca.crt or the certificate changed after a refused renewal")
	}
}

// Each way an endorsement can fail to vouch for a new root refuses the
// renewal; hostile endorsement fields (too many, too big, not PEM, not a
// certificate) are refused without reading further.
func TestRenewalEndorsementChecks(t *testing.T) {
	oldRoot, newRoot := newTestRoot(t, "tether.internal", "old"), newTestRoot(t, "tether.internal", "new")
	other := newTestRoot(t, "tether.internal", "other")
	twin := newTestRoot(t, "tether.internal", "new") // newRoot's name, another key
	a := enrolled(t, oldRoot, oldRoot)
	good := endorseRoot(t, oldRoot, newRoot, time.Time{})
	forged := *good
	forged.Raw = bytes.Clone(good.Raw)
	forged.Raw[len(forged.Raw)-3] ^= 1 // the signature
	many := make([]*x509.Certificate, maxEndorsements+1)
	for i := range many {
		many[i] = good
	}
	tests := []struct {
		name, endorsements, want string
	}{
		{"by a root not trusted", endorsementsPEM(endorseRoot(t, other, newRoot, time.Time{})), "no root this agent trusts endorses"},
		{"of another key under the same name", endorsementsPEM(endorseRoot(t, oldRoot, twin, time.Time{})), "no root this agent trusts endorses"},
		{"expired", endorsementsPEM(endorseRoot(t, oldRoot, newRoot, time.Now().Add(-time.Hour))), "no root this agent trusts endorses"},
		{"with a broken signature", endorsementsPEM(&forged), "no root this agent trusts endorses"},
		{"not PEM", "garbage", "unusable CA endorsements"},
		{"a key, not a certificate", string(pemBlock("PRIVATE KEY", []byte{1, 2, 3})), "unusable CA endorsements"},
		{"too many", endorsementsPEM(many...), "unusable CA endorsements"},
		{"too big", endorsementsPEM(good) + strings.Repeat(" ", maxEndorsementsSize), "unusable CA endorsements"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, key := renewalFrom(t, a, newRoot, oldRoot, newRoot)
			resp.CAEndorsements = tc.endorsements
			if _, _, _, err := a.checkRenewal(resp, key); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("checkRenewal = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// The same answer with the old root's endorsement is accepted; so is
	// one that sends no root the agent does not trust, endorsed or not.
	resp, key := renewalFrom(t, a, newRoot, oldRoot, newRoot)
	resp.CAEndorsements = endorsementsPEM(endorseRoot(t, other, newRoot, time.Time{}), good)
	if a.Status().CARootRefused == "" {
		t.Fatal("the status does not say why the last renewal was refused")
	}
	if _, roots, _, err := a.checkRenewal(resp, key); err != nil || len(roots) != 2 {
		t.Fatalf("endorsed renewal: %d roots, %v", len(roots), err)
	}
	if why := a.Status().CARootRefused; why != "" {
		t.Fatalf("the status still shows a refusal after an accepted renewal: %q", why)
	}
	resp, key = renewalFrom(t, a, oldRoot, oldRoot)
	resp.CAEndorsements = "garbage"
	if _, _, _, err := a.checkRenewal(resp, key); err != nil {
		t.Fatalf("renewal with no new root: %v", err)
	}
}

// An agent that trusts root 1 accepts roots 2 and 3 sent together with the
// endorsements 1→2 and 2→3 (the chain two rotations leave), but not root 3
// when root 2, its endorser, is not sent.
func TestRenewalThroughEndorsementChain(t *testing.T) {
	r1, r2, r3 := newTestRoot(t, "tether.internal", "r1"), newTestRoot(t, "tether.internal", "r2"), newTestRoot(t, "tether.internal", "r3")
	a := enrolled(t, r1, r1)
	chain := endorsementsPEM(endorseRoot(t, r2, r3, time.Time{}), endorseRoot(t, r1, r2, time.Time{})) // newest first: order does not matter
	resp, key := renewalFrom(t, a, r3, r1, r2, r3)
	resp.CAEndorsements = chain
	if _, roots, _, err := a.checkRenewal(resp, key); err != nil || len(roots) != 3 {
		t.Fatalf("renewal through a chain: %d roots, %v", len(roots), err)
	}
	resp, key = renewalFrom(t, a, r3, r1, r3)
	resp.CAEndorsements = chain
	if _, _, _, err := a.checkRenewal(resp, key); err == nil || !strings.Contains(err.Error(), `"r3"`) {
		t.Fatalf("root 3 without root 2: %v", err)
	}
}

// FuzzEndorsements: whatever a relay sends as endorsements, parsing is
// bounded and never panics, and checking them accepts the new root only
// with the one endorsement its trusted root made (a signature cannot be
// forged).
func FuzzEndorsements(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	trusted := fuzzRoot(f, "trusted", key, nil, nil)
	newKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	newRoot := fuzzRoot(f, "new", newKey, nil, nil)
	good := fuzzRoot(f, "new", newKey, trusted, key)
	f.Add(pemBlock("CERTIFICATE", good.Raw))
	f.Add(append(pemBlock("CERTIFICATE", newRoot.Raw), pemBlock("CERTIFICATE", good.Raw)...))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, perr := parseEndorsements(data)
		if perr == nil && (len(certs) > maxEndorsements || len(data) > maxEndorsementsSize) {
			t.Fatalf("%d endorsements in %d bytes accepted", len(certs), len(data))
		}
		err := checkEndorsed([]*x509.Certificate{trusted, newRoot}, []*x509.Certificate{trusted}, data, time.Now())
		if err == nil && (perr != nil || !slices.ContainsFunc(certs, func(c *x509.Certificate) bool {
			return bytes.Equal(c.RawTBSCertificate, good.RawTBSCertificate)
		})) {
			t.Fatal("the new root accepted without its endorsement")
		}
	})
}

// fuzzRoot makes a root certificate named name for key, issued by parent
// (with parentKey) or self-signed.
func fuzzRoot(f *testing.F, name string, key *ecdsa.PrivateKey, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) *x509.Certificate {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		URIs:     []*url.URL{identity.TrustDomainURI("tether.internal")},
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		f.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		f.Fatal(err)
	}
	return c
}

// Enrolment during a rotation brings the new root too: the agent keeps it
// only with the pinned root's endorsement, and otherwise writes nothing.
func TestEnrolmentRefusesUnendorsedRoot(t *testing.T) {
	pinned, newRoot := newTestRoot(t, "tether.internal", "old"), newTestRoot(t, "tether.internal", "new")
	id := identity.Agent{TrustDomain: "tether.internal", Tenant: "acme", ID: "a1"}
	for _, endorsed := range []bool{false, true} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		resp := &protocol.EnrollResponse{AgentID: id.ID, Tenant: id.Tenant, TrustDomain: id.TrustDomain,
			Certificate:    string(pemBlock("CERTIFICATE", newRoot.issue(t, id, key).Raw)),
			CACertificates: string(rootsPEM([]*x509.Certificate{pinned.cert, newRoot.cert}))}
		if endorsed {
			resp.CAEndorsements = endorsementsPEM(endorseRoot(t, pinned, newRoot, time.Time{}))
		}
		dir := t.TempDir()
		st, err := storeEnrolment(EnrollOptions{StateDir: dir, Relay: "relay:7443"}, resp, key, pinned.cert)
		switch {
		case !endorsed && (err == nil || !strings.Contains(err.Error(), "which no root this agent trusts endorses")):
			t.Fatalf("unendorsed root at enrolment: %v", err)
		case !endorsed:
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Fatalf("a refused enrolment wrote %d files", len(entries))
			}
		case err != nil || len(st.RootCerts) != 2:
			t.Fatalf("endorsed root at enrolment: %v", err)
		}
	}
}
