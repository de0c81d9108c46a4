package test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/client"
)

// freeze stops p (SIGSTOP), as a hung machine or a debugger would, and
// returns once it is stopped; the returned function resumes it (SIGCONT),
// at most once. A process still stopped when the test ends is killed like
// any other.
func (p *proc) freeze(t *testing.T) (thaw func()) {
	t.Helper()
	if err := stopProcess(p.Pid()); errors.Is(err, errNoStop) {
		t.Skip(err)
	} else if err != nil {
		t.Fatalf("stop %s: %v", p.name, err)
	}
	var once sync.Once
	return func() { once.Do(func() { continueProcess(p.Pid()) }) }
}

// socksConnectMsg is a SOCKS5 client's whole side of a CONNECT to
// host:port with username and password, sent at once: the greeting
// offering that method, the credentials, and the request.
func socksConnectMsg(user, pass, host string, port uint16) []byte {
	msg := []byte{5, 1, 2, 1, byte(len(user))}
	msg = append(msg, user...)
	msg = append(msg, byte(len(pass)))
	msg = append(msg, pass...)
	msg = append(msg, 5, 1, 0, 3, byte(len(host)))
	msg = append(msg, host...)
	return binary.BigEndian.AppendUint16(msg, port)
}

// socksDial performs a SOCKS5 CONNECT to host:port by hand, as any SOCKS5
// client would, and returns the relay's reply code. A missing or cut reply
// is an error: every outcome must reach the caller as a reply. On success
// the connection is returned open.
func socksDial(addr, user, pass, host string, port uint16) (net.Conn, byte, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, 0, err
	}
	c.SetDeadline(time.Now().Add(40 * time.Second))
	if _, err := c.Write(socksConnectMsg(user, pass, host, port)); err != nil {
		c.Close()
		return nil, 0, err
	}
	var head [4]byte // method selection, authentication status
	if _, err := io.ReadFull(c, head[:]); err != nil || head != [4]byte{5, 2, 1, 0} {
		c.Close()
		return nil, 0, fmt.Errorf("SOCKS5 negotiation: % x, %v", head, err)
	}
	var rep [10]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		c.Close()
		return nil, 0, fmt.Errorf("SOCKS5 reply: %w", err)
	}
	if rep[1] != 0 {
		c.Close()
		return nil, rep[1], nil
	}
	c.SetDeadline(time.Time{})
	return c, 0, nil
}

// callers are the ways a backend reaches a service through the relay: a
// SOCKS5 client, and the Go Dialer (HTTP CONNECT) on the plain and the TLS
// CONNECT front doors.
type callers struct {
	socks          string
	backend, key   string
	connect, tlsCo *client.Dialer
}

