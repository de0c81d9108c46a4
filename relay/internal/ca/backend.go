package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/tetherhq/tether/protocol/identity"
)

// SignBackend issues, from root, a client certificate for backend b to
// pub: the identity a SaaS backend presents at the relay's TLS front door.
func (c *CA) SignBackend(root *Root, pub crypto.PublicKey, b identity.Backend, lifetime time.Duration, now time.Time) (*x509.Certificate, error) {
	if root == nil || root.key == nil {
		return nil, errors.New("sign backend: no active root to sign with")
	}
	if b.TrustDomain != c.td {
		return nil, fmt.Errorf("sign backend: trust domain %q is not this CA's %q", b.TrustDomain, c.td)
	}
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("sign backend: %w", err)
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(root.Cert.NotAfter) {
		notAfter = root.Cert.NotAfter
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
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Cert, pub, root.key)
	if err != nil {
		return nil, fmt.Errorf("sign backend certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}
