package trust

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/audit"
)

// PeerALPN is the protocol of relay-to-relay links.
const PeerALPN = "tether-peer/1"

// peerCertLifetime is the validity of a relay's relay-to-relay
// certificate; it is re-issued when a third of its life remains or the
// serving root changed.
const peerCertLifetime = 7 * 24 * time.Hour

// Peer is a relay's side of its relay-to-relay links: its certificate
// spiffe://<td>/relay/<id>, issued by the cluster's CA, and the TLS
// configurations that accept only other relays of the same CA.
type Peer struct {
	auth     *Authority
	refusals *refusals
	id       string
	now      func() time.Time

	mu   sync.Mutex // guards cert
	cert *tls.Certificate
}

// NewPeer returns the relay-to-relay TLS of relay id. It issues the first
// certificate, so that an id that cannot be certified is reported at once.
// Refused peers are audited in log (nil: not at all), which writes their
// sums while it runs (audit.Log.Every).
func NewPeer(auth *Authority, log *audit.Log, id string, now func() time.Time) (*Peer, error) {
	p := &Peer{auth: auth, refusals: newRefusals(log, now), id: id, now: now}
	if _, err := p.certificate(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Peer) certificate() (*tls.Certificate, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	authority := p.auth.CA()
	if p.cert != nil && now.Before(p.cert.Leaf.NotAfter.Add(-peerCertLifetime/3)) &&
		bytes.Equal(p.cert.Leaf.RawIssuer, authority.Serving().Cert.RawSubject) {
		return p.cert, nil
	}
	c, err := authority.IssuePeer(p.id, peerCertLifetime, now)
	if err != nil {
		return nil, err
	}
	p.cert = c
	return c, nil
}

// VerifyPeer checks a peer relay's certificate chain against the CA and
// its relay-to-relay identity: agent, backend and operator certificates of
// the same CA, and certificates of another CA, are refused.
func (a *Authority) VerifyPeer(certs []*x509.Certificate, now time.Time) (identity.Relay, error) {
	if len(certs) == 0 {
		return identity.Relay{}, errors.New("peer presented no certificate")
	}
	authority := a.CA()
	if err := VerifyClientChain(authority, certs, now); err != nil {
		return identity.Relay{}, err
	}
	id, err := identity.RelayFromCertificate(certs[0], authority.TrustDomain())
	if err != nil {
		return identity.Relay{}, identityError{err}
	}
	return id, nil
}

// Listener is the TLS configuration of the relay-to-relay listener: both
// sides present relay-to-relay certificates of the cluster's CA. A
// refused peer is audited (queued, as every refusal) as from the
// connection's address (refusals.go).
func (p *Peer) Listener() *tls.Config { return perConnection(p.listener) }

// listener is the TLS configuration of a connection to the relay-to-relay
// listener from remote.
func (p *Peer) listener(remote net.Addr) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		NextProtos:     []string{PeerALPN},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return p.certificate() },
		ClientAuth:     tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			r, err := p.auth.VerifyPeer(cs.PeerCertificates, p.now())
			if err == nil && r.ID == p.id {
				err = identityError{fmt.Errorf("peer presented this relay's own identity %s", r)}
			}
			if err != nil {
				return p.refusals.refused(doorPeer, remote, cs.PeerCertificates, err,
					audit.Record{Kind: audit.Handshake, Outcome: "unauthenticated", Actor: "peer"})
			}
			return nil
		},
	}
}

// Dialer is the TLS configuration of a link this relay opens to relay
// want: it accepts only that relay's relay-to-relay certificate.
func (p *Peer) Dialer(want string) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		NextProtos:           []string{PeerALPN},
		ServerName:           want, // unused for verification: the identity is checked below
		InsecureSkipVerify:   true, // the chain and identity are verified in VerifyConnection
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return p.certificate() },
		VerifyConnection: func(cs tls.ConnectionState) error {
			r, err := p.auth.VerifyPeer(cs.PeerCertificates, p.now())
			if err != nil {
				return fmt.Errorf("peer relay %s: %w", want, err)
			}
			if r.ID != want {
				return fmt.Errorf("peer at this address is relay %q, not %q", r.ID, want)
			}
			return nil
		},
	}
}
