package agent

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
)

// EnrollOptions are the inputs of Enroll.
type EnrollOptions struct {
	// Relay is the relay's agent address, host:port.
	Relay string
	// Token is the join token from the operator.
	Token string
	// StateDir is where the identity is written.
	StateDir string
	// Force replaces an existing identity in StateDir.
	Force bool
	// Hostname is reported to the relay; default os.Hostname().
	Hostname string
	// Version is the agent version reported to the relay.
	Version string
	// Proxy is the HTTP proxy to the relay, as the config's proxy key:
	// a URL, ProxyDirect, or empty for HTTPS_PROXY and NO_PROXY from the
	// environment.
	Proxy string
	// NoProxy is the config's no_proxy key: relays reached without the
	// proxy; empty for NO_PROXY from the environment.
	NoProxy string
	// ProxyCAFile is the config's proxy_ca_file: CA certificates (PEM)
	// an https:// proxy's certificate may chain to, besides the system's
	// roots. Never used to verify the relay.
	ProxyCAFile string
	// Dial opens TCP connections (to the relay, or to the proxy); nil
	// uses a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// egress is how an enrolment with these options reaches the relay, or
// why it cannot (an unusable proxy of the environment the relay would go
// through).
func (o EnrollOptions) egress() (*egress, error) {
	eg, err := newEgress(o.Proxy, o.NoProxy, os.Getenv)
	if err != nil {
		return nil, err
	}
	if o.ProxyCAFile != "" {
		if err := checkProxyCAFile(o.ProxyCAFile, o.Proxy); err != nil {
			return nil, err
		}
		if err := eg.trustProxyCAs(o.ProxyCAFile); err != nil {
			return nil, err
		}
	}
	return eg, eg.check(o.Relay)
}

// EnrollProxy reports the HTTP proxy (its URL with the password
// redacted, and where the setting came from) through which Enroll with
// these options reaches the relay; proxy is empty when it connects
// directly.
func EnrollProxy(o EnrollOptions) (proxy, source string, err error) {
	eg, err := o.egress()
	if err != nil {
		return "", "", err
	}
	if p := eg.forRelay(o.Relay); p != nil {
		return p.Redacted(), eg.source, nil
	}
	return "", "", nil
}

// Enroll creates the agent's key locally, sends a certificate request with
// the join token to the relay, and stores key, certificate and the pinned CA
// in the state directory, holding its lock (LockStateDir) throughout: a
// state directory an agent is running with is refused with a
// *StateDirBusyError. The relay is authenticated by the CA fingerprint
// carried in the token, so a man in the middle cannot enrol the agent with
// another relay. Refusals by the relay come back as *protocol.Error
// (invalid_token, token_expired, token_used_up, …).
func Enroll(ctx context.Context, o EnrollOptions) (*State, error) {
	tok, err := protocol.ParseJoinToken(o.Token)
	if err != nil {
		return nil, err
	}
	if o.StateDir == "" {
		return nil, errors.New("state directory is required")
	}
	if _, _, err := net.SplitHostPort(o.Relay); err != nil {
		return nil, fmt.Errorf("relay address %q: want host:port", o.Relay)
	}
	// Not under a running agent: replacing the identity it runs with would
	// leave it serving with one and renewing into the other's files.
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	lock, err := LockStateDir(o.StateDir, "enroll")
	if err != nil {
		return nil, err
	}
	defer lock.Release()
	if !o.Force {
		if s, err := LoadState(o.StateDir); err == nil {
			return nil, fmt.Errorf("%s already holds the identity of agent %s (tenant %s); use --force to replace it", o.StateDir, s.AgentID, s.Tenant)
		}
	}
	if o.Hostname == "" {
		o.Hostname, _ = os.Hostname()
	}
	eg, err := o.egress()
	if err != nil {
		return nil, err
	}
	if o.Dial == nil {
		d := &net.Dialer{Timeout: 15 * time.Second}
		o.Dial = d.DialContext
	}
	dial := eg.dialer(o.Relay, o.Dial)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: o.Hostname}}, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate request: %w", err)
	}

	raw, err := dial(ctx, "tcp", o.Relay)
	if err != nil {
		return nil, fmt.Errorf("connect to relay %s: %w", o.Relay, err)
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	} else {
		raw.SetDeadline(time.Now().Add(30 * time.Second))
	}
	conf := identity.EnrollClientConfig(tok.CAFingerprint)
	var pinErr error // the relay's certificate is not from the pinned CA
	verify := conf.VerifyConnection
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		pinErr = verify(cs)
		return pinErr
	}
	tc := tls.Client(raw, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		err = fmt.Errorf("TLS handshake with relay %s: %w", o.Relay, err)
		if p := eg.forRelay(o.Relay); p != nil {
			if pinErr != nil {
				return nil, &inspectedError{proxy: p.Redacted(), err: err, cause: pinErr, otherwise: "the join token is not this relay's"}
			}
			return nil, throughProxy(p, err)
		}
		return nil, err
	}
	caCert, err := identity.PinnedCA(tc.ConnectionState(), tok.CAFingerprint, time.Now())
	if err != nil {
		return nil, err
	}
	if err := protocol.WriteMessage(tc, &protocol.EnrollRequest{
		Token: o.Token, CSR: csr, Hostname: o.Hostname,
		OS: runtime.GOOS, Arch: runtime.GOARCH, AgentVersion: o.Version,
		Capabilities: []string{protocol.CapRootBundle},
	}); err != nil {
		return nil, fmt.Errorf("send enrolment request: %w", err)
	}
	m, err := protocol.ReadMessage(bufio.NewReader(tc))
	if err != nil {
		return nil, fmt.Errorf("read enrolment response: %w", err)
	}
	var resp *protocol.EnrollResponse
	switch m := m.(type) {
	case *protocol.Reject:
		return nil, m.Err()
	case *protocol.EnrollResponse:
		resp = m
	default:
		return nil, fmt.Errorf("relay answered enrolment with message type %d", m.Type())
	}
	return storeEnrolment(o, resp, key, caCert)
}

