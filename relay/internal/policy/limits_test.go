package policy

import (
	"net"
	"testing"
)

func TestTenantNetworks(t *testing.T) {
	nets, err := ParseCIDRs([]string{"10.0.0.0/8", "2001:db8::/32", "192.168.1.7"})
	if err != nil {
		t.Fatal(err)
	}
	l := &Limits{nets: nets}
	for addr, want := range map[string]bool{
		"10.1.2.3:5000":          true,
		"[::ffff:10.9.9.9]:5000": true, // IPv4-mapped IPv6 from a dual-stack socket
		"[2001:db8::1]:443":      true,
		"192.168.1.7:1":          true,
		"192.168.1.8:1":          false,
		"127.0.0.1:7443":         false,
		"[::1]:7443":             false,
	} {
		ap, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.Allows(ap); got != want {
			t.Errorf("Allows(%s) = %v, want %v", addr, got, want)
		}
		ua := &net.UDPAddr{IP: ap.IP, Port: ap.Port}
		if got := l.Allows(ua); got != want {
			t.Errorf("Allows(UDP %s) = %v, want %v", addr, got, want)
		}
	}
	if !(&Limits{}).Allows(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}) {
		t.Error("no networks configured must allow any address")
	}
	for _, bad := range []string{"10.0.0.0/33", "example.com", "", "10.0.0.0/8,"} {
		if _, err := ParseCIDRs([]string{bad}); err == nil {
			t.Errorf("ParseCIDRs(%q) accepted", bad)
		}
	}
}
