package identity

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// AgentClientConfig is the TLS configuration an enrolled agent dials the
// relay with: TLS 1.3, ALPN tether/1, the agent's certificate from getCert
// (called at every handshake, so a renewed certificate is picked up), and a
// relay that must chain to roots and carry the relay SPIFFE ID of td.
//
// Relays are authenticated by SPIFFE ID rather than by host name, so an
// agent may reach its relay through any address (IP, load balancer, proxy).
func AgentClientConfig(roots *x509.CertPool, td string, getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		NextProtos:           []string{protocol.ALPN},
		GetClientCertificate: getCert,
		// Host-name verification is replaced by VerifyConnection below.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			return VerifyRelay(cs, roots, td, time.Now())
		},
	}
}

// VerifyRelay checks that the peer of cs is a relay of trust domain td whose
// certificate chains to roots.
func VerifyRelay(cs tls.ConnectionState, roots *x509.CertPool, td string, now time.Time) error {
	if roots == nil {
		return errors.New("no pinned CA to verify the relay against")
	}
	if len(cs.PeerCertificates) == 0 {
		return errors.New("relay presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return fmt.Errorf("relay certificate is not from the pinned tenant CA: %w", err)
	}
	want := RelayURI(td).String()
	for _, u := range leaf.URIs {
		if u.String() == want {
			return nil
		}
	}
	return fmt.Errorf("relay certificate does not carry %s", want)
}

// EnrollClientConfig is the TLS configuration for enrolment. The agent has no
// roots yet; it accepts the relay only if the chain the relay presents
// contains a CA certificate whose SHA-256 fingerprint is caFingerprint (taken
// from the join token) and the relay's leaf verifies against that CA.
// After the handshake, PinnedCA on the connection state returns that CA.
func EnrollClientConfig(caFingerprint [32]byte) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{protocol.ALPNEnroll},
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection against the pinned fingerprint
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := PinnedCA(cs, caFingerprint, time.Now())
			return err
		},
	}
}

// PinnedCA finds the CA with fingerprint fp in the relay's presented chain and
// verifies the relay's leaf against it. It returns the CA certificate.
func PinnedCA(cs tls.ConnectionState, fp [32]byte, now time.Time) (*x509.Certificate, error) {
	var ca *x509.Certificate
	for _, c := range cs.PeerCertificates {
		f := protocol.Fingerprint(c.Raw)
		if bytes.Equal(f[:], fp[:]) {
			ca = c
			break
		}
	}
	if ca == nil {
		return nil, fmt.Errorf("relay's CA does not match the join token's fingerprint %s: this is not the relay that issued the token (or the token is for another relay, or the relay's CA root it pinned was retired since: ask for a new token)", protocol.FormatFingerprint(fp))
	}
	if !ca.IsCA {
		return nil, errors.New("pinned certificate is not a CA")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	td := ""
	if len(ca.URIs) == 1 {
		td = ca.URIs[0].Host
	}
	if err := VerifyRelay(cs, roots, td, now); err != nil {
		return nil, err
	}
	return ca, nil
}
