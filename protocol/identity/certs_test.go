package identity_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherhq/tether/protocol/identity"
)

// The handshake tests start goroutines.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Certificates are generated for each test run; no key is ever stored.

// epoch is the validity reference for every certificate: each is valid from
// an hour before to an hour after it unless a test says otherwise.
var epoch = time.Now()

type authority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// caTemplate is a CA certificate carrying the trust domain's SPIFFE ID, as
// the tenant CA does. An empty td leaves the URI SAN out.
func caTemplate(t testing.TB, td string) *x509.Certificate {
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: "test CA " + td},
		NotBefore:             epoch.Add(-time.Hour),
		NotAfter:              epoch.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	if td != "" {
		tmpl.URIs = []*url.URL{identity.TrustDomainURI(td)}
	}
	return tmpl
}

// newRoot returns a self-signed CA built from tmpl.
func newRoot(t testing.TB, tmpl *x509.Certificate) *authority {
	t.Helper()
	key := newKey(t)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &authority{cert: cert, key: key}
}

// issue signs tmpl with a and returns the certificate and its key.
func (a *authority) issue(t testing.TB, tmpl *x509.Certificate) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key := newKey(t)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, &key.PublicKey, a.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// intermediate issues a subordinate CA.
func (a *authority) intermediate(t testing.TB, td string) *authority {
	t.Helper()
	cert, key := a.issue(t, caTemplate(t, td))
	return &authority{cert: cert, key: key}
}

func leafTemplate(t testing.TB, eku x509.ExtKeyUsage, uris ...*url.URL) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber: serial(t),
		NotBefore:    epoch.Add(-time.Hour),
		NotAfter:     epoch.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{eku},
		URIs:         uris,
	}
}

func relayTemplate(t testing.TB, td string) *x509.Certificate {
	return leafTemplate(t, x509.ExtKeyUsageServerAuth, identity.RelayURI(td))
}

func agentTemplate(t testing.TB, a identity.Agent) *x509.Certificate {
	return leafTemplate(t, x509.ExtKeyUsageClientAuth, a.URI())
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func tlsCert(key *ecdsa.PrivateKey, chain ...*x509.Certificate) tls.Certificate {
	c := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
