// Package trust is what a relay trusts and how it proves itself: the live
// tenant CA (Authority), the verification of every client certificate
// chain (agents, backends, operators), the relay's own server certificate
// and every tls.Config its listeners use (Server), and certificate files
// supplied by an operator (CertFile).
package trust

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/ca"
)

// Authority is the tenant CA as the relay last read it from its storage
// (the data directory, or the store a cluster shares); Reload reads it
// again after an operator changed its roots, from this process or another.
type Authority struct {
	storage ca.Storage // where the CA is kept

	mu       sync.Mutex // serialises Reload
	manifest []byte     // the CA's roots.json as last applied
	cur      atomic.Pointer[ca.CA]
}

// NewAuthority starts from c, read from s.
func NewAuthority(s ca.Storage, c *ca.CA) *Authority {
	a := &Authority{storage: s, manifest: c.Manifest()}
	a.cur.Store(c)
	return a
}

// CA is the tenant CA as last read.
func (a *Authority) CA() *ca.CA { return a.cur.Load() }

// Storage is where the CA is kept.
func (a *Authority) Storage() ca.Storage { return a.storage }

// TrustDomain is the SPIFFE trust domain of the CA.
func (a *Authority) TrustDomain() string { return a.CA().TrustDomain() }

// Reload reads the CA's roots again. When they changed it returns the CA
// before and after; otherwise prev is nil. A CA that changed but cannot be
// read (another change may be under way) is an error, and the current one
// is kept.
func (a *Authority) Reload(ctx context.Context) (prev, next *ca.CA, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	raw, err := ca.ReadManifest(ctx, a.storage)
	if err != nil {
		return nil, nil, fmt.Errorf("read the CA's roots: %w", err)
	}
	if bytes.Equal(raw, a.manifest) {
		return nil, a.CA(), nil
	}
	next, err = ca.Load(ctx, a.storage)
	if err != nil {
		return nil, nil, fmt.Errorf("the CA's roots changed but cannot be read; keeping the current ones: %w", err)
	}
	prev = a.cur.Swap(next)
	a.manifest = raw
	return prev, next, nil
}

// Replace makes c the CA served from now on (after this process changed
// it).
func (a *Authority) Replace(c *ca.CA) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cur.Store(c)
	a.manifest = c.Manifest()
}

// VerifyClientChain verifies certs[0] (certs is not empty) as a client
// certificate from one of authority's roots at time at, with the rest of
// certs as intermediates.
func VerifyClientChain(authority *ca.CA, certs []*x509.Certificate, at time.Time) error {
	opts := x509.VerifyOptions{
		Roots:         authority.Pool(),
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		CurrentTime:   at,
	}
	for _, c := range certs[1:] {
		opts.Intermediates.AddCert(c)
	}
	_, err := certs[0].Verify(opts)
	return err
}

// VerifyAgent checks an agent's certificate chain against the tenant CA
// and its SPIFFE identity. An expired certificate whose chain is otherwise
// good passes here, so that the hello can refuse it with a message the
// agent's operator understands (a TLS alert cannot say "enrol again").
func (a *Authority) VerifyAgent(certs []*x509.Certificate, now time.Time) (identity.Agent, error) {
	if len(certs) == 0 {
		return identity.Agent{}, errors.New("agent presented no certificate")
	}
	leaf := certs[0]
	authority := a.CA()
	at := now
	if at.After(leaf.NotAfter) {
		at = leaf.NotAfter
	}
	if err := VerifyClientChain(authority, certs, at); err != nil {
		if old := authority.RetiredIssuerOf(leaf); old != nil {
			return identity.Agent{}, &retiredRootError{err: err, msg: fmt.Sprintf("certificate issued by CA root %d (%s), retired at %s: the agent must enrol again with a new join token",
				old.Generation, old.ID(), old.RetiredAt.UTC().Format(time.RFC3339))}
		}
		return identity.Agent{}, err
	}
	id, err := identity.AgentFromCertificate(leaf, authority.TrustDomain())
	if err != nil {
		return identity.Agent{}, identityError{err}
	}
	return id, nil
}

