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

	// IPv6: a /56 counts together, across its /64s; a zone is ignored.
	enter(tcp("[2001:db8:0:1::1]:1"), true)
	enter(tcp("[2001:db8:0:2::1]:1"), true)
	enter(tcp("[2001:db8:0:ff::3%eth0]:1"), true)
	enter(tcp("[2001:db8:0:3::4]:1"), false)
	enter(tcp("[2001:db8:0:100::1]:1"), true) // the next /56

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

// While the gate is busy a network may have at most its share in
// progress; otherwise it has its whole bound.
func TestSourceShareWhenBusy(t *testing.T) {
	busy := false
	l := NewSources(4, 6).ShareWhenBusy(func() bool { return busy }, 2)
	tcp := func(s string) net.Addr { return net.TCPAddrFromAddrPort(netipAddrPort(t, s)) }
	var leaves []func()
	enter := func(a string, want, wantShare bool) {
		t.Helper()
		leave, ok, byShare := l.EnterShared(tcp(a))
		if ok != want || byShare != wantShare {
			t.Fatalf("enter(%v) = %v (by share: %v), want %v (by share: %v)", a, ok, byShare, want, wantShare)
		}
		if ok {
			leaves = append(leaves, leave)
		}
	}
	// Not busy: one network has its whole bound of 6; the 7th is refused
	// by that bound, not by the share.
	for _, a := range []string{"192.0.2.1:1", "192.0.2.1:2", "192.0.2.1:3", "192.0.2.2:1", "192.0.2.2:2", "192.0.2.3:1"} {
		enter(a, true, false)
	}
	enter("192.0.2.4:1", false, false)

	// Busy: another network has its share of 2, then is refused by it,
	// and is asked to prove its address once it has half of it.
	busy = true
	if l.Busy(tcp("198.51.100.1:1")) {
		t.Fatal("a network with nothing in progress is busy")
	}
	enter("198.51.100.1:1", true, false)
	if !l.Busy(tcp("198.51.100.2:1")) {
		t.Fatal("a network at half its share is not busy while the share applies")
	}
	enter("198.51.100.2:1", true, false)
	enter("198.51.100.3:1", false, true)
	// The network that had its whole bound is refused by it still.
	leaves[0]()
	enter("192.0.2.4:1", false, true)

	// Not busy again: the whole bound again.
	busy = false
	if l.Busy(tcp("198.51.100.2:1")) {
		t.Fatal("a network with 2 of its bound of 6 is busy while the share does not apply")
	}
	enter("198.51.100.3:1", true, false)
	enter("192.0.2.4:1", true, false)

	// A share at or above the bound per network changes nothing.
	l2 := NewSources(4, 2).ShareWhenBusy(func() bool { return true }, 2)
	for _, a := range []string{"203.0.113.1:1", "203.0.113.2:1"} {
		leave, ok, _ := l2.EnterShared(tcp(a))
		if !ok {
			t.Fatalf("enter(%v) refused below the bound", a)
		}
		defer leave()
	}
	if _, ok, byShare := l2.EnterShared(tcp("203.0.113.3:1")); ok || byShare {
		t.Fatalf("past the bound: ok %v, by share %v; want refused by the bound", ok, byShare)
	}

	for _, leave := range leaves {
		leave()
	}
	if l.Held() != 0 || len(l.n) != 0 {
		t.Fatalf("counts left after every leave: %v", l.n)
	}
}
