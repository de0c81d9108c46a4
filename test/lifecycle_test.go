package test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

func TestAgentAndRelayRestarts(t *testing.T) {
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			r := startRelay(t, relayOpts{})
			r.addTenant(t, "acme")
			d := r.backend(t, "billing", "acme")
			a := startAgent(t, r, "acme", agentOpts{transport: transport, services: map[string]string{"echo": tcpService(t, echo)}})
			check := func(step string) {
				t.Helper()
				c := waitDial(t, d, "echo.acme.tether:7", 20*time.Second)
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.WriteString(c, step+"\n")
				if got, err := readLine(c); err != nil || got != step {
					t.Fatalf("%s: echo got %q, %v", step, got, err)
				}
			}
			check("before")

			// The agent dies without a word; the relay notices and refuses
			// with no_agent instead of hanging.
			a.kill()
			waitDialErr(t, d, "echo.acme.tether:7", client.ErrNoAgent)
			a.restart()
			check("after agent restart")

			// The relay dies; the agent reconnects on its own once it is back.
			r.kill()
			if c, err := d.Dial("tcp", "echo.acme.tether:7"); err == nil {
				c.Close()
				t.Fatal("dial succeeded with the relay down")
			}
			r.restart()
			r.waitOutput(`"msg":"relay serving"`, 20*time.Second)
			check("after relay restart")
			if n := strings.Count(a.out.String(), `"msg":"connected to relay"`); n < 3 {
				t.Fatalf("agent logged %d connections, want at least 3 (initial, after its restart, after the relay's)", n)
			}
		})
	}
}

// A QUIC agent whose relay goes silent — no answer to a heartbeat and not
// one packet since, as when the relay's host dies — leaves after that
// heartbeat's pong wait, not only after three silent heartbeats.
func TestQUICAgentLeavesASilentRelay(t *testing.T) {
	r := startRelay(t, relayOpts{extra: []string{"--heartbeat", "4s"}})
	proxyAddr, blocked := gatedProxy(t, r.agentAddr)
	r.addTenant(t, "acme")
	a := startAgent(t, r, "acme", agentOpts{transport: "quic", relay: proxyAddr, extra: "connections: 1\n",
		services: map[string]string{"echo": tcpService(t, echo)}})
	a.waitOutput(`"msg":"connected to relay"`, 10*time.Second)
	blocked.Store(true)
	silent := time.Now()
	// pong wait = heartbeat/2, at least 2 s: the agent leaves within one
	// heartbeat and that wait (6 s); the silence limit would take 12 s.
	a.waitOutput("relay did not answer a heartbeat within 2s and sent no packet since", 9*time.Second)
	t.Logf("left a silent relay after %v", time.Since(silent).Round(100*time.Millisecond))
	if strings.Contains(a.out.String(), "relay silent for") {
		t.Fatal("the agent waited for the silence limit")
	}
}

func TestAutoFallsBackToTCPWhenUDPIsBlocked(t *testing.T) {
	r := startRelay(t, relayOpts{transports: "tcp"})
	// The relay serves TCP only; a socket on the same UDP port swallows
	// every QUIC packet, as a firewall dropping UDP would.
	host, port, _ := net.SplitHostPort(r.agentAddr)
	p, _ := strconv.Atoi(port)
	hole, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(host), Port: p})
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := hole.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	r.addTenant(t, "acme")
	d := r.backend(t, "billing", "acme")
	start := time.Now()
	a := startAgent(t, r, "acme", agentOpts{transport: "auto", services: map[string]string{"echo": tcpService(t, echo)}, extra: "quic_timeout: 1s\n"})
	a.waitOutput("falling back to TLS over TCP", time.Second)
	if el := time.Since(start); el > 15*time.Second {
		t.Fatalf("agent took %v to connect with UDP blocked", el)
	}
	c := waitDial(t, d, "echo.acme.tether:7", 10*time.Second)
	c.Close()
	r.waitOutput(`"transport":"tcp"`, time.Second)
	r.waitOutput(`"transport_why":"fallback: QUIC failed`, time.Second)
}