func newCallers(t *testing.T, r *relayProc, tlsAddr string, tenants ...string) *callers {
	t.Helper()
	d := r.backend(t, "billing", tenants...)
	d.Timeout = 40 * time.Second
	caPEM, err := os.ReadFile(filepath.Join(r.dataDir, "ca", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	conf, err := client.RelayTLSConfig(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	tlsD := *d
	tlsD.Relay, tlsD.TLSConfig = tlsAddr, conf
	return &callers{socks: r.socksAddr, backend: d.Backend, key: d.APIKey, connect: d, tlsCo: &tlsD}
}

// outcome is what one caller got: the refusal code (CodeOK for a stream),
// or err when no typed answer came at all.
type outcome struct {
	caller string
	code   protocol.Code
	conn   net.Conn
	took   time.Duration
	err    error
}

// dialAll opens a stream to addr with every kind of caller at once.
func (cs *callers) dialAll(addr string) []outcome {
	host, _, _ := net.SplitHostPort(addr)
	out := make([]outcome, 3)
	var wg sync.WaitGroup
	start := time.Now()
	wg.Go(func() {
		c, rep, err := socksDial(cs.socks, cs.backend, cs.key, host, 80)
		code := protocol.CodeOK
		switch rep {
		case 0:
		case 0x06:
			code = protocol.CodeTimeout
		case 0x03:
			code = protocol.CodeNoAgent
		default:
			code = protocol.CodeInternal
			err = errors.Join(err, fmt.Errorf("SOCKS5 reply %#x", rep))
		}
		out[0] = outcome{caller: "socks5", code: code, conn: c, took: time.Since(start), err: err}
	})
	for i, d := range []*client.Dialer{cs.connect, cs.tlsCo} {
		name := []string{"connect", "connect-tls"}[i]
		wg.Go(func() {
			c, err := d.DialContext(context.Background(), "tcp", addr)
			o := outcome{caller: name, conn: c, took: time.Since(start)}
			var pe *client.Error
			switch {
			case err == nil:
				o.code = protocol.CodeOK
			case errors.As(err, &pe):
				o.code = pe.Code
			default:
				o.err = err
			}
			out[i+1] = o
		})
	}
	wg.Wait()
	return out
}

// echoes checks that c is a working stream to an echo service.
func echoes(c net.Conn) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "ping\n" {
		return fmt.Errorf("echo: %q, %v", line, err)
	}
	return nil
}

// TestStoppedAgentRepliesAreTyped: streams sent to agents that stopped
// (SIGSTOP) while they are the tenant's only ones take longer than the
// front doors' handshake timeout (10 s) to end. Every kind of caller still
// gets its typed answer: the timeout refusal when the agent never answers,
// and success when it resumes before the stream-open timeout.
func TestStoppedAgentRepliesAreTyped(t *testing.T) {
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	// The heartbeat is the default's: the harness's 1 s would close the
	// stopped agents' sessions within 3 s, before the streams time out.
	r := startRelay(t, relayOpts{extra: []string{"--heartbeat", "10s", "--stream-open-timeout", "13s", "--connect-tls-listen", tlsAddr}})
	web := tcpService(t, echo)
	agents := map[string]*agentProc{}
	for tenant, transport := range map[string]string{"stopped-quic": "quic", "stopped-tcp": "tcp", "slow": "quic"} {
		r.addTenant(t, tenant)
		agents[tenant] = startAgent(t, r, tenant, agentOpts{transport: transport, services: map[string]string{"web": web}})
	}
	cs := newCallers(t, r, tlsAddr, "stopped-quic", "stopped-tcp", "slow")
	for tenant := range agents {
		waitDial(t, cs.connect, "web."+tenant+".tether:80", 15*time.Second).Close()
		// Over before the agent stops: a stream open through a stopped
		// agent ends the session (its streams can move nothing), and
		// these cases are about streams being opened.
		waitLine(t, r.proc, func(l string) bool {
			return strings.Contains(l, `"msg":"stream closed"`) && strings.Contains(l, `"tenant":"`+tenant+`"`)
		}, 10*time.Second, "the first stream of "+tenant+" closed")
	}

	results := map[string][]outcome{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for tenant, a := range agents {
		thaw := a.freeze(t)
		defer thaw()
		wg.Go(func() {
			if tenant == "slow" {
				// Resumed after the handshake timeout, before the
				// stream-open timeout: a slow open that succeeds.
				defer time.AfterFunc(11*time.Second, thaw).Stop()
			}
			o := cs.dialAll("web." + tenant + ".tether:80")
			mu.Lock()
			results[tenant] = o
			mu.Unlock()
		})
	}
	wg.Wait()
	for tenant, outs := range results {
		want := protocol.CodeTimeout
		if tenant == "slow" {
			want = protocol.CodeOK
		}
		for _, o := range outs {
			switch {
			case o.err != nil:
				t.Errorf("%s via %s: no typed answer after %v: %v", tenant, o.caller, o.took.Round(time.Millisecond), o.err)
			case o.code != want:
				t.Errorf("%s via %s: got %v after %v, want %v", tenant, o.caller, o.code, o.took.Round(time.Millisecond), want)
			case o.took < 10*time.Second:
				t.Errorf("%s via %s: answered after %v; the case needs longer than the 10 s handshake timeout", tenant, o.caller, o.took.Round(time.Millisecond))
			}
			if o.conn != nil {
				if err := echoes(o.conn); err != nil {
					t.Errorf("%s via %s: the stream opened but does not work: %v", tenant, o.caller, err)
				}
				o.conn.Close()
			}
		}
	}
}

// TestStoppedAgentIsAvoided: of a tenant's two agents one stops (SIGSTOP,
// as a hung machine; or a path that drops packets). With the default 10 s
// heartbeat the relay would count it healthy for 30 s and send it half the
// streams, each waiting out the stream-open timeout. Instead every stream
// succeeds through the other agent, and within 5 s of the stop none goes
// to the stopped one any more: the relay's record of no stream begun then
// names it among the connections tried (detail "tried"), and none takes a
// second or more (as one sent there would).
func TestStoppedAgentIsAvoided(t *testing.T) {
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			r := startRelay(t, relayOpts{extra: []string{"--heartbeat", "10s"}})
			r.addTenant(t, "acme")
			d := r.backend(t, "billing", "acme")
			greeter := func(name string) string {
				return tcpService(t, func(c net.Conn) { io.WriteString(c, name+"\n") })
			}
			a := startAgent(t, r, "acme", agentOpts{transport: transport, services: map[string]string{"web": greeter("A")}})
			startAgent(t, r, "acme", agentOpts{transport: transport, services: map[string]string{"web": greeter("B")}})
			// fetch reads the greeting of the agent that served a stream,
			// and returns it with the stream's request id.
			fetch := func(ctx context.Context) (string, string, error) {
				c, err := d.DialContext(ctx, "tcp", "web.acme.tether:80")
				if err != nil {
					return "", "", err
				}
				defer c.Close()
				id := ""
				if cc, ok := c.(*client.Conn); ok {
					id = cc.RequestID
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				who, err := readLine(c)
				return who, id, err
			}
			// Both agents serve (each has its connections up) before one stops.
			seen := map[string]bool{}
			for deadline := time.Now().Add(20 * time.Second); !seen["A"] || !seen["B"]; {
				if time.Now().After(deadline) {
					t.Fatalf("both agents never served: saw %v", seen)
				}
				if who, _, err := fetch(context.Background()); err == nil {
					seen[who] = true
				}
			}

			thaw := a.freeze(t)
			defer thaw()
			stopped := time.Now()
			type result struct {
				start, took time.Duration
				who, id     string
				err         error
			}
			var mu sync.Mutex
			var results []result
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					for time.Since(stopped) < 9*time.Second {
						ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
						begin := time.Now()
						who, id, err := fetch(ctx)
						cancel()
						mu.Lock()
						results = append(results, result{begin.Sub(stopped), time.Since(begin), who, id, err})
						mu.Unlock()
						time.Sleep(20 * time.Millisecond) // pacing, not waiting for anything
					}
				})
			}
			wg.Wait()
			late := 0
			for _, res := range results {
				switch {
				case res.err != nil:
					t.Errorf("stream opened %v after the stop: %v", res.start.Round(time.Millisecond), res.err)
				case res.who != "B":
					t.Errorf("stream opened %v after the stop was served by %q, want the running agent B", res.start.Round(time.Millisecond), res.who)
				case res.start >= 5*time.Second && res.took >= time.Second:
					t.Errorf("stream opened %v after the stop took %v: it was sent to the stopped agent", res.start.Round(time.Millisecond), res.took.Round(time.Millisecond))
				}
				if res.start >= 5*time.Second {
					late++
				}
			}
			if late == 0 {
				t.Fatal("no stream was opened later than 5 s after the stop")
			}
			// Where the relay tried each stream begun after the stop (its
			// record's "tried"): those begun 5 s or more after it, never
			// on the stopped agent.
			starts := map[string]time.Duration{}
			for _, res := range results {
				if res.err == nil {
					if res.id == "" {
						t.Errorf("stream opened %v after the stop has no request id", res.start.Round(time.Millisecond))
						continue
					}
					starts[res.id] = res.start
				}
			}
			recs := streamAudit(t, r.dataDir, "acme", len(starts), func(rec map[string]any) bool {
				id, _ := detail(rec, "request").(string)
				_, ok := starts[id]
				return ok
			}, "--since", stopped.Add(-time.Second).UTC().Format(time.RFC3339), "--limit", "100000")
			triedStopped := 0
			for _, rec := range recs {
				id, _ := detail(rec, "request").(string)
				start, ok := starts[id]
				if !ok {
					continue
				}
				tried, _ := detail(rec, "tried").([]any)
				for _, x := range tried {
					try, _ := x.(map[string]any)
					if try["agent"] != a.id {
						continue
					}
					triedStopped++
					if start >= 5*time.Second {
						t.Errorf("stream %s opened %v after the stop was tried on the stopped agent %s: %v", id, start.Round(time.Millisecond), a.id, try)
					}
				}
				if rec["agent"] == a.id && start >= 5*time.Second {
					t.Errorf("stream %s opened %v after the stop went to the stopped agent %s", id, start.Round(time.Millisecond), a.id)
				}
			}
			t.Logf("%d streams begun after the stop were tried on the stopped agent first (their records' tried)", triedStopped)
			var slowest, lastSlow time.Duration
			for _, res := range results {
				slowest = max(slowest, res.took)
				if res.took >= time.Second {
					lastSlow = max(lastSlow, res.start)
				}
			}
			t.Logf("%d streams in the 9 s after the stop, %d of them after 5 s; the slowest took %v; the last one slower than 1 s was opened %v after the stop",
				len(results), late, slowest.Round(time.Millisecond), lastSlow.Round(time.Millisecond))
			r.waitOutput("agent stopped answering", 5*time.Second)
		})
	}
}

