package identity_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
)

const td = "tether.example"

// pki is one tenant CA with a relay certificate, plus certificates that are
// wrong in one way each.
type pki struct {
	ca, other, inter      *authority
	relay, interRelay     *x509.Certificate
	otherTD, noURI, agent *x509.Certificate
	clientOnly, relaySub  *x509.Certificate
	expired, notYet       *x509.Certificate
	selfSigned            *x509.Certificate
	fromOther             *x509.Certificate
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	p := &pki{
		ca:    newRoot(t, caTemplate(t, td)),
		other: newRoot(t, caTemplate(t, td)), // same trust domain, different key
	}
	p.inter = p.ca.intermediate(t, td)
	p.relay, _ = p.ca.issue(t, relayTemplate(t, td))
	p.interRelay, _ = p.inter.issue(t, relayTemplate(t, td))
	p.otherTD, _ = p.ca.issue(t, relayTemplate(t, "other.example"))
	p.noURI, _ = p.ca.issue(t, leafTemplate(t, x509.ExtKeyUsageServerAuth))
	p.agent, _ = p.ca.issue(t, leafTemplate(t, x509.ExtKeyUsageServerAuth,
		identity.Agent{TrustDomain: td, Tenant: "acme", ID: "a1"}.URI()))
	p.clientOnly, _ = p.ca.issue(t, leafTemplate(t, x509.ExtKeyUsageClientAuth, identity.RelayURI(td)))
	p.relaySub, _ = p.ca.issue(t, leafTemplate(t, x509.ExtKeyUsageServerAuth, mustURL(t, "spiffe://"+td+"/relay/x")))
	expired := relayTemplate(t, td)
	expired.NotBefore, expired.NotAfter = epoch.Add(-2*time.Hour), epoch.Add(-time.Hour)
	p.expired, _ = p.ca.issue(t, expired)
	notYet := relayTemplate(t, td)
	notYet.NotBefore, notYet.NotAfter = epoch.Add(time.Hour), epoch.Add(2*time.Hour)
	p.notYet, _ = p.ca.issue(t, notYet)
	self := relayTemplate(t, td)
	p.selfSigned = newRoot(t, self).cert
	p.fromOther, _ = p.other.issue(t, relayTemplate(t, td))
	return p
}

func state(chain ...*x509.Certificate) tls.ConnectionState {
	return tls.ConnectionState{PeerCertificates: chain}
}

func TestVerifyRelay(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name    string
		cs      tls.ConnectionState
		roots   *x509.CertPool
		td      string
		now     time.Time
		wantErr bool
	}{
		{"relay", state(p.relay), pool(p.ca.cert), td, epoch, false},
		{"relay with its CA in the chain", state(p.relay, p.ca.cert), pool(p.ca.cert), td, epoch, false},
		{"through an intermediate", state(p.interRelay, p.inter.cert), pool(p.ca.cert), td, epoch, false},
		{"intermediate not presented", state(p.interRelay), pool(p.ca.cert), td, epoch, true},
		{"no certificate", state(), pool(p.ca.cert), td, epoch, true},
		{"wrong CA", state(p.relay), pool(p.other.cert), td, epoch, true},
		{"signed by another CA of the same trust domain", state(p.fromOther, p.ca.cert), pool(p.ca.cert), td, epoch, true},
		{"self-signed", state(p.selfSigned), pool(p.ca.cert), td, epoch, true},
		{"empty roots", state(p.relay), x509.NewCertPool(), td, epoch, true},
		{"nil roots", state(p.relay), nil, td, epoch, true},
		{"missing URI SAN", state(p.noURI), pool(p.ca.cert), td, epoch, true},
		{"wrong trust domain in the certificate", state(p.otherTD), pool(p.ca.cert), td, epoch, true},
		{"wrong trust domain expected", state(p.relay), pool(p.ca.cert), "other.example", epoch, true},
		{"empty trust domain expected", state(p.relay), pool(p.ca.cert), "", epoch, true},
		{"agent certificate", state(p.agent), pool(p.ca.cert), td, epoch, true},
		{"relay path with a suffix", state(p.relaySub), pool(p.ca.cert), td, epoch, true},
		{"client authentication only", state(p.clientOnly), pool(p.ca.cert), td, epoch, true},
		{"expired leaf", state(p.expired), pool(p.ca.cert), td, epoch, true},
		{"leaf not yet valid", state(p.notYet), pool(p.ca.cert), td, epoch, true},
		{"checked at a time after expiry", state(p.relay), pool(p.ca.cert), td, epoch.Add(2 * time.Hour), true},
		{"checked at a time before issue", state(p.relay), pool(p.ca.cert), td, epoch.Add(-2 * time.Hour), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := identity.VerifyRelay(tc.cs, tc.roots, tc.td, tc.now)
			if got := err != nil; got != tc.wantErr {
				t.Errorf("got error %v, want error %v", err, tc.wantErr)
			}
		})
	}
}

