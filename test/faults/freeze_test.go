//go:build linux

package faults

import (
	"syscall"
	"testing"
	"time"

	"github.com/tetherhq/tether/test/internal/e2e"
)

// freezeFor is how long the frozen process stays stopped: longer than
// noticeLimit, so that what the others do about it shows.
const freezeFor = 8 * time.Second

// An agent stopped with SIGSTOP (a hung process, a VM paused) while a
// second agent of its tenant runs: the relay stops routing new streams to
// the frozen one within 5 s, so the second carries them and every stream
// opens; after SIGCONT the first serves streams again.
func TestFrozenAgent(t *testing.T) {
	e := newEnv(t, "acme")
	frozen := e.startAgent(t, "acme", e2e.AgentOptions{Services: map[string]string{"web": e.httpService(t, hello("A"))}})
	e.startAgent(t, "acme", e2e.AgentOptions{Services: map[string]string{"web": e.httpService(t, hello("B"))}})
	e.waitServedBy(t, "A", 20)
	e.waitServedBy(t, "B", 20)

	// Once every thread of A is stopped: a request sent while the signal
	// is still on its way could be answered by A and then hang.
	if err := frozen.Freeze(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var results []dialResult
	for time.Since(start) < freezeFor {
		results = append(results, e.timedGet(start, 20*time.Second, "web", "acme"))
	}
	for _, r := range results {
		switch {
		case r.err != nil || r.body != "B":
			t.Errorf("a stream with agent A frozen, %v; want it carried by agent B", r)
		case r.at >= noticeLimit && r.took > time.Second:
			t.Errorf("a stream %v after agent A froze took %v: the relay still tried A", r.at.Round(10*time.Millisecond), r.took.Round(10*time.Millisecond))
		}
	}
	t.Logf("%d streams while agent A was frozen; first %v, last %v", len(results), results[0], results[len(results)-1])

	if err := frozen.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	e.waitServedBy(t, "A", 40)
	t.Logf("agent A served a stream again %v after SIGCONT", time.Since(resumed).Round(10*time.Millisecond))
}

// relayFreeze is how long TestFrozenRelay stops the relay: longer than a
// heartbeat (10 s) and an agent's wait for its answer (5 s), so that the
// agents give their sessions up while the relay, frozen, cannot know.
const relayFreeze = 16 * time.Second

// The relay stopped with SIGSTOP for a while: after SIGCONT streams open
// again within 5 s, through agents that connected again (or kept their
// sessions), although the relay wakes holding sessions its agents have
// left.
func TestFrozenRelay(t *testing.T) {
	e := newEnv(t, "acme")
	a := e.startAgent(t, "acme", e2e.AgentOptions{Services: map[string]string{"web": e.httpService(t, hello("A"))}})
	e.waitServedBy(t, "A", 1)

	if err := e.relay.Freeze(); err != nil {
		t.Fatal(err)
	}
	// Nothing to wait for: the relay is frozen, and a stream through it
	// would only hang.
	time.Sleep(relayFreeze)
	if err := e.relay.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	var last dialResult
	for time.Since(resumed) < 3*noticeLimit {
		if last = e.timedGet(resumed, 20*time.Second, "web", "acme"); last.err == nil {
			break
		}
	}
	switch {
	case last.err != nil || last.body != "A":
		t.Fatalf("no stream through the relay %v after SIGCONT: last, %v", time.Since(resumed).Round(100*time.Millisecond), last)
	case last.at+last.took > noticeLimit:
		t.Errorf("the first stream through the relay after SIGCONT opened %v after it, want within %v", (last.at + last.took).Round(100*time.Millisecond), noticeLimit)
	default:
		t.Logf("a stream through the relay opened %v after SIGCONT", (last.at + last.took).Round(10*time.Millisecond))
	}
	t.Logf("the agent gave up %d sessions and connected %d times in all", count(a.Proc, msgLost), count(a.Proc, msgConnected))
}

// waitServedBy opens streams to web.acme until one is answered by agent
// name's service, at most tries times.
func (e *env) waitServedBy(t *testing.T, name string, tries int) {
	t.Helper()
	var seen []dialResult
	for range tries {
		r := e.timedGet(time.Now(), 20*time.Second, "web", "acme")
		if r.err == nil && r.body == name {
			return
		}
		seen = append(seen, r)
	}
	t.Fatalf("no stream answered by agent %s in %d tries: %v", name, tries, seen)
}
