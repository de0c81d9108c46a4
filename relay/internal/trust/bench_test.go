package trust_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// BenchmarkVerifyAgentChain measures the relay's check of an agent's
// certificate in every agent handshake: chain to the tenant CA, client
// usage, SPIFFE identity in this trust domain.
func BenchmarkVerifyAgentChain(b *testing.B) {
	dir, authority, err := datadir.Open(context.Background(), b.TempDir(), datadir.Options{TrustDomain: "bench.test"}, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dir.Close() })
	auth := trust.NewAuthority(dir.CAStorage(), authority)
	key, err2 := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err2 != nil {
		b.Fatal(err2)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		b.Fatal(err)
	}
	csr, err := ca.CheckCSR(der)
	if err != nil {
		b.Fatal(err)
	}
	want := identity.Agent{TrustDomain: auth.TrustDomain(), Tenant: "acme", ID: "k3n5q7s9u2w4y6a8"}
	cert, err := auth.CA().SignAgent(auth.CA().Signer(), csr, want, 24*time.Hour, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	chain := []*x509.Certificate{cert}
	b.ReportAllocs()
	for b.Loop() {
		if id, err := auth.VerifyAgent(chain, time.Now()); err != nil || id != want {
			b.Fatalf("verifyAgentChain = %+v, %v", id, err)
		}
	}
}