// VerifyBackend checks a client certificate presented at the TLS front
// door: it chains to the relay CA, is valid now, is meant for client
// authentication and names a backend of this trust domain.
func (a *Authority) VerifyBackend(certs []*x509.Certificate, now time.Time) (identity.Backend, error) {
	if len(certs) == 0 {
		return identity.Backend{}, errors.New("backend presented no certificate")
	}
	authority := a.CA()
	if err := VerifyClientChain(authority, certs, now); err != nil {
		return identity.Backend{}, err
	}
	id, err := identity.BackendFromCertificate(certs[0], authority.TrustDomain())
	if err != nil {
		return identity.Backend{}, identityError{err}
	}
	return id, nil
}

// VerifyOperator checks an operator's client certificate at the admin API.
func (a *Authority) VerifyOperator(certs []*x509.Certificate, now time.Time) (identity.Operator, error) {
	if len(certs) == 0 {
		return identity.Operator{}, errors.New("operator presented no certificate")
	}
	authority := a.CA()
	if err := VerifyClientChain(authority, certs, now); err != nil {
		return identity.Operator{}, err
	}
	return identity.OperatorFromCertificate(certs[0], authority.TrustDomain())
}

// WithCertificate adds to an audit record's detail what identifies a
// refused certificate: its issuer, serial and first URI, each clipped to
// maxCertText (a certificate of the peer's own making says what it
// likes, at any length).
func WithCertificate(detail map[string]any, certs []*x509.Certificate) map[string]any {
	if len(certs) > 0 {
		leaf := certs[0]
		detail["issuer"] = protocol.Clip(leaf.Issuer.String(), maxCertText)
		detail["serial"] = protocol.Clip(leaf.SerialNumber.Text(16), maxCertText)
		if len(leaf.URIs) > 0 {
			detail["uri"] = protocol.Clip(leaf.URIs[0].String(), maxCertText)
		}
	}
	return detail
}

// certLifetime is the validity of the relay's own server certificate; it
// is re-issued when a third of its life remains. That third (10 days)
// must outlast a TLS session a backend resumes (crypto/tls keeps one at
// most 7 days), whose certificate the backend verifies again at each
// resumption: a session never carries an expired certificate.
const certLifetime = 30 * 24 * time.Hour

// Server is the relay's side of TLS: its server certificate, issued by the
// tenant CA and renewed as it ages or as the CA's serving root changes,
// and the configurations of its listeners. Handshakes refused for their
// client certificate are audited (refusals.go), queued rather than waited
// for, as every refusal is: a stalled store would otherwise hold each
// refused handshake (and its handshake slot) for the audit writer's 10 s.
type Server struct {
	auth     *Authority
	refusals *refusals
	now      func() time.Time

	certMu sync.Mutex // guards cert
	cert   *tls.Certificate
}

// NewServer returns the TLS side of a relay whose CA is auth. It issues
// the first server certificate, so that a CA that cannot sign is reported
// at start. Refused client certificates are audited in log (nil: not at
// all), which writes their sums while it runs (audit.Log.Every).
func NewServer(auth *Authority, log *audit.Log, now func() time.Time) (*Server, error) {
	s := &Server{auth: auth, refusals: newRefusals(log, now), now: now}
	if _, err := s.Certificate(nil); err != nil {
		return nil, err
	}
	return s, nil
}

// Certificate returns the relay's current server certificate, issuing a
// new one when none exists, a third of its life remains, or the CA's
// serving root changed (a retirement). It is every listener's
// GetCertificate.
func (s *Server) Certificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.certMu.Lock()
	defer s.certMu.Unlock()
	now := s.now()
	authority := s.auth.CA()
	if s.cert != nil && now.Before(s.cert.Leaf.NotAfter.Add(-certLifetime/3)) &&
		bytes.Equal(s.cert.Certificate[len(s.cert.Certificate)-1], authority.Serving().Cert.Raw) {
		return s.cert, nil
	}
	c, err := authority.IssueRelay(certLifetime, now)
	if err != nil {
		return nil, err
	}
	s.cert = c
	return c, nil
}

