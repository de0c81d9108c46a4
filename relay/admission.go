package relay

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	quicgo "github.com/quic-go/quic-go"
)

// handshakeGate bounds the agent handshakes (TLS, then the hello) the relay
// works on at once. After a relay restart a whole fleet reconnects within
// seconds; without a bound every handshake competes for the CPU, all of
// them slow down past the agents' timeouts, and the agents retry: a login
// storm that feeds itself. With the gate, handshakes in progress finish
// quickly while the rest queue; a connection that finds no slot within
// gateWait is closed before any work is done, and its agent retries after a
// jittered backoff.
//
// A slot is held for the whole handshake, which includes round trips to the
// agent, so the bound must be far above what the CPU alone would suggest: a
// handshake over a 100 ms WAN path holds its slot for about 300 ms, and 512
// slots then admit ~1 700 handshakes a second, more than two cores can
// complete. The gate does not throttle a healthy relay; it keeps a storm of
// ten thousand simultaneous handshakes from sharing the CPU so thinly that
// all of them time out.
type handshakeGate struct {
	slots chan struct{}
	wait  time.Duration
}

// gateWait is how long a new connection waits for a handshake slot.
const gateWait = 8 * time.Second

func newHandshakeGate(n int) *handshakeGate {
	return &handshakeGate{slots: make(chan struct{}, n), wait: gateWait}
}

// enter takes a slot, waiting up to g.wait; it reports whether it got one.
func (g *handshakeGate) enter(ctx context.Context) bool {
	select {
	case g.slots <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(g.wait)
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// leave returns a slot taken by enter.
func (g *handshakeGate) leave() { <-g.slots }

// tryEnter takes a slot if one is free now.
func (g *handshakeGate) tryEnter() bool {
	select {
	case g.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// gateSlot is a TLS slot held by a QUIC connection from its first packet
// until it is admitted or closed, whichever comes first.
type gateSlot struct {
	once  sync.Once
	gate  *handshakeGate
	stop  func() bool // unregisters the release at the connection's end
	leave func()      // uncounts the connection from its source (sourceLimit)
}

func (s *gateSlot) release() {
	s.once.Do(func() {
		s.stop()
		s.gate.leave()
		s.leave()
	})
}

type gateSlotKey struct{}

var (
	errRelayBusy  = errors.New("relay busy: too many agent handshakes in progress")
	errSourceBusy = errors.New("relay busy: too many agent handshakes in progress from this address or network")
)

// quicTLSSlots is how many QUIC TLS handshakes may be in progress at once
// per handshake slot (--max-handshakes).
const quicTLSSlots = 8

// quicConnContext bounds the QUIC TLS handshakes in progress. quic-go
// completes the TLS handshake before Accept returns, so the handshake gate
// entered after Accept (as for TCP) bounds only the hello; without a bound
// before TLS, a fleet far larger than the relay can serve at once would
// share the CPU among all of its handshakes until they time out. quic-go
// calls this on its packet loop for the first packet of every new
// connection, so it must not block: without a free slot the connection is
// refused at once — a single CONNECTION_REFUSED packet — and its agent
// retries after a jittered backoff. Refusal costs an agent seconds, so the
// bound is generous (quicTLSSlots per handshake slot, 4096 by default,
// about a second of handshake CPU on two cores): it turns away only what
// could not finish in time anyway. The slot is released when the relay
// admits or refuses the agent, or when the connection ends, including a
// handshake that fails or times out. The connection also counts against
// its source's bound (sourceLimit) until then, and is refused the same way
// when its source is at that bound.
func (r *Relay) quicConnContext(ctx context.Context, info *quicgo.ClientInfo) (context.Context, error) {
	leave, ok := r.agentSrc.enter(info.RemoteAddr)
	if !ok {
		r.hsSourceLimited.Add(1)
		return nil, errSourceBusy
	}
	if !r.quicGate.tryEnter() {
		leave()
		r.hsThrottled.Add(1)
		return nil, errRelayBusy
	}
	s := &gateSlot{gate: r.quicGate, leave: leave}
	s.stop = context.AfterFunc(ctx, s.release)
	return context.WithValue(ctx, gateSlotKey{}, s), nil
}

// quicSlot returns the release of the slot quicConnContext took for conn.
func quicSlot(ctx context.Context) (release func(), ok bool) {
	s, ok := ctx.Value(gateSlotKey{}).(*gateSlot)
	if !ok {
		return nil, false
	}
	return s.release, true
}

// sourceLimit bounds the pre-authentication work in progress per source:
// per address, and per network (a /24 for IPv4, a /64 for IPv6, so that
// the addresses of one host or one site count together). The handshake
// gate bounds the work in progress overall; without a bound per source, a
// flood of connections from one place — opened and left silent, opened
// again as the relay closes them — would hold every slot of the gate, and
// agents from everywhere else would wait behind it. A connection beyond
// its source's bound is turned away at once, before any work is done.
type sourceLimit struct {
	perAddr, perNet int
	mu              sync.Mutex // guards n
	n               map[netip.Prefix]int
}

func newSourceLimit(perAddr, perNet int) *sourceLimit {
	return &sourceLimit{perAddr: perAddr, perNet: perNet, n: make(map[netip.Prefix]int)}
}

// sourceKeys returns the keys a's work is counted under: its address and
// its network. An address that does not parse counts under the zero keys,
// all such addresses together.
func sourceKeys(a net.Addr) (addr, network netip.Prefix) {
	var ip netip.Addr
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case *net.UDPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		if a != nil {
			if ap, err := netip.ParseAddrPort(a.String()); err == nil {
				ip = ap.Addr()
			}
		}
	}
	ip = ip.Unmap().WithZone("")
	if !ip.IsValid() {
		return netip.Prefix{}, netip.Prefix{}
	}
	bits := 64
	if ip.Is4() {
		bits = 24
	}
	network, _ = ip.Prefix(bits)
	return netip.PrefixFrom(ip, ip.BitLen()), network
}

// enter counts one more piece of work from a. It reports false, counting
// nothing, when a's address or network is at its bound; otherwise leave
// uncounts it (once; later calls do nothing).
func (l *sourceLimit) enter(a net.Addr) (leave func(), ok bool) {
	addr, network := sourceKeys(a)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[addr] >= l.perAddr || l.n[network] >= l.perNet {
		return nil, false
	}
	l.n[addr]++
	l.n[network]++
	var once sync.Once
	return func() { once.Do(func() { l.leave(addr, network) }) }, true
}

func (l *sourceLimit) leave(addr, network netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range []netip.Prefix{addr, network} {
		if l.n[k]--; l.n[k] <= 0 {
			delete(l.n, k)
		}
	}
}

// busy reports whether a's address or network has used half its bound or
// more. Over QUIC, where a source address can be forged, such a source is
// asked to prove its address (a Retry) before it may count at all: a
// forger cannot take more than half of another's bound.
func (l *sourceLimit) busy(a net.Addr) bool {
	addr, network := sourceKeys(a)
	l.mu.Lock()
	defer l.mu.Unlock()
	return 2*l.n[addr] >= l.perAddr || 2*l.n[network] >= l.perNet
}
