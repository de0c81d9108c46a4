package test

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
	"github.com/tetherhq/tether/test/internal/e2e"
)

// proc is a running binary (e2e.Proc) under the names this package's
// tests use.
type proc struct {
	*e2e.Proc
	t    testing.TB
	name string
	out  *syncBuffer // the process's output, across restarts
}

type syncBuffer = e2e.SyncBuffer

func wrapProc(t testing.TB, p *e2e.Proc) *proc {
	return &proc{Proc: p, t: t, name: p.Name, out: p.Out}
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
	return wrapProc(t, e2e.Start(t, name, env, append([]string{bin}, args...)...))
}

// kill stops the process at once (SIGKILL) and waits for it.
func (p *proc) kill() { p.Kill() }

// stop asks the process to stop (SIGTERM) and waits up to d, then kills.
func (p *proc) stop(d time.Duration) error { return p.Stop(d) }

// restart starts the same command again after it has exited.
func (p *proc) restart() {
	p.t.Helper()
	p.Restart()
}

// waitOutput waits until the process output contains s.
func (p *proc) waitOutput(s string, d time.Duration) {
	p.t.Helper()
	p.WaitOutput(s, d)
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
	return e2e.Run(env, append([]string{bin}, args...)...)
}

// mustRun is runCmd failing the test on error; it returns trimmed stdout.
func mustRun(t testing.TB, bin string, args ...string) string {
	t.Helper()
	return e2e.MustRun(t, append([]string{bin}, args...)...)
}

// freePort returns a port free on 127.0.0.1 for both TCP and UDP.
func freePort(t testing.TB) int {
	t.Helper()
	return e2e.FreePort(t, "127.0.0.1")
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

// relayProc is a tether-relay serve process (e2e.Relay) and its data
// directory.
type relayProc struct {
	*proc
	r           *e2e.Relay
	dataDir     string
	agentAddr   string
	socksAddr   string
	connectAddr string
}

type relayOpts struct {
	agentHost  string   // the agent port's address; default 127.0.0.1
	agentPort  int      // the agent port; default a free ephemeral one
	transports string   // --transports; default both
	extra      []string // more serve flags
	env        []string // more environment variables (NAME=value)
	bin        string   // the tether-relay binary; default bins.relay
}

// startRelay initialises a data directory and runs tether-relay serve on
// free loopback ports with a 1 s heartbeat (e2e.StartRelay).
func startRelay(t testing.TB, o relayOpts) *relayProc {
	t.Helper()
	r := e2e.StartRelay(t, cmp.Or(o.bin, bins.relay), e2e.RelayOptions{AgentHost: o.agentHost, AgentPort: o.agentPort, Transports: o.transports,
		Heartbeat: time.Second, Extra: o.extra, Env: o.env})
	return &relayProc{proc: wrapProc(t, r.Proc), r: r, dataDir: r.DataDir, agentAddr: r.AgentAddr,
		socksAddr: r.SocksAddr, connectAddr: r.ConnectAddr}
}

// admin runs an admin subcommand on the relay's data directory.
func (r *relayProc) admin(t testing.TB, args ...string) string {
	t.Helper()
	return r.r.Admin(t, args...)
}

// addTenant creates a tenant.
func (r *relayProc) addTenant(t testing.TB, name string) {
	t.Helper()
	r.r.AddTenant(t, name)
}

// token creates a join token for tenant.
func (r *relayProc) token(t testing.TB, tenant string, extra ...string) string {
	t.Helper()
	return r.r.Token(t, tenant, extra...)
}

// backend creates a backend credential and returns a Dialer using it.
func (r *relayProc) backend(t testing.TB, name string, tenants ...string) *client.Dialer {
	t.Helper()
	return r.r.Backend(t, name, tenants...)
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
	return e2e.Enroll(t, nil, bins.agent, relayAddr, token)
}

// startAgent enrols a new agent of tenant and runs it with the given
// services.
func startAgent(t testing.TB, r *relayProc, tenant string, o agentOpts) *agentProc {
	t.Helper()
	stateDir, id := enroll(t, r.agentAddr, r.token(t, tenant))
	return runAgent(t, stateDir, id, r.agentAddr, o)
}

// runAgent writes a config for an enrolled state directory and runs the
// agent (e2e.RunAgent).
func runAgent(t testing.TB, stateDir, id, relayAddr string, o agentOpts) *agentProc {
	t.Helper()
	a := e2e.RunAgent(t, cmp.Or(o.bin, bins.agent), stateDir, id, cmp.Or(o.relay, relayAddr), e2e.AgentOptions{
		Transport: o.transport, Services: o.services, Backends: o.backends, Extra: o.extra, LogLevel: o.logLevel})
	return &agentProc{proc: wrapProc(t, a.Proc), stateDir: a.StateDir, config: a.Config, id: a.ID}
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
