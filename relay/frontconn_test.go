package relay

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

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
		n := r.doors.Unauthenticated()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("front-door connections still counted after every one closed: %d sources", n)
		}
	}
}
