//go:build linux

package faults

import (
	"errors"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
	"github.com/tetherhq/tether/test/internal/e2e"
)

// noticeLimit is how soon each side must notice a peer that went silent
// while streams were open.
const noticeLimit = 5 * time.Second

// streamEndLimit is how soon a backend's stream over a connection that
// died must end: the relay's noticeLimit, and as long again to close.
const streamEndLimit = 2 * noticeLimit

// A blackhole in the middle of a download: every packet between agent and
// relay is dropped, with no FIN or RST to anyone, as when a link or a
// middlebox dies. The agent notices within 5 s, the relay stops routing
// new streams to the dead connection within 5 s (a new stream is refused
// with no_agent at once rather than waiting for an answer that cannot
// come), the backend's download ends with an error rather than hanging,
// and once the blackhole is lifted the agent connects again and carries
// new streams.
func TestBlackholeMidStream(t *testing.T) {
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			testBlackhole(t, transport)
		})
	}
}

func testBlackhole(t *testing.T, transport string) {
	e := newEnv(t, "acme")
	// One connection, which carries the download: the agent has no idle
	// session whose liveness would be another question.
	a := e.startAgent(t, "acme", e2e.AgentOptions{Transport: transport, Extra: "connections: 1\n",
		Services: map[string]string{"big": e.httpService(t, endless), "web": e.httpService(t, hello("web"))}})
	dl := e.startDownload(t, "big", "acme")

	lost, connected := count(a.Proc, msgLost), count(a.Proc, msgConnected)
	start := time.Now()
	lift := e.tp.block(t, dropAll)

	// The relay no longer routes to the dead connection once its time is
	// up: a new stream is refused at once.
	time.Sleep(time.Until(start.Add(noticeLimit))) // the relay has until then; nothing to observe before
	r := e.timedGet(start, 20*time.Second, "web", "acme")
	if !errors.Is(r.err, client.ErrNoAgent) || r.took > 2*time.Second {
		t.Errorf("relay: a new stream into the blackhole, %v; want a no_agent refusal within 2 s", r)
	} else {
		t.Logf("relay: a new stream into the blackhole, %v", r)
	}

	// The agent noticed (when, its log says).
	took, ok := waitLogged(a.Proc, msgLost, lost, start, 30*time.Second)
	switch {
	case !ok:
		t.Errorf("agent: the dead connection was not noticed within %v", time.Since(start).Round(100*time.Millisecond))
	case took > noticeLimit:
		t.Errorf("agent: the dead connection was noticed after %v, want within %v", took.Round(100*time.Millisecond), noticeLimit)
	default:
		t.Logf("agent: noticed the dead connection after %v", took.Round(100*time.Millisecond))
	}

	// The download ended with an error (its body is endless).
	select {
	case end := <-dl.ended:
		if took := end.at.Sub(start); took > streamEndLimit {
			t.Errorf("backend: the download ended %v into the blackhole (%v), want within %v", took.Round(100*time.Millisecond), end.err, streamEndLimit)
		} else {
			t.Logf("backend: the download ended %v into the blackhole: %v", took.Round(100*time.Millisecond), end.err)
		}
	case <-time.After(time.Until(start.Add(streamEndLimit))):
		t.Errorf("backend: the download is still open %v into the blackhole, want it ended with an error", time.Since(start).Round(100*time.Millisecond))
	}

	// Lifted, the agent connects again and carries new streams.
	lift()
	lifted := time.Now()
	took, ok = waitLogged(a.Proc, msgConnected, connected, lifted, 15*time.Second)
	if !ok {
		t.Fatalf("agent: not connected again within 15 s of the blackhole's end")
	}
	t.Logf("agent: connected again %v after the blackhole's end", took.Round(100*time.Millisecond))
	if r := e.timedGet(lifted, 20*time.Second, "web", "acme"); r.err != nil || r.body != "web" {
		t.Errorf("a new stream after the blackhole: %v", r)
	}
}