// TestStoppedAgentsStreamsEnd: the streams open through an agent that
// stopped (SIGSTOP) can move no data; the relay closes the agent's session
// once it has stayed unanswering for 5 s, so a backend reading from such a
// stream gets an error within about 8 s rather than waiting for the
// transport's 30 s idle timeout or the stream's hour.
func TestStoppedAgentsStreamsEnd(t *testing.T) {
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			r := startRelay(t, relayOpts{extra: []string{"--heartbeat", "10s"}})
			r.addTenant(t, "acme")
			d := r.backend(t, "billing", "acme")
			a := startAgent(t, r, "acme", agentOpts{transport: transport, extra: "connections: 1\n", services: map[string]string{"web": tcpService(t, echo)}})
			c := waitDial(t, d, "web.acme.tether:80", 15*time.Second)
			defer c.Close()
			if err := echoes(c); err != nil {
				t.Fatal(err)
			}
			thaw := a.freeze(t)
			defer thaw()
			stopped := time.Now()
			c.SetReadDeadline(time.Now().Add(25 * time.Second))
			var b [1]byte
			_, err := c.Read(b[:])
			took := time.Since(stopped)
			var ne net.Error
			switch {
			case err == nil:
				t.Fatal("read a byte from a stream through a stopped agent")
			case errors.As(err, &ne) && ne.Timeout():
				t.Fatalf("the stream through the stopped agent was still open %v later", took.Round(time.Millisecond))
			case took > 10*time.Second:
				t.Errorf("the stream through the stopped agent ended %v after the stop (%v), want within 10 s", took.Round(time.Millisecond), err)
			default:
				t.Logf("the stream ended %v after the stop: %v", took.Round(time.Millisecond), err)
			}
			waitLine(t, r.proc, func(l string) bool {
				return strings.Contains(l, `"msg":"agent disconnected"`) && strings.Contains(l, `"reason":"heartbeat_missed"`) && strings.Contains(l, "no answer to pings")
			}, 5*time.Second, "the relay closing the stopped agent's session")
		})
	}
}

