package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net/url"
	"time"

	"github.com/tetherhq/tether/protocol/identity"
)

// SignBackend issues a client certificate for backend b to pub: the
// identity a SaaS backend presents at the relay's TLS front door.
func (c *CA) SignBackend(pub crypto.PublicKey, b identity.Backend, lifetime time.Duration, now time.Time) (*x509.Certificate, error) {
	if b.TrustDomain != c.td {
		return nil, fmt.Errorf("sign backend: trust domain %q is not this CA's %q", b.TrustDomain, c.td)
	}
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("sign backend: %w", err)
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: b.Name, OrganizationalUnit: []string{"backend"}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{b.URI()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.key)
	if err != nil {
		return nil, fmt.Errorf("sign backend certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}
