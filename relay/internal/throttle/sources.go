package throttle

import (
	"net"
	"net/netip"
	"sync"
)

// Sources bounds the pre-authentication work in progress per source:
// per address, and per network (a /24 for IPv4, a /64 for IPv6, so that
// the addresses of one host or one site count together). The handshake
// gate bounds the work in progress overall; without a bound per source, a
// flood of connections from one place — opened and left silent, opened
// again as the relay closes them — would hold every slot of the gate, and
// agents from everywhere else would wait behind it. A connection beyond
// its source's bound is turned away at once, before any work is done.
type Sources struct {
	perAddr, perNet int
	mu              sync.Mutex // guards n
	n               map[netip.Prefix]int
}

// NewSources bounds each address to perAddr and each network to perNet.
func NewSources(perAddr, perNet int) *Sources {
	return &Sources{perAddr: perAddr, perNet: perNet, n: make(map[netip.Prefix]int)}
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

// Enter counts one more piece of work from a. It reports false, counting
// nothing, when a's address or network is at its bound; otherwise leave
// uncounts it (once; later calls do nothing).
func (l *Sources) Enter(a net.Addr) (leave func(), ok bool) {
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

func (l *Sources) leave(addr, network netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range []netip.Prefix{addr, network} {
		if l.n[k]--; l.n[k] <= 0 {
			delete(l.n, k)
		}
	}
}

// Busy reports whether a's address or network has used half its bound or
// more. Over QUIC, where a source address can be forged, such a source is
// asked to prove its address (a Retry) before it may count at all: a
// forger cannot take more than half of another's bound.
func (l *Sources) Busy(a net.Addr) bool {
	addr, network := sourceKeys(a)
	l.mu.Lock()
	defer l.mu.Unlock()
	return 2*l.n[addr] >= l.perAddr || 2*l.n[network] >= l.perNet
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