// TestAgentLeavesStoppedRelay: while a stream is open, an agent whose relay
// stops answering (SIGSTOP) ends that session within 5 s and reconnects,
// rather than after three 10 s heartbeats.
func TestAgentLeavesStoppedRelay(t *testing.T) {
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			r := startRelay(t, relayOpts{extra: []string{"--heartbeat", "10s"}})
			r.addTenant(t, "acme")
			d := r.backend(t, "billing", "acme")
			a := startAgent(t, r, "acme", agentOpts{transport: transport, extra: "connections: 1\n", services: map[string]string{"web": tcpService(t, echo)}})
			c := waitDial(t, d, "web.acme.tether:80", 15*time.Second)
			defer c.Close()
			if err := echoes(c); err != nil {
				t.Fatal(err)
			}
			before := len(a.out.String())
			thaw := r.freeze(t)
			defer thaw()
			stopped := time.Now()
			const lost = `"msg":"connection to relay lost; reconnecting"`
			for !strings.Contains(a.out.String()[before:], lost) {
				if time.Since(stopped) > 5*time.Second {
					t.Fatalf("the agent did not leave the stopped relay within 5 s:\n%s", a.out.String()[before:])
				}
				time.Sleep(20 * time.Millisecond)
			}
			took := time.Since(stopped)
			out := a.out.String()[before:]
			line := out[strings.Index(out, lost):]
			line = line[:strings.IndexByte(line, '\n')]
			if !strings.Contains(line, "relay silent for") {
				t.Errorf("the agent left for another reason: %s", line)
			}
			t.Logf("left after %v: %s", took.Round(time.Millisecond), line)
			thaw()
			a.waitOutput(`"msg":"connected to relay"`, 20*time.Second)
		})
	}
}