// Agents is the TLS configuration of agent connections with certificates
// (QUIC, and TCP through AgentsTCP). The chain is verified in
// VerifyConnection (VerifyAgent), which lets an expired but otherwise good
// certificate through to the hello, where it is refused with a message
// saying what to do. It reads the CA's roots at each handshake, so a
// rotation applies to the next connection. A refused certificate is
// audited as from the connection's address (refusals.go).
func (s *Server) Agents() *tls.Config { return perConnection(s.agents) }

// agents is the TLS configuration of an agent connection from remote.
func (s *Server) agents(remote net.Addr) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: s.Certificate,
		NextProtos:     []string{protocol.ALPN},
		ClientAuth:     tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := s.auth.VerifyAgent(cs.PeerCertificates, s.now())
			if err != nil {
				return s.refusals.refused(doorAgent, remote, cs.PeerCertificates, err,
					audit.Record{Kind: audit.Handshake, Outcome: protocol.CodeUnauthenticated.String(), Actor: "agent"})
			}
			return nil
		},
	}
}

// Enrolment is the TLS configuration of enrolling agents, which have no
// certificate yet (TCP only, through AgentsTCP).
func (s *Server) Enrolment() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: s.Certificate,
		NextProtos:     []string{protocol.ALPNEnroll},
		ClientAuth:     tls.NoClientCert,
	}
}

// AgentsTCP picks the TLS configuration of a TCP connection to the agent
// port by ALPN: agents with certificates negotiate tether/1, enrolling
// agents tether-enroll/1.
func (s *Server) AgentsTCP() *tls.Config {
	enrol := s.Enrolment()
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			for _, p := range hello.SupportedProtos {
				switch p {
				case protocol.ALPN:
					return s.agents(remoteOf(hello)), nil
				case protocol.ALPNEnroll:
					return enrol, nil
				}
			}
			return nil, fmt.Errorf("client offered ALPN %q; this port speaks %s and %s", hello.SupportedProtos, protocol.ALPN, protocol.ALPNEnroll)
		},
	}
}

// Front is the TLS configuration of the CONNECT front door over TLS. A
// backend may present a client certificate from the relay CA naming it
// (tether-relay backend certificate); one that does not verify ends the
// handshake and is audited as from the connection's address
// (refusals.go). Without one, the backend authenticates in the CONNECT
// request.
func (s *Server) Front() *tls.Config { return perConnection(s.front) }

// front is the TLS configuration of a connection to the CONNECT front
// door over TLS from remote.
func (s *Server) front(remote net.Addr) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: s.Certificate,
		NextProtos:     []string{"http/1.1"}, // CONNECT hijacks the connection: no HTTP/2
		ClientAuth:     tls.RequestClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil
			}
			_, err := s.auth.VerifyBackend(cs.PeerCertificates, s.now())
			if err != nil {
				return s.refusals.refused(doorConnectTLS, remote, cs.PeerCertificates, fmt.Errorf("backend certificate refused: %w", err),
					audit.Record{Kind: audit.Stream, Outcome: protocol.CodeUnauthenticated.String(), Actor: "unauthenticated", Detail: map[string]any{"auth": "certificate"}})
			}
			return nil
		},
	}
}

// Admin is the admin listener's TLS configuration: the certificate of cf
// when the operator supplied one, else the relay's own. Client
// certificates are requested, and checked by the admin API's
// authentication.
func (s *Server) Admin(cf *CertFile) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ClientAuth: tls.RequestClientCert, NextProtos: []string{"h2", "http/1.1"}, GetCertificate: s.Certificate}
	if cf != nil {
		c.GetCertificate = cf.GetCertificate
	}
	return c
}

// Downloads is the TLS configuration of the download listener (install
// scripts and agent binaries).
func (s *Server) Downloads() *tls.Config {
	return &tls.Config{
		// TLS 1.2 for Windows PowerShell 5.1 (.NET Framework) clients.
		MinVersion:     tls.VersionTLS12,
		GetCertificate: s.Certificate,
		NextProtos:     []string{"http/1.1"},
	}
}
