//go:build linux

package faults

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/tetherhq/tether/test/internal/e2e"
)

// The agent's address changes under its QUIC connection (a new address
// on its link, the old one removed: a laptop moving networks, a NAT
// rebinding): a stream open across the change keeps working, or the agent
// is connected again within 5 s and new streams work.
func TestAgentAddressChangesUnderQUIC(t *testing.T) {
	e := newEnv(t, "acme")
	a := e.startAgent(t, "acme", e2e.AgentOptions{Transport: "quic", Extra: "connections: 1\n",
		Services: map[string]string{"web": e.httpService(t, hello("web"))}})
	// One tunnel, several HTTP requests on it (keep-alive).
	c, err := e.backend.Dial("tcp", "web.acme.tether:80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if err := askOn(c, br, 10*time.Second); err != nil {
		t.Fatalf("a request before the change: %v", err)
	}

	connected := count(a.Proc, msgConnected)
	start := time.Now()
	to := e.tp.moveAgent(t)
	t.Logf("agent moved to %v", to)
	err = askOn(c, br, noticeLimit)
	if err == nil {
		t.Logf("the stream survived the change: answered %v after it", time.Since(start).Round(10*time.Millisecond))
	} else {
		t.Logf("the stream did not survive the change: %v", err)
		took, ok := waitLogged(a.Proc, msgConnected, connected, start, 30*time.Second)
		switch {
		case !ok:
			t.Fatalf("agent: the stream broke and the agent did not connect again within 30 s")
		case took > noticeLimit:
			t.Errorf("agent: the stream broke and the agent connected again only %v after the change, want within %v", took.Round(100*time.Millisecond), noticeLimit)
		default:
			t.Logf("agent: connected again %v after the change", took.Round(100*time.Millisecond))
		}
	}
	if r := e.timedGet(start, 20*time.Second, "web", "acme"); r.err != nil || r.body != "web" {
		t.Errorf("a new stream after the change: %v", r)
	}
	if n := e.router.from(to); n == 0 {
		t.Errorf("no packet came from the agent's new address %v: the test did not change the path", to)
	}
}

// askOn sends one HTTP request on c and reads its answer within limit.
func askOn(c net.Conn, br *bufio.Reader, limit time.Duration) error {
	c.SetDeadline(time.Now().Add(limit))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if string(b) != "web" {
		return fmt.Errorf("answer %q, want %q", b, "web")
	}
	return nil
}
