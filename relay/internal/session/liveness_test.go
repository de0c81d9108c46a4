package session

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	quicgo "github.com/quic-go/quic-go"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport/quic"
	"github.com/tetherhq/tether/relay/internal/policy"
	"github.com/tetherhq/tether/relay/internal/store"
)

func TestDisconnectReason(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{errRelayShutdown, "relay_shutdown"},
		{fmt.Errorf("%w for 31s", errHeartbeatMissed), "heartbeat_missed"},
		{errAgentRestarted, "agent_restarted"},
		{errAgentClosed, "agent_closed"},
		{fmt.Errorf("control stream: %w", &quicgo.IdleTimeoutError{}), "idle_timeout"},
		{fmt.Errorf("%w: %w", errSilentAgent, net.ErrClosed), "idle_timeout"},
		{fmt.Errorf("send ping: %w", yamux.ErrConnectionWriteTimeout), "idle_timeout"},
		{fmt.Errorf("control stream: %w", &quicgo.StatelessResetError{}), "connection_reset"},
		{fmt.Errorf("control stream: %w", &net.OpError{Op: "read", Err: syscall.ECONNRESET}), "connection_reset"},
		{fmt.Errorf("control stream: %w", &quicgo.ApplicationError{Remote: true}), "agent_closed"},
		{fmt.Errorf("control stream: %w", io.EOF), "agent_closed"},
		{policy.RevokedError(store.Agent{ID: "a1", RevokedAt: time.Now()}), "revoked"},
		{protocol.Errorf(protocol.CodeCertExpired, "expired"), "certificate_expired"},
		{fmt.Errorf("control stream: %w", protocol.Errorf(protocol.CodeBadRequest, "bad frame")), "bad_request"},
		{errors.New("something else"), "error"},
	} {
		if got := disconnectReason(tc.err); got != tc.want {
			t.Errorf("disconnectReason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// A QUIC session whose agent fell silent ends by the transport's idle
// timeout, which reads on the control stream as a closed stream: the
// reason given is idle_timeout, not the agent closing its stream.
func TestQUICIdleTimeoutIsNamed(t *testing.T) {
	cert := selfSigned(t)
	conf := quic.Config(1)
	conf.MaxIdleTimeout = 300 * time.Millisecond
	conf.KeepAlivePeriod = 0
	// Transports of the test's own, closed at its end: a listener from
	// ListenAddr keeps its socket until its last connection's ids retire.
	relayUDP, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer relayUDP.Close()
	relayTr := &quicgo.Transport{Conn: relayUDP}
	defer relayTr.Close()
	ln, err := relayTr.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{protocol.ALPN}}, conf)
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quicgo.Transport{Conn: udp}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	agentSide, err := tr.Dial(ctx, ln.Addr(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{protocol.ALPN}}, conf)
	if err != nil {
		t.Fatal(err)
	}
	st, err := agentSide.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte{0})
	conn, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &Conn{id: identity.Agent{Tenant: "acme", ID: "a1"}, sess: quic.NewSession(conn), log: discardLog}
	ctl, err := c.sess.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(ctl, b[:]); err != nil {
		t.Fatal(err)
	}
	// The agent falls silent: its socket is gone, and no close is sent.
	udp.Close()
	_, err = ctl.Read(b[:])
	if err == nil {
		t.Fatal("read on the control stream of a silent agent succeeded")
	}
	if got := disconnectReason(c.ended(err)); got != reasonIdleTimeout {
		t.Fatalf("reason = %q (from %v), want %q", got, c.ended(err), reasonIdleTimeout)
	}
}

// selfSigned is a throwaway server certificate for loopback tests.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relay.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"relay.test"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
