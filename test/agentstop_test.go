package test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// A relay that drains longer than its agents do keeps its tunnels for its
// whole drain: its GoAway says how long, and the agent keeps the streams
// in flight open that long instead of closing them at its own (shorter)
// drain timeout.
func TestAgentHonoursTheRelaysDrainDeadline(t *testing.T) {
	const agentDrain, relayDrain = time.Second, 8 * time.Second
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			r := startRelay(t, relayOpts{extra: []string{"--drain-timeout", relayDrain.String()}})
			r.addTenant(t, "acme")
			d := r.backend(t, "billing", "acme")
			a := startAgent(t, r, "acme", agentOpts{transport: transport, services: map[string]string{"echo": tcpService(t, echo)},
				extra: "drain_timeout: " + agentDrain.String() + "\n"})
			c := waitDial(t, d, "echo.acme.tether:7", 20*time.Second)
			defer c.Close()
			echoOnce(t, c, "before the drain")

			stopped := make(chan error, 1)
			go func() { stopped <- r.stop(relayDrain + 20*time.Second) }()
			a.waitOutput("relay asked this agent to reconnect", 10*time.Second)
			goaway := time.Now()
			// The stream keeps working past the agent's own drain timeout,
			// up to well inside the relay's: checked every 100 ms.
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for i := 0; time.Since(goaway) < 2*agentDrain+time.Second; i++ {
				echoOnce(t, c, fmt.Sprintf("during the drain, %d", i))
				<-tick.C
			}
			if strings.Contains(a.out.String(), "drain timeout: closing streams still open") {
				t.Fatal("the agent cut the stream at its own drain timeout")
			}
			c.(*client.Conn).CloseWrite()
			io.Copy(io.Discard, c)
			if err := <-stopped; err != nil {
				t.Fatalf("relay exit after SIGTERM: %v", err)
			}
		})
	}
}

// holdingService runs a TCP service that reads what it is sent and never
// closes its side, even after the peer has closed its own (an idle psql
// session's server, a stuck backend). Each connection's end — the error or
// io.EOF that ended its read — is sent on ended.
func holdingService(t *testing.T) (addr string, got <-chan struct{}, ended <-chan error) {
	t.Helper()
	release := make(chan struct{})
	gotc, endedc := make(chan struct{}, 16), make(chan error, 16)
	addr = tcpService(t, func(c net.Conn) {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				select {
				case gotc <- struct{}{}:
				default:
				}
			}
			if err != nil {
				endedc <- err
				break
			}
		}
		<-release // hold the connection open until the test ends
	})
	t.Cleanup(func() { close(release) }) // before tcpService's cleanup
	return addr, gotc, endedc
}

// An agent stopped with SIGTERM while a stream is open to a service that
// never closes its side exits within its drain timeout plus 2 s, on both
// transports: at the drain deadline it closes the service connection
// rather than wait for the service.
func TestSIGTERMedAgentExitsWithAStreamToAServiceThatNeverCloses(t *testing.T) {
	const drain = 2 * time.Second
	for _, transport := range []string{"tcp", "quic"} {
		t.Run(transport, func(t *testing.T) {
			r := startRelay(t, relayOpts{})
			r.addTenant(t, "acme")
			d := r.backend(t, "billing", "acme")
			svc, got, ended := holdingService(t)
			a := startAgent(t, r, "acme", agentOpts{transport: transport, services: map[string]string{"hold": svc},
				extra: "drain_timeout: " + drain.String() + "\n"})
			c := waitDial(t, d, "hold.acme.tether:7", 20*time.Second)
			defer c.Close()
			if _, err := io.WriteString(c, "SELECT 1;\n"); err != nil {
				t.Fatal(err)
			}
			select {
			case <-got:
			case <-time.After(10 * time.Second):
				t.Fatal("the service did not receive the query")
			}

			start := time.Now()
			if err := a.stop(drain + 2*time.Second); err != nil {
				t.Fatalf("agent exit after SIGTERM: %v", err)
			}
			t.Logf("the agent exited %v after SIGTERM (drain timeout %v)", time.Since(start).Round(10*time.Millisecond), drain)
			select {
			case err := <-ended:
				t.Logf("the service's connection ended: %v", err)
			case <-time.After(5 * time.Second):
				t.Fatal("the service's connection is still open after the agent exited")
			}
			a.waitOutput(`"msg":"agent stopped"`, time.Second)
		})
	}
}

