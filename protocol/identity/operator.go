package identity

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"
)

// Operator is the identity of a person or tool that administers the relay
// through its admin API with a client certificate:
//
//	spiffe://<trust-domain>/operator/<name>
type Operator struct {
	TrustDomain string
	Name        string
}

// URI returns the operator's SPIFFE ID as a URL.
func (o Operator) URI() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: o.TrustDomain, Path: "/operator/" + o.Name}
}

func (o Operator) String() string { return o.URI().String() }

// Validate checks every part of o.
func (o Operator) Validate() error {
	if err := ValidateTrustDomain(o.TrustDomain); err != nil {
		return err
	}
	return ValidateName("operator", o.Name)
}

// ParseOperator parses a SPIFFE ID of the operator form.
func ParseOperator(s string) (Operator, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Operator{}, fmt.Errorf("parse operator identity: %w", err)
	}
	o, err := operatorFromURL(u)
	if err == nil && s != o.String() {
		return Operator{}, fmt.Errorf("operator identity %q: not in canonical form (%q)", s, o.String())
	}
	return o, err
}

func operatorFromURL(u *url.URL) (Operator, error) {
	if u.Scheme != "spiffe" || u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || u.RawPath != "" {
		return Operator{}, fmt.Errorf("operator identity %q: not a SPIFFE ID", u.String())
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 2 || parts[0] != "operator" {
		return Operator{}, fmt.Errorf("operator identity %q: path is not /operator/<name>", u.String())
	}
	o := Operator{TrustDomain: u.Host, Name: parts[1]}
	if err := o.Validate(); err != nil {
		return Operator{}, fmt.Errorf("operator identity %q: %w", u.String(), err)
	}
	if err := canonical(u, o.URI()); err != nil {
		return Operator{}, fmt.Errorf("operator identity %q: %w", u.String(), err)
	}
	return o, nil
}

// OperatorFromCertificate extracts the operator identity from a
// certificate that has already been verified. It requires exactly one URI
// SAN, of operator form, in trust domain td: agent and backend
// certificates of the same CA are refused.
func OperatorFromCertificate(cert *x509.Certificate, td string) (Operator, error) {
	if len(cert.URIs) != 1 {
		return Operator{}, fmt.Errorf("operator certificate has %d URI SANs, want exactly 1", len(cert.URIs))
	}
	o, err := operatorFromURL(cert.URIs[0])
	if err != nil {
		return Operator{}, err
	}
	if o.TrustDomain != td {
		return Operator{}, fmt.Errorf("operator certificate is for trust domain %q, this relay serves %q", o.TrustDomain, td)
	}
	return o, nil
}