func TestPinnedCA(t *testing.T) {
	p := newPKI(t)
	noURICA := newRoot(t, caTemplate(t, ""))
	noURIRelay, _ := noURICA.issue(t, relayTemplate(t, td))
	twoURITmpl := caTemplate(t, td)
	twoURITmpl.URIs = append(twoURITmpl.URIs, identity.TrustDomainURI("other.example"))
	twoURICA := newRoot(t, twoURITmpl)
	twoURIRelay, _ := twoURICA.issue(t, relayTemplate(t, td))
	otherTDCA := newRoot(t, caTemplate(t, "other.example"))
	otherTDRelay, _ := otherTDCA.issue(t, relayTemplate(t, td))

	fp := func(c *x509.Certificate) [32]byte { return protocol.Fingerprint(c.Raw) }
	tests := []struct {
		name   string
		cs     tls.ConnectionState
		pin    [32]byte
		now    time.Time
		wantCA *x509.Certificate // nil: want an error
	}{
		{"relay and pinned CA", state(p.relay, p.ca.cert), fp(p.ca.cert), epoch, p.ca.cert},
		{"pinned root above an intermediate", state(p.interRelay, p.inter.cert, p.ca.cert), fp(p.ca.cert), epoch, p.ca.cert},
		{"pinned intermediate", state(p.interRelay, p.inter.cert, p.ca.cert), fp(p.inter.cert), epoch, p.inter.cert},
		{"fingerprint mismatch", state(p.relay, p.ca.cert), fp(p.other.cert), epoch, nil},
		{"zero fingerprint", state(p.relay, p.ca.cert), [32]byte{}, epoch, nil},
		{"CA not presented", state(p.relay), fp(p.ca.cert), epoch, nil},
		{"no certificate", state(), fp(p.ca.cert), epoch, nil},
		{"pinned certificate is the leaf", state(p.relay, p.ca.cert), fp(p.relay), epoch, nil},
		{"impostor leaf presented with the real CA", state(p.fromOther, p.ca.cert), fp(p.ca.cert), epoch, nil},
		{"leaf of another trust domain", state(p.otherTD, p.ca.cert), fp(p.ca.cert), epoch, nil},
		{"leaf without URI SAN", state(p.noURI, p.ca.cert), fp(p.ca.cert), epoch, nil},
		{"leaf for client authentication only", state(p.clientOnly, p.ca.cert), fp(p.ca.cert), epoch, nil},
		{"expired leaf", state(p.expired, p.ca.cert), fp(p.ca.cert), epoch, nil},
		{"checked after expiry", state(p.relay, p.ca.cert), fp(p.ca.cert), epoch.Add(2 * time.Hour), nil},
		{"CA without a trust domain URI", state(noURIRelay, noURICA.cert), fp(noURICA.cert), epoch, nil},
		{"CA with two URIs", state(twoURIRelay, twoURICA.cert), fp(twoURICA.cert), epoch, nil},
		{"CA of another trust domain than the leaf", state(otherTDRelay, otherTDCA.cert), fp(otherTDCA.cert), epoch, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := identity.PinnedCA(tc.cs, tc.pin, tc.now)
			if tc.wantCA == nil {
				if err == nil {
					t.Errorf("got CA %q and no error, want an error", got.Subject)
				}
				if got != nil {
					t.Errorf("got CA %q with error %v, want nil", got.Subject, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want CA %q", err, tc.wantCA.Subject)
			}
			if !got.Equal(tc.wantCA) {
				t.Errorf("got CA %q, want %q", got.Subject, tc.wantCA.Subject)
			}
		})
	}
}

type handshakeResult struct {
	client, server       tls.ConnectionState
	clientErr, serverErr error
}

// handshake runs one TLS handshake over loopback TCP. Deadlines only guard
// against a hang.
func handshake(t *testing.T, server, client *tls.Config) handshakeResult {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type side struct {
		st  tls.ConnectionState
		err error
	}
	done := make(chan side, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- side{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(c, server)
		err = tc.Handshake()
		done <- side{tc.ConnectionState(), err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, client)
	var r handshakeResult
	r.clientErr = tc.Handshake()
	r.client = tc.ConnectionState()
	if r.clientErr != nil {
		c.Close() // the server learns of the refusal from the alert or the close
	}
	s := <-done
	r.server, r.serverErr = s.st, s.err
	return r
}

func TestAgentClientConfigHandshake(t *testing.T) {
	p := newPKI(t)
	agentID := identity.Agent{TrustDomain: td, Tenant: "acme", ID: "a1"}
	agentCert, agentKey := p.ca.issue(t, agentTemplate(t, agentID))
	agentTLS := tlsCert(agentKey, agentCert)

	relayConfig := func(a *authority, tmpl *x509.Certificate, extra ...*x509.Certificate) *tls.Config {
		leaf, key := a.issue(t, tmpl)
		return &tls.Config{
			MinVersion:   tls.VersionTLS13,
			NextProtos:   []string{protocol.ALPN},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool(p.ca.cert),
			Certificates: []tls.Certificate{tlsCert(key, append([]*x509.Certificate{leaf}, extra...)...)},
		}
	}
	expiredTmpl := relayTemplate(t, td)
	expiredTmpl.NotBefore, expiredTmpl.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)

	tests := []struct {
		name    string
		server  *tls.Config
		roots   *x509.CertPool
		td      string
		wantErr bool
	}{
		{"relay of the tenant CA", relayConfig(p.ca, relayTemplate(t, td)), pool(p.ca.cert), td, false},
		{"relay through an intermediate", relayConfig(p.inter, relayTemplate(t, td), p.inter.cert), pool(p.ca.cert), td, false},
		{"relay of another CA", relayConfig(p.other, relayTemplate(t, td)), pool(p.ca.cert), td, true},
		{"agent expects another trust domain", relayConfig(p.ca, relayTemplate(t, td)), pool(p.ca.cert), "other.example", true},
		{"relay without URI SAN", relayConfig(p.ca, leafTemplate(t, x509.ExtKeyUsageServerAuth)), pool(p.ca.cert), td, true},
		{"expired relay certificate", relayConfig(p.ca, expiredTmpl), pool(p.ca.cert), td, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int32
			getCert := func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				calls.Add(1)
				return &agentTLS, nil
			}
			r := handshake(t, tc.server, identity.AgentClientConfig(tc.roots, tc.td, getCert))
			if tc.wantErr {
				if r.clientErr == nil {
					t.Errorf("client handshake succeeded, want the relay refused")
				}
				if r.serverErr == nil {
					t.Errorf("server handshake succeeded, want it to fail after the client's refusal")
				}
				return
			}
			if r.clientErr != nil || r.serverErr != nil {
				t.Fatalf("got client error %v, server error %v, want none", r.clientErr, r.serverErr)
			}
			if got := r.client.NegotiatedProtocol; got != protocol.ALPN {
				t.Errorf("got ALPN %q, want %q", got, protocol.ALPN)
			}
			if got := r.client.Version; got != tls.VersionTLS13 {
				t.Errorf("got TLS version %x, want TLS 1.3", got)
			}
			if got := calls.Load(); got != 1 {
				t.Errorf("got %d calls of getCert, want 1", got)
			}
			// The relay side works out the tenant from the verified chain.
			if len(r.server.VerifiedChains) == 0 {
				t.Fatal("got no verified client chain on the server")
			}
			got, err := identity.AgentFromCertificate(r.server.VerifiedChains[0][0], td)
			if err != nil || got != agentID {
				t.Errorf("got agent %+v, %v on the server, want %+v", got, err, agentID)
			}
		})
	}
}

