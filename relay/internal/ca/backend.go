package ca

import (
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net/url"
	"time"

	"github.com/tetherhq/tether/protocol/identity"
)

// SignBackend issues, from root, a client certificate for backend b to
// pub: the identity a SaaS backend presents at the relay's TLS front door.
func (c *CA) SignBackend(root *Root, pub crypto.PublicKey, b identity.Backend, lifetime time.Duration, now time.Time) (*x509.Certificate, error) {
	return c.signNamed(root, pub, "backend", b.TrustDomain, b.Name, b.Validate, b.URI(), lifetime, now)
}

// SignOperator issues, from root, a client certificate for operator o to
// pub: the identity an operator presents at the relay's admin API.
func (c *CA) SignOperator(root *Root, pub crypto.PublicKey, o identity.Operator, lifetime time.Duration, now time.Time) (*x509.Certificate, error) {
	return c.signNamed(root, pub, "operator", o.TrustDomain, o.Name, o.Validate, o.URI(), lifetime, now)
}

// signNamed issues a client certificate for a named identity of kind
// ("backend", "operator") in this CA's trust domain.
func (c *CA) signNamed(root *Root, pub crypto.PublicKey, kind, td, name string, validate func() error, uri *url.URL, lifetime time.Duration, now time.Time) (*x509.Certificate, error) {
	if root == nil || root.key == nil {
		return nil, fmt.Errorf("sign %s: no active root to sign with", kind)
	}
	if td != c.td {
		return nil, fmt.Errorf("sign %s: trust domain %q is not this CA's %q", kind, td, c.td)
	}
	if err := validate(); err != nil {
		return nil, fmt.Errorf("sign %s: %w", kind, err)
	}
	cert, err := signClient(root, pub, pkix.Name{CommonName: name, OrganizationalUnit: []string{kind}}, uri, lifetime, now)
	if err != nil {
		return nil, fmt.Errorf("sign %s certificate: %w", kind, err)
	}
	return cert, nil
}
