package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport/quic"
)

func TestHandshakeGate(t *testing.T) {
	g := newHandshakeGate(2)
	g.wait = 50 * time.Millisecond
	ctx := context.Background()
	for i := range 2 {
		if !g.enter(ctx) {
			t.Fatalf("a gate of 2 refused entry %d", i+1)
		}
	}
	if g.enter(ctx) {
		t.Fatal("a full gate let a third in")
	}
	// A slot freed while a newcomer waits goes to it.
	go func() {
		time.Sleep(10 * time.Millisecond)
		g.leave()
	}()
	g.wait = 5 * time.Second
	if !g.enter(ctx) {
		t.Fatal("a waiter did not get the slot that was freed")
	}
	// A cancelled context stops the wait.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if g.enter(cctx) {
		t.Fatal("entered a full gate with a cancelled context")
	}
	g.leave()
	g.leave()
	if len(g.slots) != 0 {
		t.Fatalf("%d slots still taken after every leave", len(g.slots))
	}
}

// A QUIC connection takes its TLS slot before any TLS work: with every
// slot held by a handshake in progress, a new connection is refused at its
// first packet, and the slot comes back when the handshake fails.
func TestQUICHandshakeGate(t *testing.T) {
	r := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off, DisableTCP: true, MaxHandshakes: 1, MaxQUICTLSHandshakes: 1, DrainTimeout: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr := r.udpConn.LocalAddr().String()

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
	throttled := r.hsThrottled.Load()
	if throttled < 1 {
		t.Fatal("the refused handshake was not counted as turned away")
	}

	close(goOn)
	<-first
	for deadline := time.Now().Add(10 * time.Second); len(r.quicGate.slots)+len(r.gate.slots) != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the failed handshake never gave its slot back")
		}
	}
	// With the slot free, the next connection is not refused at the door
	// (the relay turns it away later, for want of a certificate).
	if err := dial(); errors.As(err, &terr) && terr.ErrorCode == quicgo.ConnectionRefused {
		t.Fatalf("handshake with a free slot: got %v", err)
	}
	if n := r.hsThrottled.Load(); n != throttled {
		t.Fatalf("%d handshakes counted as turned away, want still %d", n, throttled)
	}
	for deadline := time.Now().Add(10 * time.Second); len(r.quicGate.slots)+len(r.gate.slots) != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the second failed handshake never gave its slot back")
		}
	}
}