// A service that resets a connection in the middle of an upload (iperf3's
// server ending a test with bytes unread) has the backend's connection
// reset promptly, on both transports, rather than held open until the
// agent's session ends.
func TestServiceResetMidUploadReachesTheBackend(t *testing.T) {
	for _, transport := range []string{"tcp", "quic"} {
		t.Run(transport, func(t *testing.T) {
			r := startRelay(t, relayOpts{})
			r.addTenant(t, "acme")
			d := r.backend(t, "billing", "acme")
			resetAt := make(chan time.Time, 1)
			svc := tcpService(t, func(c net.Conn) {
				// Take part of the upload, then reset: SO_LINGER 0 makes
				// the close send RST.
				if _, err := io.CopyN(io.Discard, c, 1<<20); err != nil {
					t.Errorf("service read: %v", err)
				}
				c.(*net.TCPConn).SetLinger(0)
				resetAt <- time.Now()
			})
			startAgent(t, r, "acme", agentOpts{transport: transport, services: map[string]string{"sink": svc}})
			c := waitDial(t, d, "sink.acme.tether:7", 20*time.Second)
			defer c.Close()

			wrote, read := make(chan error, 1), make(chan error, 1)
			go func() {
				buf := make([]byte, 32<<10)
				for {
					if _, err := c.Write(buf); err != nil {
						wrote <- err
						return
					}
				}
			}()
			go func() {
				_, err := c.Read(make([]byte, 1))
				read <- err
			}()
			var reset time.Time
			select {
			case reset = <-resetAt:
			case <-time.After(20 * time.Second):
				t.Fatal("the upload did not reach the service")
			}
			// Both directions end promptly, with a reset: the kernel
			// reports it to the first call that meets it (here usually
			// the upload), and a read after it sees the end of the
			// stream.
			ends := map[string]error{}
			for _, dir := range []struct {
				what string
				errc chan error
			}{{"read", read}, {"upload", wrote}} {
				select {
				case err := <-dir.errc:
					ends[dir.what] = err
					t.Logf("backend %s ended %v after the service's reset: %v", dir.what, time.Since(reset).Round(time.Millisecond), err)
				case <-time.After(5 * time.Second):
					c.Close() // ends the goroutines
					t.Fatalf("backend %s still going 5s after the service reset the connection", dir.what)
				}
			}
			if ends["upload"] == nil || !errors.Is(ends["read"], syscall.ECONNRESET) && !errors.Is(ends["upload"], syscall.ECONNRESET) {
				t.Errorf("the backend's connection ended with read %v, upload %v; want it reset", ends["read"], ends["upload"])
			}
		})
	}
}

// A revoked agent stops: it logs once what to do and exits with status 3
// (which the systemd unit does not restart on) instead of retrying, and it
// does so again, at once, when started again — in the foreground and as a
// service.
func TestRevokedAgentStops(t *testing.T) {
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			r := startRelay(t, relayOpts{})
			r.addTenant(t, "acme")
			a := startAgent(t, r, "acme", agentOpts{transport: transport, services: map[string]string{"echo": tcpService(t, echo)}})
			r.admin(t, "agent", "revoke", a.id, "--reason", "laptop stolen")
			wantExit(t, a.proc, 3, 20*time.Second)
			out := a.out.String()
			if n := strings.Count(out, `"msg":"the relay refused this agent for good: stopping"`); n != 1 {
				t.Errorf("the agent logged its refusal %d times, want once:\n%s", n, out)
			}
			// Said once: the command line does not print it again.
			if n := strings.Count(out, "restarting the agent will not help"); n != 1 {
				t.Errorf("the agent said what to do %d times, want once:\n%s", n, out)
			}
			for _, want := range []string{"laptop stolen", "enrol it again with a new join token", "tether-agent enroll --force --state-dir " + a.stateDir} {
				if !strings.Contains(out, want) {
					t.Errorf("agent log lacks %q:\n%s", want, out)
				}
			}
			// At most one refused reconnection per connection slot (2).
			refused := strings.Count(r.out.String(), `"msg":"agent refused"`)
			if refused < 1 || refused > 2 {
				t.Errorf("the relay refused %d connections of the revoked agent, want 1 or 2", refused)
			}

			// Started again, in the foreground or as a service, it stops
			// again after one refusal.
			a.restart()
			wantExit(t, a.proc, 3, 20*time.Second)
			svc := start(t, "tether-agent service", bins.agent, "service", "--config", a.config)
			wantExit(t, svc, 3, 20*time.Second)
			if !strings.Contains(svc.out.String(), "revoked") {
				t.Errorf("service run mode log does not say why:\n%s", svc.out.String())
			}
			if n := strings.Count(svc.out.String(), "restarting the agent will not help"); n != 1 {
				t.Errorf("the service run mode said what to do %d times, want once:\n%s", n, svc.out.String())
			}
			waitAudit(t, r, "the refused reconnection", kindOutcome("agent.connect", "revoked"), "--agent", a.id)
		})
	}
}

// wantExit waits up to d for p to exit and fails unless its status is code.
func wantExit(t *testing.T, p *proc, code int, d time.Duration) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(d):
		t.Fatalf("%s still running %v later, want exit status %d", p.Name, d, code)
	}
	var ee *exec.ExitError
	got := 0
	if errors.As(p.Err(), &ee) {
		got = ee.ExitCode()
	} else if p.Err() != nil {
		t.Fatalf("%s: %v", p.Name, p.Err())
	}
	if got != code {
		t.Fatalf("%s exited with status %d, want %d", p.Name, got, code)
	}
}
