//go:build linux

package faults

import (
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/test/internal/e2e"
)

// fallbackLimit is how soon an agent in auto mode must be on TCP after
// UDP is blocked under its QUIC session.
const fallbackLimit = 5 * time.Second

// UDP blocked in the middle of a session, while a download runs: an agent
// in auto mode on QUIC falls back to TCP within 5 s, and says why, in its
// status (tether-agent status) and in what it told the relay.
func TestUDPBlockedMidSession(t *testing.T) {
	e := newEnv(t, "acme")
	a := e.startAgent(t, "acme", e2e.AgentOptions{Transport: "auto", Extra: "connections: 1\nstatus_listen: 127.0.0.1:0\n",
		Services: map[string]string{"big": e.httpService(t, endless), "web": e.httpService(t, hello("web"))}})
	if st := e.status(t, a); len(st.Sessions) != 1 || st.Sessions[0].Transport != "quic" {
		t.Fatalf("before UDP is blocked the agent should be on QUIC; its status: %+v", st.Sessions)
	}
	e.startDownload(t, "big", "acme")

	connected := count(a.Proc, msgConnected)
	start := time.Now()
	e.tp.block(t, dropUDP)
	took, ok := waitLogged(a.Proc, msgConnected, connected, start, 30*time.Second)
	if !ok {
		t.Fatalf("agent: not connected again within 30 s of UDP being blocked")
	}
	line := nthLine(a.Output(), msgConnected, connected)
	if !strings.Contains(line, `"transport":"tcp"`) {
		t.Fatalf("agent: connected again, but not over TCP:\n%s", line)
	}
	if took > fallbackLimit {
		t.Errorf("agent: on TCP %v after UDP was blocked, want within %v", took.Round(100*time.Millisecond), fallbackLimit)
	} else {
		t.Logf("agent: on TCP %v after UDP was blocked", took.Round(100*time.Millisecond))
	}

	// Why, in the agent's status and to the relay.
	const why = "fallback: QUIC failed"
	st := e.status(t, a)
	if len(st.Sessions) != 1 || st.Sessions[0].Transport != "tcp" || !strings.HasPrefix(st.Sessions[0].TransportWhy, why) {
		t.Errorf("tether-agent status: sessions %+v; want one on tcp, why %q…", st.Sessions, why)
	} else {
		t.Logf("tether-agent status: %s: %s", st.Sessions[0].Transport, st.Sessions[0].TransportWhy)
	}
	e.relay.WaitOutput(`"transport_why":"`+why, 5*time.Second)

	// And new streams go over TCP.
	if r := e.timedGet(start, 20*time.Second, "web", "acme"); r.err != nil || r.body != "web" {
		t.Errorf("a new stream with UDP blocked: %v", r)
	}
}

// nthLine is the (n+1)-th line of out holding s, or "".
func nthLine(out, s string, n int) string {
	for line := range strings.Lines(out) {
		if strings.Contains(line, s) {
			if n == 0 {
				return line
			}
			n--
		}
	}
	return ""
}