func TestGracefulRelayShutdownDrains(t *testing.T) {
	r := startRelay(t, relayOpts{extra: []string{"--drain-timeout", "5s"}})
	r.addTenant(t, "acme")
	d := r.backend(t, "billing", "acme")
	a := startAgent(t, r, "acme", agentOpts{transport: "quic", services: map[string]string{"echo": tcpService(t, echo)}})
	c := waitDial(t, d, "echo.acme.tether:7", 10*time.Second)
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	stopped := make(chan error, 1)
	go func() { stopped <- r.stop(20 * time.Second) }()
	a.waitOutput("relay asked this agent to reconnect", 10*time.Second)
	// The stream opened before the shutdown still works during the drain.
	io.WriteString(c, "still here\n")
	if got, err := readLine(c); err != nil || got != "still here" {
		t.Fatalf("stream during drain: got %q, %v", got, err)
	}
	c.(*client.Conn).CloseWrite()
	io.Copy(io.Discard, c)
	if err := <-stopped; err != nil {
		t.Fatalf("relay exit after SIGTERM: %v", err)
	}
}

func TestIdleStreamsTimeOut(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	d := r.backend(t, "billing", "acme")
	startAgent(t, r, "acme", agentOpts{transport: "tcp", services: map[string]string{"echo": tcpService(t, echo)}, extra: "idle_timeout: 1s\n"})
	c := waitDial(t, d, "echo.acme.tether:7", 10*time.Second)
	defer c.Close()
	io.WriteString(c, "ping\n")
	br := bufio.NewReader(c)
	if got, _ := br.ReadString('\n'); got != "ping\n" {
		t.Fatalf("got %q", got)
	}
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	start := time.Now()
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("read data from an idle stream")
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("idle stream closed after %v; idle_timeout is 1s", el)
	}
}

func TestDemoCommandWorksAsPrinted(t *testing.T) {
	out := mustRun(t, bins.relay, "demo", "--once", "--socks-listen", "127.0.0.1:0", "--connect-listen", "127.0.0.1:0")
	if !strings.Contains(out, "HTTP 200: Hello from tenant \"demo\"") {
		t.Fatalf("demo --once output lacks the answer through the tunnel:\n%s", out)
	}
	if strings.Contains(out, "curl ") {
		t.Fatalf("demo --once prints curl lines for doors closed when it exits:\n%s", out)
	}
	// Now the long-running demo: run the curl lines it prints, as printed.
	p := start(t, "demo", bins.relay, "demo", "--socks-listen", "127.0.0.1:0", "--connect-listen", "127.0.0.1:0")
	p.waitOutput("Press Ctrl-C to stop.", 60*time.Second)
	var lines []string
	for _, l := range strings.Split(p.out.String(), "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "curl ") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 2 {
		t.Fatalf("demo printed %d curl lines, want 2:\n%s", len(lines), p.out.String())
	}
	for _, l := range lines {
		got, err := exec.Command("sh", "-c", l+" --silent --show-error --max-time 20").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(got), "Hello from tenant \"demo\"") {
			t.Fatalf("%s\n  => %v: %s", l, err, got)
		}
	}
	if err := p.stop(20 * time.Second); err != nil {
		t.Fatalf("demo exit after SIGTERM: %v", err)
	}
}

func TestAutoMovesBackToQUICWhenUDPReturns(t *testing.T) {
	r := startRelay(t, relayOpts{})
	proxyAddr, blocked := gatedProxy(t, r.agentAddr)
	blocked.Store(true)
	r.addTenant(t, "acme")
	d := r.backend(t, "billing", "acme")
	a := startAgent(t, r, "acme", agentOpts{
		transport: "auto", relay: proxyAddr,
		services: map[string]string{"echo": tcpService(t, echo)},
		extra:    "connections: 1\nquic_timeout: 1s\nquic_retry: 2s\n",
	})
	a.waitOutput("falling back to TLS over TCP", time.Second)

	// A connection opened over the TCP fallback …
	c := waitDial(t, d, "echo.acme.tether:7", 10*time.Second)
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	roundTrip := func(msg string) {
		t.Helper()
		io.WriteString(c, msg+"\n")
		if got, err := readLine(c); err != nil || got != msg {
			t.Fatalf("echo %q: got %q, %v", msg, got, err)
		}
	}
	roundTrip("over tcp")

	// … survives the agent moving to QUIC once UDP passes again.
	blocked.Store(false)
	a.waitOutput(`"transport_why":"auto: QUIC available again after a fallback"`, 15*time.Second)
	r.waitOutput(`"msg":"agent is draining","transport":"tcp"`, 5*time.Second)
	roundTrip("after the move")
	c2 := waitDial(t, d, "echo.acme.tether:7", 10*time.Second)
	c2.Close()
	c.(*client.Conn).CloseWrite()
	io.Copy(io.Discard, c)
	// With its last stream gone, the TCP session closes.
	r.waitOutput(`"msg":"agent disconnected","transport":"tcp"`, 15*time.Second)
}

