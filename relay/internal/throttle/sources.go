package throttle

import (
	"net"
	"net/netip"
	"sync"
)

// Sources bounds the pre-authentication work in progress per source:
// per address, and per network (a /24 for IPv4, a /56 for IPv6, so that
// the addresses of one host or one site count together: a site is given a
// /56 or a /48 by its provider, and can spread its hosts over as many /64s
// as it likes). The handshake
// gate bounds the work in progress overall; without a bound per source, a
// flood of connections from one place — opened and left silent, opened
// again as the relay closes them — would hold every slot of the gate, and
// agents from everywhere else would wait behind it. A connection beyond
// its source's bound is turned away at once, before any work is done.
//
// The bound per network alone still lets a few networks hold every slot of
// the gate (four /24s at 128 each fill 512). With a share set
// (ShareWhenBusy), while the gate is busy a network may have at most its
// share in progress: filling the gate then takes many networks, while one
// big site (many agents behind one NAT) still gets its whole bound when
// the relay is not busy.
type Sources struct {
	perAddr, perNet int
	busy            func() bool // whether the share applies now (nil: never)
	share           int
	mu              sync.Mutex // guards n
	n               map[netip.Prefix]int
}

// NewSources bounds each address to perAddr and each network to perNet.
func NewSources(perAddr, perNet int) *Sources {
	return &Sources{perAddr: perAddr, perNet: perNet, n: make(map[netip.Prefix]int)}
}

// ShareWhenBusy bounds each network to share (when that is below the bound
// per network) while busy reports true. busy is called with l's lock held,
// on every Enter and Busy: it must be quick and must not call back into l.
// Call ShareWhenBusy before the first Enter. It returns l.
func (l *Sources) ShareWhenBusy(busy func() bool, share int) *Sources {
	l.busy, l.share = busy, share
	return l
}

// netBound is the bound on a network's work in progress now. l.mu is held.
func (l *Sources) netBound() int {
	if l.share < l.perNet && l.busy != nil && l.busy() {
		return l.share
	}
	return l.perNet
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
	bits := 56
	if ip.Is4() {
		bits = 24
	}
	network, _ = ip.Prefix(bits)
	return netip.PrefixFrom(ip, ip.BitLen()), network
}

// Enter counts one more piece of work from a. It reports false, counting
// nothing, when a's address or network is at its bound (or its network at
// its share, while busy); otherwise leave uncounts it (once; later calls
// do nothing).
func (l *Sources) Enter(a net.Addr) (leave func(), ok bool) {
	leave, ok, _ = l.EnterShared(a)
	return leave, ok
}

// EnterShared is Enter; when it turns a away, byShare reports whether
// only the share per network held it back (the relay is busy, and a's
// network, below its own bound, has its share).
func (l *Sources) EnterShared(a net.Addr) (leave func(), ok, byShare bool) {
	addr, network := sourceKeys(a)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[addr] >= l.perAddr || l.n[network] >= l.perNet {
		return nil, false, false
	}
	if l.n[network] >= l.netBound() {
		return nil, false, true
	}
	l.n[addr]++
	l.n[network]++
	var once sync.Once
	return func() { once.Do(func() { l.leave(addr, network) }) }, true, false
}

func (l *Sources) leave(addr, network netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range []netip.Prefix{addr, network} {
		if l.n[k]--; l.n[k] <= 0 {
			delete(l.n, k)
		}
	}
}

// Busy reports whether a's address or network has used half its bound (for
// the network, its share while the share applies) or more. Over QUIC,
// where a source address can be forged, such a source is asked to prove
// its address (a Retry) before it may count at all: a forger cannot take
// more than half of another's bound.
func (l *Sources) Busy(a net.Addr) bool {
	addr, network := sourceKeys(a)
	l.mu.Lock()
	defer l.mu.Unlock()
	return 2*l.n[addr] >= l.perAddr || 2*l.n[network] >= l.netBound()
}

// Held reports how many addresses have work in progress.
func (l *Sources) Held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for k := range l.n {
		if k.IsValid() && k.Bits() == k.Addr().BitLen() {
			n++
		}
	}
	return n
}
