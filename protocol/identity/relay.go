package identity

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"
)

// Relay is the identity of one relay of a cluster, as it presents itself
// to the other relays on their relay-to-relay links:
//
//	spiffe://<trust-domain>/relay/<id>
//
// It is not the identity a relay presents to agents (RelayURI, the same
// for every relay, with no id): an agent never accepts a relay-to-relay
// certificate as a relay, and a relay never accepts an agent, backend or
// operator certificate as a peer.
type Relay struct {
	TrustDomain string
	// ID names the relay in its cluster: a DNS label (ValidateName).
	ID string
}

// URI returns the relay's SPIFFE ID as a URL (for a certificate's URI SAN).
func (r Relay) URI() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: r.TrustDomain, Path: "/relay/" + r.ID}
}

func (r Relay) String() string { return r.URI().String() }

// Validate checks every part of r.
func (r Relay) Validate() error {
	if err := ValidateTrustDomain(r.TrustDomain); err != nil {
		return err
	}
	return ValidateName("relay id", r.ID)
}

// ParseRelay parses a SPIFFE ID of the relay-to-relay form.
func ParseRelay(s string) (Relay, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Relay{}, fmt.Errorf("parse relay identity: %w", err)
	}
	r, err := relayFromURL(u)
	if err == nil && s != r.String() {
		return Relay{}, fmt.Errorf("relay identity %q: not in canonical form (%q)", s, r.String())
	}
	return r, err
}

func relayFromURL(u *url.URL) (Relay, error) {
	if u.Scheme != "spiffe" || u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || u.RawPath != "" {
		return Relay{}, fmt.Errorf("relay identity %q: not a SPIFFE ID", u.String())
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 2 || parts[0] != "relay" {
		return Relay{}, fmt.Errorf("relay identity %q: path is not /relay/<id>", u.String())
	}
	r := Relay{TrustDomain: u.Host, ID: parts[1]}
	if err := r.Validate(); err != nil {
		return Relay{}, fmt.Errorf("relay identity %q: %w", u.String(), err)
	}
	if err := canonical(u, r.URI()); err != nil {
		return Relay{}, fmt.Errorf("relay identity %q: %w", u.String(), err)
	}
	return r, nil
}

// RelayFromCertificate extracts the identity of a peer relay from a
// certificate that has already been verified. It requires exactly one URI
// SAN, of relay-to-relay form, in trust domain td: agent, backend and
// operator certificates of the same CA, and the relay certificate agents
// see (RelayURI), are refused.
func RelayFromCertificate(cert *x509.Certificate, td string) (Relay, error) {
	if len(cert.URIs) != 1 {
		return Relay{}, fmt.Errorf("relay certificate has %d URI SANs, want exactly 1", len(cert.URIs))
	}
	r, err := relayFromURL(cert.URIs[0])
	if err != nil {
		return Relay{}, err
	}
	if r.TrustDomain != td {
		return Relay{}, fmt.Errorf("relay certificate is for trust domain %q, this relay serves %q", r.TrustDomain, td)
	}
	return r, nil
}
