package session

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/throttle"
)

// The handshake gate (throttle.Gate, Server.gate) bounds the agent
// handshakes (TLS, then the hello) the relay works on at once. After a
// relay restart a whole fleet reconnects within seconds; without a bound
// every handshake competes for the CPU, all of them slow down past the
// agents' timeouts, and the agents retry: a login storm that feeds
// itself. With the gate, handshakes in progress finish quickly while the
// rest queue; a connection that finds no slot within gateWait is closed
// before any work is done, and its agent retries after a jittered backoff.
//
// A slot is held for the whole handshake, which includes round trips to the
// agent, so the bound must be far above what the CPU alone would suggest: a
// handshake over a 100 ms WAN path holds its slot for about 300 ms, and 512
// slots then admit ~1 700 handshakes a second, more than two cores can
// complete. The gate does not throttle a healthy relay; it keeps a storm of
// ten thousand simultaneous handshakes from sharing the CPU so thinly that
// all of them time out.

// gateWait is how long a new connection waits for a handshake slot.
const gateWait = 8 * time.Second

// networkShare is how many handshakes one source network may have in
// progress while the handshake gate of n slots is busy (more than half of
// its slots taken; throttle.Sources.ShareWhenBusy): a sixteenth of the gate
// (at least one), or the network's own bound (--max-handshakes-per-network)
// when that is lower, TCP and QUIC together. The bound per network alone
// let a few networks hold the whole gate — four /24s at 128 each fill 512
// slots with connections that send nothing — while agents from everywhere
// else waited behind them until they were turned away. With the share,
// filling the gate takes at least ten networks (two at their whole bound
// before it is busy, eight at their share), and keeping it full sixteen,
// since silent connections time out and come back to a busy gate. A big
// site (many agents behind one NAT) still has its whole bound while the
// gate is not busy, and when it is, 32 handshakes at a time with the
// default 512 slots: about a hundred a second over a 100 ms path.
func networkShare(n int) int { return max(1, n/16) }

// gateSlot is a TLS slot held by a QUIC connection from its first packet
// until it is admitted or closed, whichever comes first.
type gateSlot struct {
	once  sync.Once
	gate  *throttle.Gate
	stop  func() bool // unregisters the release at the connection's end
	leave func()      // uncounts the connection from its source (throttle.Sources)
}

func (s *gateSlot) release() {
	s.once.Do(func() {
		s.stop()
		s.gate.Leave()
		s.leave()
	})
}

type gateSlotKey struct{}

// errRelayBusy refuses a connection for want of a handshake slot. At the
// QUIC door (quicConnContext) quic-go answers it with a bare
// CONNECTION_REFUSED; a QUIC connection whose hello then finds no slot
// within gateWait is closed with it as the close's reason
// (protocol.CloseReason), which the agent reads back as this refusal, a
// temporary one. (A TCP connection is closed before TLS, with nothing
// said.) errSourceBusy is the same at the door for a source at its bound.
var (
	errRelayBusy  = protocol.Errorf(protocol.CodeUnavailable, "relay busy: too many agent handshakes in progress")
	errSourceBusy = protocol.Errorf(protocol.CodeUnavailable, "relay busy: too many agent handshakes in progress from this address or network")
)

// QUICTLSSlots is how many QUIC TLS handshakes may be in progress at once
// per handshake slot (--max-handshakes).
const QUICTLSSlots = 8

// quicConnContext bounds the QUIC TLS handshakes in progress. quic-go
// completes the TLS handshake before Accept returns, so the handshake gate
// entered after Accept (as for TCP) bounds only the hello; without a bound
// before TLS, a fleet far larger than the relay can serve at once would
// share the CPU among all of its handshakes until they time out. quic-go
// calls this on its packet loop for the first packet of every new
// connection, so it must not block: without a free slot the connection is
// refused at once — a single CONNECTION_REFUSED packet — and its agent
// retries after a jittered backoff. Refusal costs an agent seconds, so the
// bound is generous (QUICTLSSlots per handshake slot, 4096 by default,
// about a second of handshake CPU on two cores): it turns away only what
// could not finish in time anyway. The slot is released when the relay
// admits or refuses the agent, or when the connection ends, including a
// handshake that fails or times out. The connection also counts against
// its source's bound (throttle.Sources, with its share of a busy gate:
// networkShare) until then, and is refused the same way when its source is at
// that bound.
func (s *Server) quicConnContext(ctx context.Context, info *quicgo.ClientInfo) (context.Context, error) {
	leave, ok := s.src.Enter(info.RemoteAddr)
	if !ok {
		if s.refused.first(info.RemoteAddr) {
			s.stats.SourceLimited.Add(1)
		}
		return nil, errSourceBusy
	}
	if !s.quicGate.TryEnter() {
		leave()
		if s.refused.first(info.RemoteAddr) {
			s.stats.Throttled.Add(1)
		}
		return nil, errRelayBusy
	}
	slot := &gateSlot{gate: s.quicGate, leave: leave}
	slot.stop = context.AfterFunc(ctx, slot.release)
	return context.WithValue(ctx, gateSlotKey{}, slot), nil
}

// quicSlot returns the release of the slot quicConnContext took for conn.
func quicSlot(ctx context.Context) (release func(), ok bool) {
	s, ok := ctx.Value(gateSlotKey{}).(*gateSlot)
	if !ok {
		return nil, false
	}
	return s.release, true
}

// refusedAttempts remembers the source addresses (with their ports) of
// the QUIC connection attempts quicConnContext refused lately, so that an
// attempt counts once in the handshake statistics however many Initial
// packets it sent: quic-go asks about each one of a refused attempt as
// about a new connection, and a post-quantum ClientHello spans two (a
// retransmission, sent before the refusal arrived, one more). An attempt's
// packets arrive within a round trip of each other; the same address and
// port seen again after attemptWindow is a new attempt (an agent retries
// after a backoff of seconds, and from a new socket).
type refusedAttempts struct {
	mu    sync.Mutex
	at    map[netip.AddrPort]time.Time // when each was first refused
	swept time.Time                    // when at was last cleared of expired entries
}

const (
	attemptWindow = time.Second
	// maxAttempts bounds the addresses remembered; beyond it (a storm
	// turned away by the thousand within a second), packets count each
	// as before until the window lets some go: over-counting a storm
	// rather than missing it.
	maxAttempts = 16384
)

// first reports whether addr's refused packet is the first of its
// attempt, and remembers it.
func (r *refusedAttempts) first(addr net.Addr) bool {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return true
	}
	key := ua.AddrPort()
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now() // monotonic: a clock step neither merges nor splits attempts
	if t, ok := r.at[key]; ok && now.Sub(t) < attemptWindow {
		return false
	}
	if r.at == nil {
		r.at = map[netip.AddrPort]time.Time{}
	}
	if len(r.at) >= maxAttempts && now.Sub(r.swept) >= attemptWindow/4 {
		r.swept = now
		for k, t := range r.at {
			if now.Sub(t) >= attemptWindow {
				delete(r.at, k)
			}
		}
	}
	if len(r.at) < maxAttempts {
		r.at[key] = now
	}
	return true
}
