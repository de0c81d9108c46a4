package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// flood keeps n TCP connections open to addr from the source addresses
// srcs (in turn), silent, opening each again a quarter second after the
// relay closes it, until the test ends. It returns how many connections it
// has opened.
func flood(t *testing.T, addr string, srcs []string, n int) *atomic.Int64 {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	opened := new(atomic.Int64)
	for i := range n {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(srcs[i%len(srcs)])}}
		wg.Go(func() {
			var b [1]byte
			for ctx.Err() == nil {
				c, err := d.DialContext(ctx, "tcp", addr)
				if err == nil {
					opened.Add(1)
					stop := context.AfterFunc(ctx, func() { c.Close() })
					c.Read(b[:]) // until the relay closes it
					stop()
					c.Close()
				}
				// A pause before opening it again: as the relay closes
				// the flood's connections at once, opening them again at
				// full speed would make this a contest for the CPU (a
				// connection-rate flood, for a firewall to stop), not a
				// test of the bounds on handshakes in progress.
				select {
				case <-ctx.Done():
				case <-time.After(250 * time.Millisecond):
				}
			}
		})
	}
	return opened
}

// TestHandshakeFloodFromOneSource: 1 500 silent TCP connections to the
// agent port from one place, opened again as the relay closes them, would
// fill the relay's handshake gate (--max-handshakes, 512) so that agents
// from everywhere else waited up to 20 s to connect. The relay bounds the
// handshakes in progress per source address and per /24: agents from
// another address connect within 2 s over TCP and QUIC, and enrol, while
// the flood goes on — whether it comes from one address or from a hundred
// addresses of one /24.
func TestHandshakeFloodFromOneSource(t *testing.T) {
	for _, tc := range []struct {
		name string
		srcs []string
	}{
		{"one address", []string{"127.0.0.2"}},
		{"one network", func() []string {
			var s []string
			for i := range 100 {
				s = append(s, fmt.Sprintf("127.0.1.%d", i+2))
			}
			return s
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ops := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			// Info: at debug the relay logs every connection it turns away.
			r := startRelay(t, relayOpts{extra: []string{"--metrics-listen", ops, "--log-level", "info"}})
			r.addTenant(t, "acme")
			web := tcpService(t, echo)
			type enrolled struct{ dir, id string }
			agents := map[string]enrolled{}
			for _, tr := range []string{"tcp", "quic"} {
				dir, id := enroll(t, r.agentAddr, r.token(t, "acme"))
				agents[tr] = enrolled{dir, id}
			}

			opened := flood(t, r.agentAddr, tc.srcs, 1500)
			// Every flood connection has been opened once, and more again.
			for deadline := time.Now().Add(30 * time.Second); opened.Load() < 3000; time.Sleep(100 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the flood did not get going: %d connections opened in 30 s", opened.Load())
				}
			}

			for _, tr := range []string{"tcp", "quic"} {
				start := time.Now()
				a := runAgent(t, agents[tr].dir, agents[tr].id, r.agentAddr, agentOpts{transport: tr, services: map[string]string{"web": web}})
				// From the agent's start to its connection, by its own
				// log: the start-up of a race-built process on a machine
				// this busy is not the relay's.
				took := logTime(t, a.out.String(), "connected to relay").Sub(logTime(t, a.out.String(), "agent starting"))
				if took > 2*time.Second {
					t.Errorf("an agent over %s took %v to connect during the flood, want at most 2 s", tr, took.Round(time.Millisecond))
				} else {
					t.Logf("an agent over %s connected %v after it started (%v after its process did)", tr, took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
				}
				a.kill()
			}
			tok := r.token(t, "acme")
			start := time.Now()
			enroll(t, r.agentAddr, tok)
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("an enrolment took %v during the flood, want at most 2 s", took.Round(time.Millisecond))
			} else {
				t.Logf("an enrolment took %v", took.Round(time.Millisecond))
			}
			m := scrape(t, ops)
			limited := m[`tether_agent_handshakes_total{outcome="source_limited"}`]
			t.Logf("%d flood connections opened; %v turned away by source, %v by the global gate", opened.Load(),
				limited, m[`tether_agent_handshakes_total{outcome="throttled"}`])
			if limited < 1000 {
				t.Errorf("the relay turned %v of the flood's connections away by source, want most of them", limited)
			}
		})
	}
}

// logTime is the time of the first line of out, a process's JSON log,
// whose message is msg.
func logTime(t *testing.T, out, msg string) time.Time {
	t.Helper()
	for line := range strings.Lines(out) {
		var l struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == msg {
			return l.Time
		}
	}
	t.Fatalf("no log line %q in:\n%s", msg, out)
	return time.Time{}
}