// storeEnrolment checks the relay's answer before trusting it: the
// certificate must be for our key, chain to the pinned CA or to a root the
// relay sent with it (the new root of a CA rotation, which the pinned CA
// must endorse: checkEndorsed), and name the agent and tenant the relay
// says. The agent then trusts the pinned CA and the roots sent.
func storeEnrolment(o EnrollOptions, resp *protocol.EnrollResponse, key *ecdsa.PrivateKey, caCert *x509.Certificate) (*State, error) {
	block, _ := pem.Decode([]byte(resp.Certificate))
	if block == nil {
		return nil, errors.New("relay sent no certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse issued certificate: %w", err)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return nil, errors.New("issued certificate is not for this agent's key")
	}
	td := ""
	if len(caCert.URIs) == 1 {
		td = caCert.URIs[0].Host
	}
	rootCerts := []*x509.Certificate{caCert}
	if resp.CACertificates != "" {
		sent, _, err := parseRoots([]byte(resp.CACertificates), td)
		if err != nil {
			return nil, fmt.Errorf("relay sent unusable CA certificates: %w", err)
		}
		// A root other than the pinned one (the new root of a rotation)
		// needs the pinned root's endorsement, as at renewal: the answer
		// may come from whoever holds one relay's certificate key.
		if err := checkEndorsed(sent, []*x509.Certificate{caCert}, []byte(resp.CAEndorsements), time.Now()); err != nil {
			return nil, err
		}
		rootCerts = sent
		if !slices.ContainsFunc(sent, caCert.Equal) {
			// The relay authenticated itself with the pinned CA; keep
			// trusting it whatever the relay sent.
			rootCerts = append(rootCerts, caCert)
		}
	}
	roots := x509.NewCertPool()
	for _, c := range rootCerts {
		roots.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("issued certificate does not chain to the relay's CA: %w", err)
	}
	id, err := identity.AgentFromCertificate(cert, td)
	if err != nil {
		return nil, fmt.Errorf("issued certificate: %w", err)
	}
	if id.ID != resp.AgentID || id.Tenant != resp.Tenant {
		return nil, fmt.Errorf("issued certificate names %s, not agent %q of tenant %q", id, resp.AgentID, resp.Tenant)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	s := &State{
		Dir: o.StateDir, AgentID: id.ID, Tenant: id.Tenant, TrustDomain: td,
		Relay: o.Relay, EnrolledAt: time.Now().UTC().Truncate(time.Second),
	}
	if err := s.save(pemBlock("PRIVATE KEY", kder), pemBlock("CERTIFICATE", cert.Raw), rootsPEM(rootCerts)); err != nil {
		return nil, err
	}
	// The access log's key: made now, so that its fingerprint is printed
	// at enrolment; kept when an identity is replaced (--force), so that
	// the log goes on in the one chain of keys.
	if _, _, err := loadOrMakeLogKey(o.StateDir); err != nil {
		return nil, err
	}
	return LoadState(o.StateDir)
}