func TestEnrollClientConfigHandshake(t *testing.T) {
	p := newPKI(t)
	relayLeaf, relayKey := p.ca.issue(t, relayTemplate(t, td))
	impostorLeaf, impostorKey := p.other.issue(t, relayTemplate(t, td))
	server := func(c tls.Certificate) *tls.Config {
		return &tls.Config{
			MinVersion:   tls.VersionTLS13,
			NextProtos:   []string{protocol.ALPN, protocol.ALPNEnroll},
			Certificates: []tls.Certificate{c},
		}
	}
	tests := []struct {
		name    string
		server  *tls.Config
		pin     [32]byte
		wantErr bool
	}{
		{"relay with the pinned CA", server(tlsCert(relayKey, relayLeaf, p.ca.cert)), protocol.Fingerprint(p.ca.cert.Raw), false},
		{"fingerprint of another CA", server(tlsCert(relayKey, relayLeaf, p.ca.cert)), protocol.Fingerprint(p.other.cert.Raw), true},
		{"relay that does not present its CA", server(tlsCert(relayKey, relayLeaf)), protocol.Fingerprint(p.ca.cert.Raw), true},
		{"impostor presenting the real CA", server(tlsCert(impostorKey, impostorLeaf, p.ca.cert)), protocol.Fingerprint(p.ca.cert.Raw), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := handshake(t, tc.server, identity.EnrollClientConfig(tc.pin))
			if tc.wantErr {
				if r.clientErr == nil {
					t.Errorf("client handshake succeeded, want the relay refused")
				}
				return
			}
			if r.clientErr != nil || r.serverErr != nil {
				t.Fatalf("got client error %v, server error %v, want none", r.clientErr, r.serverErr)
			}
			if got := r.client.NegotiatedProtocol; got != protocol.ALPNEnroll {
				t.Errorf("got ALPN %q, want %q", got, protocol.ALPNEnroll)
			}
			ca, err := identity.PinnedCA(r.client, tc.pin, time.Now())
			if err != nil {
				t.Fatalf("PinnedCA after the handshake: %v", err)
			}
			if !ca.Equal(p.ca.cert) {
				t.Errorf("got CA %q, want %q", ca.Subject, p.ca.cert.Subject)
			}
		})
	}
}
