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

// SignOperator issues, from root, a client certificate for operator o to
// pub: the identity an operator presents at the relay's admin API.
func (c *CA) SignOperator(root *Root, pub crypto.PublicKey, o identity.Operator, lifetime time.Duration, now time.Time) (*x509.Certificate, error) {
	if root == nil || root.key == nil {
		return nil, errors.New("sign operator: no active root to sign with")
	}
	if o.TrustDomain != c.td {
		return nil, fmt.Errorf("sign operator: trust domain %q is not this CA's %q", o.TrustDomain, c.td)
	}
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("sign operator: %w", err)
	}
	cert, err := signClient(root, pub, pkix.Name{CommonName: o.Name, OrganizationalUnit: []string{"operator"}}, o.URI(), lifetime, now)
	if err != nil {
		return nil, fmt.Errorf("sign operator certificate: %w", err)
	}
	return cert, nil
}
