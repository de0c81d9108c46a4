package throttle

import (
	"net"
	"net/netip"
	"testing"
)

func TestSourceLimit(t *testing.T) {
	l := NewSources(2, 3)
	tcp := func(s string) net.Addr { return net.TCPAddrFromAddrPort(netipAddrPort(t, s)) }
	udp := func(s string) net.Addr { return net.UDPAddrFromAddrPort(netipAddrPort(t, s)) }
	var leaves []func()
	enter := func(a net.Addr, want bool) {
		t.Helper()
		leave, ok := l.Enter(a)
		if ok != want {
			t.Fatalf("enter(%v) = %v, want %v", a, ok, want)
		}
		if ok {
			leaves = append(leaves, leave)
		}
	}
	enter(tcp("192.0.2.1:1000"), true)
	enter(udp("192.0.2.1:1001"), true) // TCP and UDP count together
	enter(tcp("[::ffff:192.0.2.1]:1002"), false)
	if !l.Busy(udp("192.0.2.1:9")) || l.Busy(udp("198.51.100.1:9")) {
		t.Fatal("busy: want the full address busy, another network not")
	}
	enter(tcp("192.0.2.2:1000"), true)  // the same /24: its third
	enter(tcp("192.0.2.3:1000"), false) // the /24's bound
	enter(tcp("192.0.3.1:1000"), true)  // another /24
	leaves[0]()
	leaves[0]() // a second leave does nothing
	enter(tcp("192.0.2.3:1000"), true)
	enter(tcp("192.0.2.4:1000"), false)

	// IPv6: a /64 counts together; a zone is ignored.
	enter(tcp("[2001:db8:0:1::1]:1"), true)
	enter(tcp("[2001:db8:0:1::2]:1"), true)
	enter(tcp("[2001:db8:0:1::3%eth0]:1"), true)
	enter(tcp("[2001:db8:0:1::4]:1"), false)
	enter(tcp("[2001:db8:0:2::1]:1"), true)

	for _, leave := range leaves {
		leave()
	}
	if l.Held() != 0 || len(l.n) != 0 {
		t.Fatalf("counts left after every leave: %v", l.n)
	}
}

func netipAddrPort(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}
