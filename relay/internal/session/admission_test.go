package session

import (
	"context"
	"net"
	"testing"

	quicgo "github.com/quic-go/quic-go"

	"github.com/tetherhq/tether/relay/internal/throttle"
)

// quic-go asks quicConnContext about every Initial packet of an attempt it
// refused (a post-quantum ClientHello spans two, and a retransmission may
// follow): the attempt counts once as turned away, whichever bound turned
// it away, and another source port is another attempt.
func TestRefusedQUICAttemptCountsOnce(t *testing.T) {
	s := &Server{quicGate: throttle.NewGate(1, 0), src: throttle.NewSources(1, 64)}
	if !s.quicGate.TryEnter() { // every TLS slot taken
		t.Fatal("the gate's one slot was not free")
	}
	ctx := context.Background()
	from := func(port int) *quicgo.ClientInfo {
		return &quicgo.ClientInfo{RemoteAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}}
	}
	for range 3 { // the attempt's two Initial packets and a retransmission
		if _, err := s.quicConnContext(ctx, from(40000)); err != errRelayBusy {
			t.Fatalf("with every slot taken: %v, want %v", err, errRelayBusy)
		}
	}
	if n := s.stats.Throttled.Load(); n != 1 {
		t.Fatalf("one attempt of three packets counted %d times as turned away, want 1", n)
	}
	if _, err := s.quicConnContext(ctx, from(40001)); err != errRelayBusy {
		t.Fatalf("with every slot taken: %v, want %v", err, errRelayBusy)
	}
	if n := s.stats.Throttled.Load(); n != 2 {
		t.Fatalf("a second attempt from another port: %d turned away, want 2", n)
	}

	// The bound per address: one handshake of 127.0.0.2 in progress, and
	// an attempt of three packets from another of its ports.
	s.quicGate.Leave()
	held := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 40000}
	hctx, err := s.quicConnContext(ctx, &quicgo.ClientInfo{RemoteAddr: held})
	if err != nil {
		t.Fatal(err)
	}
	release, _ := quicSlot(hctx)
	defer release()
	other := &quicgo.ClientInfo{RemoteAddr: &net.UDPAddr{IP: held.IP, Port: 40001}}
	for range 3 {
		if _, err := s.quicConnContext(ctx, other); err != errSourceBusy {
			t.Fatalf("with its address's one handshake in progress: %v, want %v", err, errSourceBusy)
		}
	}
	if n := s.stats.SourceLimited.Load(); n != 1 {
		t.Fatalf("one attempt of three packets counted %d times as source-limited, want 1", n)
	}
}
