// Package identity names the principals of a Tether deployment with SPIFFE
// IDs, extracts them from verified certificates, and builds the mutual-TLS
// configurations shared by agent and relay.
//
//	spiffe://<trust-domain>/tenant/<tenant>/agent/<agent-id>   an agent
//	spiffe://<trust-domain>/relay                               a relay, to agents
//	spiffe://<trust-domain>/relay/<relay-id>                    a relay, to the other relays of its cluster
//	spiffe://<trust-domain>/backend/<name>                      a SaaS backend
//	spiffe://<trust-domain>/operator/<name>                     an operator
//
// The tenant of an agent is always taken from its verified certificate, never
// from anything the agent says.
package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Agent is the identity of one enrolled agent.
type Agent struct {
	TrustDomain string
	Tenant      string
	ID          string
}

// URI returns the agent's SPIFFE ID as a URL (for a certificate's URI SAN).
func (a Agent) URI() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: a.TrustDomain, Path: "/tenant/" + a.Tenant + "/agent/" + a.ID}
}

func (a Agent) String() string { return a.URI().String() }

// Validate checks every part of a.
func (a Agent) Validate() error {
	if err := ValidateTrustDomain(a.TrustDomain); err != nil {
		return err
	}
	if err := ValidateName("tenant", a.Tenant); err != nil {
		return err
	}
	return ValidateName("agent id", a.ID)
}

// ParseAgent parses a SPIFFE ID of the agent form.
func ParseAgent(s string) (Agent, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Agent{}, fmt.Errorf("parse agent identity: %w", err)
	}
	a, err := agentFromURL(u)
	if err == nil && s != a.String() {
		return Agent{}, fmt.Errorf("agent identity %q: not in canonical form (%q)", s, a.String())
	}
	return a, err
}

func agentFromURL(u *url.URL) (Agent, error) {
	if u.Scheme != "spiffe" || u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return Agent{}, fmt.Errorf("agent identity %q: not a SPIFFE ID", u.String())
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 4 || parts[0] != "tenant" || parts[2] != "agent" {
		return Agent{}, fmt.Errorf("agent identity %q: path is not /tenant/<tenant>/agent/<id>", u.String())
	}
	a := Agent{TrustDomain: u.Host, Tenant: parts[1], ID: parts[3]}
	if err := a.Validate(); err != nil {
		return Agent{}, fmt.Errorf("agent identity %q: %w", u.String(), err)
	}
	if err := canonical(u, a.URI()); err != nil {
		return Agent{}, fmt.Errorf("agent identity %q: %w", u.String(), err)
	}
	return a, nil
}

// AgentFromCertificate extracts the agent identity from a certificate that
// has already been verified. It requires exactly one URI SAN, of agent form,
// in trust domain td.
func AgentFromCertificate(cert *x509.Certificate, td string) (Agent, error) {
	if len(cert.URIs) != 1 {
		return Agent{}, fmt.Errorf("agent certificate has %d URI SANs, want exactly 1", len(cert.URIs))
	}
	a, err := agentFromURL(cert.URIs[0])
	if err != nil {
		return Agent{}, err
	}
	if a.TrustDomain != td {
		return Agent{}, fmt.Errorf("agent certificate is for trust domain %q, this relay serves %q", a.TrustDomain, td)
	}
	return a, nil
}

// RelayURI is the SPIFFE ID every relay of trust domain td presents.
func RelayURI(td string) *url.URL { return &url.URL{Scheme: "spiffe", Host: td, Path: "/relay"} }

// RelayDNSName is a DNS name every relay certificate carries besides its
// SPIFFE ID, for clients that check a server by host name only (curl in
// the install script): they pin the relay's CA and ask for this name.
// ".invalid" is reserved (RFC 6761) and never resolves, so the name cannot
// belong to anyone else.
const RelayDNSName = "relay.tether.invalid"

// TrustDomainURI is the SPIFFE ID of the trust domain itself; the tenant CA
// carries it as its URI SAN.
func TrustDomainURI(td string) *url.URL { return &url.URL{Scheme: "spiffe", Host: td} }

// ValidateName checks a tenant name, service name or agent id: a DNS label of
// lower-case letters, digits and hyphens, 1 to 63 characters, not starting or
// ending with a hyphen. Tenants and services appear in addresses of the form
// <service>.<tenant>.tether, so they must be DNS labels.
func ValidateName(kind, s string) error {
	if s == "" {
		return fmt.Errorf("%s name is empty", kind)
	}
	if len(s) > 63 {
		return fmt.Errorf("%s name %q is longer than 63 characters", kind, s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return fmt.Errorf("%s name %q: use lower-case letters, digits and inner hyphens only", kind, s)
		}
	}
	return nil
}

// ValidateTrustDomain checks a trust domain: lower-case letters, digits,
// dots, hyphens and underscores, at most 255 characters.
func ValidateTrustDomain(td string) error {
	if td == "" {
		return errors.New("trust domain is empty")
	}
	if len(td) > 255 {
		return fmt.Errorf("trust domain %q is longer than 255 characters", td)
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("trust domain %q: use lower-case letters, digits, '.', '-' and '_' only", td)
		}
	}
	return nil
}

// canonical refuses a SPIFFE ID u that names identity want in another
// spelling than want's own: a percent-encoded path ("/agent/%61bc" for
// "abc"), an empty query ("…?"), an upper-case trust domain. A CA of the
// relay's issues only canonical IDs; another spelling in a certificate
// is no identity the relay gave, and would be compared, logged and
// audited as a string that is not the one the relay knows.
func canonical(u, want *url.URL) error {
	if got := u.String(); got != want.String() {
		return fmt.Errorf("not in canonical form (%q)", want.String())
	}
	return nil
}
