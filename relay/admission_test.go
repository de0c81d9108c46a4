package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
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
	// Each Initial packet of the refused attempt is refused on its own (a
	// post-quantum ClientHello spans two), and the attempt counts once.
	// It was counted before the refusal was sent.
	throttled := r.sessions.Stats().Throttled.Load()
	if throttled != 1 {
		t.Fatalf("the refused handshake was counted %d times as turned away, want once", throttled)
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

// dialFrom opens a TCP connection to addr from src, a loopback address
// (Linux routes all of 127/8 to lo, so 127.0.N.1 is a /24 of its own).
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitUntil polls cond until it holds, failing the test after 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
	}
}

// Silent TCP connections (no ClientHello) from a few networks, each below
// its bound per address and per network, cannot hold the handshake gate:
// once more than half of it is taken a network may have only its share in
// progress, and an agent from another network is served at once (it sends
// no client certificate, so the relay answers its ClientHello and then
// refuses it with an alert).
func TestHandshakeGateShare(t *testing.T) {
	const gate = 16 // busy with 9 slots taken; a share of 1 per network
	// The bound per network below the gate's size: one of the gate's size
	// or more lifts the share (TestHandshakeGateShareLifted).
	r := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off, DisableQUIC: true,
		MaxHandshakes: gate, MaxHandshakesPerNetwork: gate - 1, HandshakeTimeout: 30 * time.Second, DrainTimeout: time.Millisecond})
	addr := r.AgentAddr().String()
	stats := r.sessions.Stats()
	const perNet, nets = 32, 4 // within the default bounds, 32 per address and 128 per network
	dialed := 0
	for n := 1; n <= nets; n++ {
		for range perNet {
			dialFrom(t, fmt.Sprintf("127.0.%d.1", n), addr)
			dialed++
			// Each connection holds its slot or is turned away before the
			// next (or the gate is full and it waits).
			waitUntil(t, "a silent connection held a slot or was turned away", func() bool {
				n := inProgress(r)
				return n == gate || n+int(stats.SourceLimited.Load()) == dialed
			})
		}
	}
	held, limited := inProgress(r), stats.SourceLimited.Load()
	if want := gate/2 + nets; held != want {
		t.Errorf("silent connections hold %d slots, want %d (%d before the gate was busy, then one per other network)", held, want, gate/2+1)
	}
	if limited != int64(nets*perNet-held) {
		t.Errorf("%d connections counted as source_limited, want %d", limited, nets*perNet-held)
	}

	raw := dialFrom(t, "127.0.9.1", addr)
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{protocol.ALPN}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	err := tc.HandshakeContext(ctx)
	if err == nil {
		// TLS 1.3: the client may finish before the relay reads its
		// (empty) certificate; the relay's alert comes next.
		raw.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = tc.Read(make([]byte, 1))
	}
	// A TLS alert from the relay comes as a "remote error".
	var alert *net.OpError
	if !errors.As(err, &alert) || alert.Op != "remote error" {
		t.Fatalf("an agent from another network got no TLS answer in %v with the gate held by silent connections: %v", time.Since(start).Round(time.Millisecond), err)
	}
}

// An operator who lifted the bound per network (to the gate's size or
// more: a fleet behind one NAT, or a benchmark's agents all from one
// address) lifts the share of a busy gate too: one network may take the
// whole gate.
func TestHandshakeGateShareLifted(t *testing.T) {
	const gate = 16 // busy with 9 slots taken
	r := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off, DisableQUIC: true,
		MaxHandshakes: gate, MaxHandshakesPerAddress: gate, MaxHandshakesPerNetwork: gate, HandshakeTimeout: 30 * time.Second, DrainTimeout: time.Millisecond})
	addr := r.AgentAddr().String()
	stats := r.sessions.Stats()
	for i := range gate {
		dialFrom(t, fmt.Sprintf("127.0.6.%d", 1+i%2), addr)
	}
	waitUntil(t, fmt.Sprintf("one network held all %d slots", gate), func() bool { return inProgress(r) == gate })
	if n := stats.SourceLimited.Load(); n != 0 {
		t.Fatalf("%d connections of one network whose bound was lifted counted as source_limited", n)
	}
}

// A relay that is not busy lets one network have its whole bound in
// progress (a big site, many agents behind one NAT), far above its share
// of a busy gate.
func TestHandshakeGateWholeBoundWhenNotBusy(t *testing.T) {
	const gate, perNet = 64, 16 // busy past 32 slots taken, then a share of 4
	r := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off, DisableQUIC: true,
		MaxHandshakes: gate, MaxHandshakesPerAddress: perNet, MaxHandshakesPerNetwork: perNet, HandshakeTimeout: 30 * time.Second, DrainTimeout: time.Millisecond})
	addr := r.AgentAddr().String()
	stats := r.sessions.Stats()
	for i := range perNet {
		dialFrom(t, fmt.Sprintf("127.0.5.%d", 1+i%2), addr)
	}
	waitUntil(t, fmt.Sprintf("one network held %d slots", perNet), func() bool { return inProgress(r) == perNet })
	if n := stats.SourceLimited.Load(); n != 0 {
		t.Fatalf("%d connections of one network within its bound counted as source_limited", n)
	}
	// Its bound still holds.
	dialFrom(t, "127.0.5.3", addr)
	waitUntil(t, "a connection past the network's bound was turned away", func() bool { return stats.SourceLimited.Load() == 1 })
	if n := inProgress(r); n != perNet {
		t.Fatalf("%d slots held, want %d", n, perNet)
	}
}

// The share counts TCP and QUIC together: with the gate busy, a QUIC
// connection from a network that has its share in progress over TCP is
// refused at the door, while one from another network is not.
func TestHandshakeGateShareQUIC(t *testing.T) {
	const gate = 16 // busy with 9 slots taken; a share of 1 per network
	r := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off,
		MaxHandshakes: gate, MaxHandshakesPerNetwork: gate - 1, HandshakeTimeout: 30 * time.Second, DrainTimeout: time.Millisecond})
	addr := r.AgentAddr().String()
	for i := range gate/2 + 1 {
		dialFrom(t, "127.0.1.1", addr)
		waitUntil(t, "a silent connection held a slot", func() bool { return inProgress(r) == i+1 })
	}
	uaddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(src string) error {
		udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)})
		if err != nil {
			return err
		}
		defer udp.Close()
		tr := &quicgo.Transport{Conn: udp}
		defer tr.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		conn, err := tr.Dial(ctx, uaddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{protocol.ALPN}}, quic.Config(1))
		if err == nil {
			conn.CloseWithError(0, "")
		}
		return err
	}
	var terr *quicgo.TransportError
	if err := dial("127.0.1.2"); !errors.As(err, &terr) || terr.ErrorCode != quicgo.ConnectionRefused {
		t.Fatalf("QUIC from a network with its share in progress over TCP: got %v, want CONNECTION_REFUSED", err)
	}
	if r.sessions.Stats().SourceLimited.Load() < 1 {
		t.Fatal("the refused QUIC connection was not counted as source_limited")
	}
	if n := r.sessions.Stats().Throttled.Load(); n != 0 {
		t.Fatalf("%d connections counted as throttled, want none: the gate had free slots", n)
	}
	// Another network is served (and turned away later, for want of a
	// certificate).
	if err := dial("127.0.2.1"); errors.As(err, &terr) && terr.ErrorCode == quicgo.ConnectionRefused {
		t.Fatalf("QUIC from another network: got %v", err)
	}
}