// TestDisconnectReasons: the relay says why each agent session ended, in
// its log and in tether_agent_disconnects_total.
func TestDisconnectReasons(t *testing.T) {
	ops := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r := startRelay(t, relayOpts{extra: []string{"--metrics-listen", ops}}) // the harness's 1 s heartbeat
	r.addTenant(t, "acme")
	one := agentOpts{extra: "connections: 1\n", services: map[string]string{"web": tcpService(t, echo)}}
	quicOne, tcpOne := one, one
	quicOne.transport, tcpOne.transport = "quic", "tcp"
	closer := startAgent(t, r, "acme", quicOne)
	frozen := startAgent(t, r, "acme", tcpOne)
	revoked := startAgent(t, r, "acme", quicOne)

	closer.stop(10 * time.Second)
	thaw := frozen.freeze(t)
	defer thaw()
	r.admin(t, "agent", "revoke", revoked.id)
	want := map[string]string{closer.id: "agent_closed", frozen.id: "heartbeat_missed", revoked.id: "revoked"}
	for id, reason := range want {
		waitLine(t, r.proc, func(l string) bool {
			return strings.Contains(l, `"msg":"agent disconnected"`) && strings.Contains(l, `"agent":"`+id+`"`) && strings.Contains(l, `"reason":"`+reason+`"`)
		}, 15*time.Second, "agent "+id+" disconnected with reason "+reason)
	}
	m := scrape(t, ops)
	for _, reason := range []string{"agent_closed", "heartbeat_missed", "revoked"} {
		if got := m[`tether_agent_disconnects_total{reason="`+reason+`"}`]; got < 1 {
			t.Errorf("tether_agent_disconnects_total{reason=%q} = %v, want at least 1", reason, got)
		}
	}
	if got, ok := m[`tether_agent_disconnects_total{reason="idle_timeout"}`]; !ok || got != 0 {
		t.Errorf(`tether_agent_disconnects_total{reason="idle_timeout"} = %v (present %v), want 0`, got, ok)
	}
}

// waitLine waits until a line of p's output satisfies match.
func waitLine(t *testing.T, p *proc, match func(string) bool, d time.Duration, what string) {
	t.Helper()
	for deadline := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		for _, l := range strings.Split(p.out.String(), "\n") {
			if match(l) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen within %v", what, d)
		}
	}
}
