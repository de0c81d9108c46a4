package test

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// proc is a running binary whose output is kept for assertions and shown
// when the test fails.
type proc struct {
	t    testing.TB
	name string
	args []string
	env  []string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// start runs bin with args; the process is killed when the test ends.
func start(t testing.TB, name, bin string, args ...string) *proc {
	t.Helper()
	return startEnv(t, name, nil, bin, args...)
}

// startEnv is start with environment variables (KEY=value) added to the
// test's own.
func startEnv(t testing.TB, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, args: append([]string{bin}, args...), env: env, out: &syncBuffer{}}
	p.launch()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("---- output of %s ----\n%s", p.name, p.out.String())
		}
	})
	return p
}

func (p *proc) launch() {
	p.t.Helper()
	p.cmd = exec.Command(p.args[0], p.args[1:]...)
	p.cmd.Env = append(os.Environ(), p.env...)
	p.cmd.SysProcAttr = childAttr()
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	p.done = make(chan struct{})
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
}

// kill stops the process at once (SIGKILL) and waits for it.
func (p *proc) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Kill()
	<-p.done
}

// stop asks the process to stop (SIGTERM) and waits up to d, then kills.
func (p *proc) stop(d time.Duration) error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		p.t.Errorf("%s did not stop within %v of SIGTERM", p.name, d)
		p.kill()
		return errors.New("killed")
	}
}

// restart starts the same command again after it has exited.
func (p *proc) restart() {
	p.t.Helper()
	<-p.done
	p.launch()
}

