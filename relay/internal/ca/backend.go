package ca

import (
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
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
	cert, err := signClient(root, pub, pkix.Name{CommonName: b.Name, OrganizationalUnit: []string{"backend"}}, b.URI(), lifetime, now)
	if err != nil {
		return nil, fmt.Errorf("sign backend certificate: %w", err)
	}
	return cert, nil
}
