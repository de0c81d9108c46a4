package ca

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/identity"
)

// TestIssuePeer: a relay-to-relay certificate names its relay, is good for
// both ends of a TLS connection, comes from the root every relay trusts,
// and is taken for nothing else.
func TestIssuePeer(t *testing.T) {
	s := Dir(t.TempDir())
	if _, _, err := LoadOrCreate(ctx, s, "tether.internal", t0); err != nil {
		t.Fatal(err)
	}
	c, err := Rotate(ctx, s, t0, false)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := c.IssuePeer("r-2", time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if len(cert.Certificate) != 1 || cert.PrivateKey == nil {
		t.Fatalf("chain of %d certificates, key %v", len(cert.Certificate), cert.PrivateKey != nil)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: c.Pool(), CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("verify for usage %v: %v", usage, err)
		}
	}
	// From the serving (oldest) root during a rotation.
	if err := leaf.CheckSignatureFrom(c.Serving().Cert); err != nil {
		t.Fatalf("not from the serving root: %v", err)
	}
	if got, err := identity.RelayFromCertificate(leaf, "tether.internal"); err != nil || got.ID != "r-2" {
		t.Fatalf("RelayFromCertificate = %+v, %v", got, err)
	}
	if !leaf.NotAfter.Equal(t0.Add(time.Hour)) || !leaf.NotBefore.Equal(t0.Add(-5*time.Minute)) {
		t.Fatalf("valid %v to %v", leaf.NotBefore, leaf.NotAfter)
	}
	if _, err := identity.AgentFromCertificate(leaf, "tether.internal"); err == nil {
		t.Error("a relay-to-relay certificate passes as an agent's")
	}
	if _, err := identity.OperatorFromCertificate(leaf, "tether.internal"); err == nil {
		t.Error("a relay-to-relay certificate passes as an operator's")
	}
	if _, err := identity.BackendFromCertificate(leaf, "tether.internal"); err == nil {
		t.Error("a relay-to-relay certificate passes as a backend's")
	}
	// Never beyond the root.
	long, err := c.IssuePeer("r-2", 100*365*24*time.Hour, t0)
	if err != nil || !long.Leaf.NotAfter.Equal(c.Serving().Cert.NotAfter) {
		t.Fatalf("long lifetime: %v, until %v", err, long.Leaf.NotAfter)
	}
	for _, bad := range []string{"", "R2", "a/b", "relay.example"} {
		if _, err := c.IssuePeer(bad, time.Hour, t0); err == nil {
			t.Errorf("IssuePeer(%q) issued a certificate", bad)
		}
	}
}
