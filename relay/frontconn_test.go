package relay

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

func TestCheckConnectTarget(t *testing.T) {
	for _, tc := range []struct {
		target, want string // want "" when the target is well-formed
	}{
		{"db.acme.tether:5432", ""},
		{"DB.Acme.Tether.:1", ""},
		{"[::1]:80", ""}, // well-formed; not a tether address (ParseTarget says so)
		{"", "empty"},
		{"db\x00.acme.tether:80", "control character"},
		{"db.acme.tether :80", "control character or space"},
		{"db.acme.tether:http", `port "http" is not a number`},
		{"db.acme.tether:0", ""}, // the port is ignored; clients without one send 0
		{"db.acme.tether:65536", "from 0 to 65535"},
		{"db.acme.tether:+80", "from 0 to 65535"},
		{"db.acme.tether", "not host:port"},
		{"db.acme.tether:", "from 0 to 65535"},
		{"user@db.acme.tether:80", "user information"},
		{":80", "empty host"},
		{"/rpc", "not host:port"},
		{"http://db.acme.tether:80", "not host:port"},
		{strings.Repeat("a", 254) + ":80", "host of 254 bytes"},
	} {
		err := checkConnectTarget(tc.target)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("checkConnectTarget(%q) = %v, want nil", tc.target, err)
		case tc.want != "" && (err == nil || !errors.Is(err, protocol.ErrBadRequest) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("checkConnectTarget(%q) = %v, want bad_request saying %q", tc.target, err, tc.want)
		}
	}
}

// FuzzCheckConnectTarget: a CONNECT target from the network is either
// host:port with a host of 1 to 253 bytes and a port from 0 to 65535, and
// nothing else, or refused as bad_request with a one-line message.
func FuzzCheckConnectTarget(f *testing.F) {
	for _, s := range []string{"db.acme.tether:5432", "[::1]:80", "db\x00.acme.tether:80", "db.acme.tether:http",
		"user@db.acme.tether:80", ":80", "", "db.acme.tether", "[::1%eth0]:1", "a:b:c", "db.acme.tether:0080"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		err := checkConnectTarget(target)
		if err != nil {
			if !errors.Is(err, protocol.ErrBadRequest) || strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("checkConnectTarget(%q) = %q: want a one-line bad_request", target, err)
			}
			return
		}
		host, port, serr := net.SplitHostPort(target)
		_, perr := strconv.ParseUint(port, 10, 16)
		if serr != nil || host == "" || len(host) > 253 || perr != nil || strings.ContainsAny(target, "@/?#") {
			t.Fatalf("checkConnectTarget accepted %q", target)
		}
		for _, b := range []byte(target) {
			if b <= ' ' || b == 0x7f {
				t.Fatalf("checkConnectTarget accepted %q, with a control character", target)
			}
		}
	})
}

func TestSourceLimit(t *testing.T) {
	l := newSourceLimit(2, 3)
	tcp := func(s string) net.Addr { return net.TCPAddrFromAddrPort(netipAddrPort(t, s)) }
	udp := func(s string) net.Addr { return net.UDPAddrFromAddrPort(netipAddrPort(t, s)) }
	var leaves []func()
	enter := func(a net.Addr, want bool) {
		t.Helper()
		leave, ok := l.enter(a)
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
	if !l.busy(udp("192.0.2.1:9")) || l.busy(udp("198.51.100.1:9")) {
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
	if len(l.n) != 0 {
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

// A CONNECT front-door connection counts against its source's bound until
// it has authenticated or is closed, however it ends: refused by net/http,
// refused by the handler, or closed by the client before a request.
func TestFrontDoorSourceBoundIsReleased(t *testing.T) {
	r := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: "127.0.0.1:0",
		ConnectListen: "127.0.0.1:0", MaxFrontPendingPerAddress: 2, MaxFrontPendingPerNetwork: 2})
	ask := func(addr, req string) (string, error) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, req); err != nil {
			return "", err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		return line, err
	}
	for i := range 6 {
		for _, req := range []string{
			"CONNECT web\x00.acme.tether:80 HTTP/1.1\r\n\r\n",  // net/http refuses it
			"CONNECT user@web.acme.tether:80 HTTP/1.1\r\n\r\n", // the handler refuses it
			"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                // not CONNECT
		} {
			if line, err := ask(r.ConnectAddr().String(), req); err != nil || !strings.HasPrefix(line, "HTTP/1.1 4") {
				t.Fatalf("round %d, %q: got %q, %v; want a 4xx answer", i, req, line, err)
			}
		}
		// Silent, closed by the client.
		c, err := net.Dial("tcp", r.ConnectAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		// SOCKS5: a greeting without the username/password method.
		s, err := net.Dial("tcp", r.SOCKSAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		s.SetDeadline(time.Now().Add(10 * time.Second))
		s.Write([]byte{5, 1, 0})
		var rep [2]byte
		if _, err := io.ReadFull(s, rep[:]); err != nil || rep != [2]byte{5, 0xff} {
			t.Fatalf("round %d, SOCKS5: got % x, %v; want 05 ff", i, rep, err)
		}
		s.Close()
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		r.frontSrc.mu.Lock()
		n := len(r.frontSrc.n)
		r.frontSrc.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("front-door connections still counted after every one closed: %v", r.frontSrc.n)
		}
	}
}