// After a relay restart, a stream to a tenant whose agent was connected
// before waits for that agent to come back instead of failing; a tenant
// that had no agent fails at once, and so does everything after the grace.
func TestStreamsWaitForAgentsAfterRelayRestart(t *testing.T) {
	const grace = 8 * time.Second
	r := startRelay(t, relayOpts{extra: []string{"--reconnect-grace", grace.String()}})
	r.addTenant(t, "acme")
	r.addTenant(t, "other")
	d := r.backend(t, "billing", "acme", "other")
	a := startAgent(t, r, "acme", agentOpts{transport: "tcp", services: map[string]string{"echo": tcpService(t, echo)}})
	waitDial(t, d, "echo.acme.tether:7", 20*time.Second).Close()

	// A graceful stop records acme in the roster; the agent then dies too,
	// so that after the restart acme's agent is missing for a while.
	if err := r.stop(15 * time.Second); err != nil {
		t.Fatalf("relay stop: %v", err)
	}
	a.kill()
	r.restart()
	restarted := time.Now()
	waitCount(t, r.proc, `"msg":"relay serving"`, 2, 20*time.Second)

	start := time.Now()
	if _, err := d.Dial("tcp", "echo.other.tether:7"); !errors.Is(err, client.ErrNoAgent) {
		t.Fatalf("tenant without agents: got %v, want no_agent", err)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Errorf("a tenant that had no agent waited %v", waited)
	}

	dialWhileAgentReturns(t, d, "echo.acme.tether:7", a)

	// After the grace, a missing agent is reported at once again.
	a.kill()
	time.Sleep(time.Until(restarted.Add(grace + 500*time.Millisecond)))
	start = time.Now()
	waitDialErr(t, d, "echo.acme.tether:7", client.ErrNoAgent)
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("after the grace, no_agent took %v", waited)
	}
}

// dialWhileAgentReturns dials addr, starts the stopped agent a again 1.5 s
// later, and fails the test unless the dial waited for the agent and
// succeeded.
func dialWhileAgentReturns(t *testing.T, d *client.Dialer, addr string, a *agentProc) {
	t.Helper()
	type result struct {
		err    error
		waited time.Duration
	}
	done := make(chan result, 1)
	go func() {
		start := time.Now()
		c, err := d.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		done <- result{err, time.Since(start)}
	}()
	time.Sleep(1500 * time.Millisecond)
	a.restart()
	res := <-done
	if res.err != nil {
		t.Fatalf("stream to a returning agent's tenant: %v", res.err)
	}
	if res.waited < time.Second {
		t.Errorf("the stream succeeded after %v, before the agent was back: the test proves nothing", res.waited)
	}
}

// A relay that crashes a moment after a tenant's first agent connected
// still expects that tenant back: the roster is written when a tenant
// gains its first agent, not only every ten seconds, so after the restart a
// stream waits for the agent instead of failing with no_agent.
func TestStreamsWaitForAgentsAfterRelayCrash(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	d := r.backend(t, "billing", "acme")
	a := startAgent(t, r, "acme", agentOpts{transport: "tcp", services: map[string]string{"echo": tcpService(t, echo)}})
	waitDial(t, d, "echo.acme.tether:7", 20*time.Second).Close()

	// The relay's periodic write of the roster comes 10 s after it
	// started, after this check unless starting the agent took over 7 s.
	roster := filepath.Join(r.dataDir, "connected-tenants.json")
	deadline := time.Now().Add(3 * time.Second)
	for {
		raw, _ := os.ReadFile(roster)
		if strings.Contains(string(raw), `"acme"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("3 s after acme's agent connected, the roster reads %q", raw)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A crash writes nothing on the way out; the agent is gone too, so that
	// after the restart acme's agent is missing for a while.
	r.kill()
	a.kill()
	r.restart()
	waitCount(t, r.proc, `"msg":"relay serving"`, 2, 20*time.Second)
	dialWhileAgentReturns(t, d, "echo.acme.tether:7", a)
}
