package e2e

import (
	"net"
	"strconv"
	"testing"
)

// FreePort returns a port free on host (an IP address) for both TCP and
// UDP.
func FreePort(t testing.TB, host string) int {
	t.Helper()
	ip := net.ParseIP(host)
	if ip == nil {
		t.Fatalf("FreePort: %q is not an IP address", host)
	}
	for range 50 {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: port})
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatalf("no port free for TCP and UDP on %s", host)
	return 0
}

// FreeAddr is host:FreePort(host).
func FreeAddr(t testing.TB, host string) string {
	t.Helper()
	return net.JoinHostPort(host, strconv.Itoa(FreePort(t, host)))
}