// waitOutputOrExit waits until the process output contains s (true) or the
// process exits first (false).
func (p *proc) waitOutputOrExit(s string, d time.Duration) bool {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(p.out.String(), s) {
		if time.Now().After(deadline) {
			p.t.Fatalf("%s did not print %q within %v", p.name, s, d)
		}
		select {
		case <-p.done:
			return strings.Contains(p.out.String(), s)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return true
}

// waitOutput waits until the process output contains s.
func (p *proc) waitOutput(s string, d time.Duration) {
	p.t.Helper()
	if !p.waitOutputOrExit(s, d) {
		p.t.Fatalf("%s exited (%v) before printing %q", p.name, p.err, s)
	}
}

// runCmd runs a binary to completion and returns stdout, stderr and the error.
func runCmd(t testing.TB, bin string, args ...string) (string, string, error) {
	t.Helper()
	return runCmdEnv(t, nil, bin, args...)
}

// runCmdEnv is runCmd with environment variables (KEY=value) added to the
// test's own.
func runCmdEnv(t testing.TB, env []string, bin string, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// mustRun is runCmd failing the test on error; it returns trimmed stdout.
func mustRun(t testing.TB, bin string, args ...string) string {
	t.Helper()
	out, errOut, err := runCmd(t, bin, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", filepath.Base(bin), strings.Join(args, " "), err, out, errOut)
	}
	return strings.TrimSpace(out)
}

// freePort returns a port free on 127.0.0.1 for both TCP and UDP.
func freePort(t testing.TB) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// stablePort returns a port free on 127.0.0.1 for both TCP and UDP below
// the kernel's ephemeral range (32768 and up by default), so that no socket
// bound to port 0 — such as the UDP sockets of thousands of QUIC agents
// dialling at once — can take it while its server restarts.
func stablePort(t testing.TB) int {
	t.Helper()
	for range 200 {
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port below the ephemeral range")
	return 0
}

// relayProc is a tether-relay serve process and its data directory.
type relayProc struct {
	*proc
	dataDir     string
	agentAddr   string
	socksAddr   string
	connectAddr string
}

type relayOpts struct {
	agentPort  int      // the agent port; default a free ephemeral one
	transports string   // --transports; default both
	extra      []string // more serve flags
}

// startRelay initialises a data directory and runs tether-relay serve on
// free loopback ports. A port found free can be taken by another test's
// socket before the relay binds it; the relay then exits saying so, and
// it is started again on other ports (at most twice).
func startRelay(t testing.TB, o relayOpts) *relayProc {
	t.Helper()
	if o.transports == "" {
		o.transports = "quic,tcp"
	}
	for attempt := 1; ; attempt++ {
		r := &relayProc{
			dataDir:     t.TempDir(),
			agentAddr:   fmt.Sprintf("127.0.0.1:%d", cmp.Or(o.agentPort, freePort(t))),
			socksAddr:   fmt.Sprintf("127.0.0.1:%d", freePort(t)),
			connectAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		}
		args := []string{"serve", "--data-dir", r.dataDir, "--agent-listen", r.agentAddr,
			"--socks-listen", r.socksAddr, "--connect-listen", r.connectAddr,
			"--transports", o.transports, "--heartbeat", "1s", "--log-format", "json", "--log-level", "debug"}
		args = append(args, o.extra...)
		r.proc = start(t, "tether-relay", bins.relay, args...)
		const serving = `"msg":"relay serving"`
		if r.waitOutputOrExit(serving, 20*time.Second) {
			return r
		}
		if attempt < 3 && strings.Contains(r.out.String(), "address already in use") {
			t.Logf("tether-relay: a port was taken between choosing and binding it; starting again on others:\n%s", r.out.String())
			continue
		}
		t.Fatalf("%s exited (%v) before printing %q", r.name, r.err, serving)
	}
}

// admin runs an admin subcommand on the relay's data directory.
func (r *relayProc) admin(t testing.TB, args ...string) string {
	t.Helper()
	return mustRun(t, bins.relay, append(args, "--data-dir", r.dataDir)...)
}

// addTenant creates a tenant.
func (r *relayProc) addTenant(t testing.TB, name string) {
	t.Helper()
	r.admin(t, "tenant", "add", name)
}

// token creates a join token for tenant.
func (r *relayProc) token(t testing.TB, tenant string, extra ...string) string {
	t.Helper()
	return r.admin(t, append([]string{"token", "create", "--tenant", tenant}, extra...)...)
}

// backend creates a backend credential and returns a Dialer using it.
func (r *relayProc) backend(t testing.TB, name string, tenants ...string) *client.Dialer {
	t.Helper()
	key := r.admin(t, "backend", "add", name, "--tenants", strings.Join(tenants, ","))
	return &client.Dialer{Relay: r.connectAddr, Backend: name, APIKey: key, Timeout: 20 * time.Second}
}

// agentProc is an enrolled tether-agent run process.
type agentProc struct {
	*proc
	stateDir string
	config   string
	id       string
}

type agentOpts struct {
	transport string              // auto (default), quic or tcp
	services  map[string]string   // name → host:port
	backends  map[string][]string // service name → the only backends the agent lets reach it
	relay     string              // default the relay's agent address
	extra     string              // more YAML
	logLevel  string              // default debug
	bin       string              // default bins.agent
}

// enroll enrols an agent with a token and returns its state directory.
func enroll(t testing.TB, relayAddr, token string) (stateDir, id string) {
	t.Helper()
	stateDir = filepath.Join(t.TempDir(), "state")
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	id = mustRun(t, bins.agent, "enroll", "--relay", relayAddr, "--token-file", tokenFile, "--state-dir", stateDir)
	return stateDir, id
}

// startAgent enrols a new agent of tenant and runs it with the given
// services.
func startAgent(t testing.TB, r *relayProc, tenant string, o agentOpts) *agentProc {
	t.Helper()
	stateDir, id := enroll(t, r.agentAddr, r.token(t, tenant))
	return runAgent(t, stateDir, id, r.agentAddr, o)
}

// runAgent writes a config for an enrolled state directory and runs the agent.
func runAgent(t testing.TB, stateDir, id, relayAddr string, o agentOpts) *agentProc {
	t.Helper()
	if o.relay != "" {
		relayAddr = o.relay
	}
	if o.transport == "" {
		o.transport = "auto"
	}
	if o.logLevel == "" {
		o.logLevel = "debug"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "relays: [%q]\nstate_dir: %q\ntransport: %s\nreconnect: {initial: 100ms, max: 1s}\nlog: {level: %s, format: json}\n", relayAddr, stateDir, o.transport, o.logLevel)
	if len(o.services) == 0 {
		b.WriteString("services: {}\n")
	} else {
		b.WriteString("services:\n")
		for name, addr := range o.services {
			if bs := o.backends[name]; len(bs) > 0 {
				fmt.Fprintf(&b, "  %s: {address: %q, backends: [%s]}\n", name, addr, strings.Join(bs, ", "))
				continue
			}
			fmt.Fprintf(&b, "  %s: %q\n", name, addr)
		}
	}
	b.WriteString(o.extra)
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &agentProc{stateDir: stateDir, config: cfg, id: id}
	bin := bins.agent
	if o.bin != "" {
		bin = o.bin
	}
	a.proc = start(t, "tether-agent "+id, bin, "run", "--config", cfg)
	a.waitOutput(`"msg":"connected to relay"`, 20*time.Second)
	return a
}

// waitDial retries d.DialContext(addr) until it succeeds, for at most wait.
func waitDial(t testing.TB, d *client.Dialer, addr string, wait time.Duration) net.Conn {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := d.DialContext(ctx, "tcp", addr)
		cancel()
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("dial %s through the relay: still failing after %v: %v", addr, wait, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tcpService runs a TCP server on loopback calling handle for each
// connection; it stops when the test ends.
func tcpService(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex // guards conns
	conns := map[net.Conn]bool{}
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					c.Close()
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
				}()
				handle(c)
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String()
}

// echo copies a connection back to itself and half-closes at EOF.
func echo(c net.Conn) {
	io.Copy(c, c)
	c.(*net.TCPConn).CloseWrite()
}

// readLine reads one line from r.
func readLine(r io.Reader) (string, error) {
	s, err := bufio.NewReader(r).ReadString('\n')
	return strings.TrimSpace(s), err
}

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }
