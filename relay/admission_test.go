package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport/quic"
)

// A QUIC connection takes its TLS slot before any TLS work: with every
// slot held by a handshake in progress, a new connection is refused at its
// first packet, and the slot comes back when the handshake fails.
func TestQUICHandshakeGate(t *testing.T) {
	r := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off, DisableTCP: true, MaxHandshakes: 1, MaxQUICTLSHandshakes: 1, DrainTimeout: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr := r.AgentAddr().String()

	// The first handshake stops at the client certificate until told to go
	// on, holding the only slot.
	asked, goOn := make(chan struct{}), make(chan struct{})
	holder := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{protocol.ALPN},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			close(asked)
			<-goOn
			return &tls.Certificate{}, nil // none: the relay refuses the handshake
		}}
	first := make(chan error, 1)
	go func() {
		// In TLS 1.3 the client may finish before the relay has checked its
		// (missing) certificate; either way the relay closes the connection.
		s, err := quic.Dial(ctx, addr, holder, quic.Config(1))
		if err == nil {
			s.Close()
		}
		first <- err
	}()
	select {
	case <-asked:
	case <-time.After(20 * time.Second):
		t.Fatal("the first handshake never reached the client certificate")
	}

	dial := func() error {
		dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		s, err := quic.Dial(dctx, addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{protocol.ALPN}}, quic.Config(1))
		if err == nil {
			s.Close()
		}
		return err
	}
	var terr *quicgo.TransportError
	if err := dial(); !errors.As(err, &terr) || terr.ErrorCode != quicgo.ConnectionRefused {
		t.Fatalf("second handshake with every slot taken: got %v, want CONNECTION_REFUSED", err)
	}
	// Each Initial packet of the refused attempt is refused on its own
	// (a post-quantum ClientHello spans two), so it counts at least once.
	throttled := r.sessions.Stats().Throttled.Load()
	if throttled < 1 {
		t.Fatal("the refused handshake was not counted as turned away")
	}

	close(goOn)
	<-first
	for deadline := time.Now().Add(10 * time.Second); inProgress(r) != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the failed handshake never gave its slot back")
		}
	}
	// With the slot free, the next connection is not refused at the door
	// (the relay turns it away later, for want of a certificate).
	if err := dial(); errors.As(err, &terr) && terr.ErrorCode == quicgo.ConnectionRefused {
		t.Fatalf("handshake with a free slot: got %v", err)
	}
	if n := r.sessions.Stats().Throttled.Load(); n != throttled {
		t.Fatalf("%d handshakes counted as turned away, want still %d", n, throttled)
	}
	for deadline := time.Now().Add(10 * time.Second); inProgress(r) != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the second failed handshake never gave its slot back")
		}
	}
}

// A QUIC connection counts against its source's bound from its first
// packet: with the one handshake its address may have in progress held,
// another from that address is refused at the door, while one from
// another address is let in.
func TestQUICHandshakesPerSource(t *testing.T) {
	r := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off, DisableTCP: true,
		MaxHandshakesPerAddress: 1, MaxHandshakesPerNetwork: 8, DrainTimeout: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, _ := net.ResolveUDPAddr("udp", r.AgentAddr().String())

	// dial dials from src (a loopback address: Linux routes 127/8 to lo).
	dial := func(src string, conf *tls.Config) error {
		udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)})
		if err != nil {
			return err
		}
		defer udp.Close()
		tr := &quicgo.Transport{Conn: udp}
		defer tr.Close()
		dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		conn, err := tr.Dial(dctx, addr, conf, quic.Config(1))
		if err == nil {
			conn.CloseWithError(0, "")
		}
		return err
	}
	asked, goOn := make(chan struct{}), make(chan struct{})
	holder := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{protocol.ALPN},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			close(asked)
			<-goOn
			return &tls.Certificate{}, nil
		}}
	first := make(chan error, 1)
	go func() { first <- dial("127.0.0.1", holder) }()
	select {
	case <-asked:
	case <-time.After(20 * time.Second):
		t.Fatal("the first handshake never reached the client certificate")
	}
	plain := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{protocol.ALPN}}
	var terr *quicgo.TransportError
	if err := dial("127.0.0.1", plain); !errors.As(err, &terr) || terr.ErrorCode != quicgo.ConnectionRefused {
		t.Fatalf("a second handshake from the same address: got %v, want CONNECTION_REFUSED", err)
	}
	if r.sessions.Stats().SourceLimited.Load() < 1 {
		t.Fatal("the refused handshake was not counted as source_limited")
	}
	// Another address is not held back (the relay turns it away later, for
	// want of a certificate).
	if err := dial("127.0.0.2", plain); errors.As(err, &terr) && terr.ErrorCode == quicgo.ConnectionRefused {
		t.Fatalf("a handshake from another address: got %v", err)
	}
	close(goOn)
	<-first
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, n := r.sessions.InProgress(); n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the handshakes never gave their source's count back")
		}
	}
}

func inProgress(r *Relay) int {
	n, _ := r.sessions.InProgress()
	return n
}
