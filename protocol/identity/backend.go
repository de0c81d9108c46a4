package identity

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"
)

// Backend is the identity of a SaaS backend that authenticates to the
// relay's front door with a client certificate:
//
//	spiffe://<trust-domain>/backend/<name>
type Backend struct {
	TrustDomain string
	Name        string
}

// URI returns the backend's SPIFFE ID as a URL.
func (b Backend) URI() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: b.TrustDomain, Path: "/backend/" + b.Name}
}

func (b Backend) String() string { return b.URI().String() }

// Validate checks every part of b.
func (b Backend) Validate() error {
	if err := ValidateTrustDomain(b.TrustDomain); err != nil {
		return err
	}
	return ValidateName("backend", b.Name)
}

// ParseBackend parses a SPIFFE ID of the backend form.
func ParseBackend(s string) (Backend, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Backend{}, fmt.Errorf("parse backend identity: %w", err)
	}
	b, err := backendFromURL(u)
	if err == nil && s != b.String() {
		return Backend{}, fmt.Errorf("backend identity %q: not in canonical form (%q)", s, b.String())
	}
	return b, err
}

func backendFromURL(u *url.URL) (Backend, error) {
	if u.Scheme != "spiffe" || u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || u.RawPath != "" {
		return Backend{}, fmt.Errorf("backend identity %q: not a SPIFFE ID", u.String())
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 2 || parts[0] != "backend" {
		return Backend{}, fmt.Errorf("backend identity %q: path is not /backend/<name>", u.String())
	}
	b := Backend{TrustDomain: u.Host, Name: parts[1]}
	if err := b.Validate(); err != nil {
		return Backend{}, fmt.Errorf("backend identity %q: %w", u.String(), err)
	}
	if err := canonical(u, b.URI()); err != nil {
		return Backend{}, fmt.Errorf("backend identity %q: %w", u.String(), err)
	}
	return b, nil
}

// BackendFromCertificate extracts the backend identity from a certificate
// that has already been verified. It requires exactly one URI SAN, of
// backend form, in trust domain td.
func BackendFromCertificate(cert *x509.Certificate, td string) (Backend, error) {
	if len(cert.URIs) != 1 {
		return Backend{}, fmt.Errorf("backend certificate has %d URI SANs, want exactly 1", len(cert.URIs))
	}
	b, err := backendFromURL(cert.URIs[0])
	if err != nil {
		return Backend{}, err
	}
	if b.TrustDomain != td {
		return Backend{}, fmt.Errorf("backend certificate is for trust domain %q, this relay serves %q", b.TrustDomain, td)
	}
	return b, nil
}
