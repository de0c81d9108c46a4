package client_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/relay"
	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/client"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// world is a real relay and a real agent of tenant "acme", in this
// process over loopback, with an echo service "echo" behind the agent.
// Backend "billing" may reach acme/echo and acme/greet and nothing else.
type world struct {
	relay   *relay.Relay
	plain   *client.Dialer // the CONNECT door, API key
	tls     *client.Dialer // the CONNECT-over-TLS door, client certificate
	target  string         // echo.acme.tether:7
	greeter string         // greet.acme.tether:7: says hello, half-closes, then reads to EOF
	greeted chan string    // what the greeter read from each connection
	denied  string         // a service of acme the backend has no grant for
	web     string         // web.acme.tether: an HTTP server answering "web <method> <path>", closing the connection after /bye
	echoes  *counter       // connections the echo service accepted
	certDir string
	dataDir string // the relay's data directory, for admin.Open
	socks   string // the SOCKS5 door's address, when worldOpts.socks
	// stopRelay stops the relay (as SIGTERM does: it drains for
	// worldOpts.relayDrainTimeout) and waits for Run to return; at
	// most once, the test's cleanup included.
	stopRelay func()
}

type worldOpts struct {
	relayHandshakeTimeout time.Duration // relay.Config.HandshakeTimeout
	relayIdleTimeout      time.Duration // relay.Config.IdleTimeout
	relayDrainTimeout     time.Duration // relay.Config.DrainTimeout
	socks                 bool          // open the SOCKS5 door too
	// services are more TCP services behind the agent, by name, each
	// granted to the backend.
	services map[string]func(net.Conn)
}

func newWorld(t testing.TB, o worldOpts) *world {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	relayDir := filepath.Join(dir, "relay")
	w := &world{target: "echo.acme.tether:7", greeter: "greet.acme.tether:7", greeted: make(chan string, 16),
		denied: "secret.acme.tether:7", web: "web.acme.tether", echoes: &counter{}, certDir: filepath.Join(dir, "cert"), dataDir: relayDir}

	a, err := admin.Open(ctx, admin.Options{DataDir: relayDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	token, _, err := a.CreateToken(ctx, "acme", 10*time.Minute, 1)
	if err != nil {
		t.Fatal(err)
	}
	grants := []string{"acme/echo", "acme/greet", "acme/web"}
	for name := range o.services {
		grants = append(grants, "acme/"+name)
	}
	key, err := a.AddBackend(ctx, "billing", grants)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := a.IssueBackendCertificate(ctx, "billing", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.WriteFiles(w.certDir); err != nil {
		t.Fatal(err)
	}
	a.Close()

	socks := relay.Off
	if o.socks {
		socks = "127.0.0.1:0"
	}
	r, err := relay.New(relay.Config{
		DataDir: relayDir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: socks,
		ConnectListen: "127.0.0.1:0", ConnectTLSListen: "127.0.0.1:0", HeartbeatInterval: time.Second,
		HandshakeTimeout: o.relayHandshakeTimeout, IdleTimeout: o.relayIdleTimeout, DrainTimeout: o.relayDrainTimeout, Logger: testLogger(t, slog.LevelWarn),
	})
	if err != nil {
		t.Fatal(err)
	}
	w.relay = r
	if o.socks {
		w.socks = r.SOCKSAddr().String()
	}
	runCtx, cancelRelay := context.WithCancel(context.Background())
	relayDone := make(chan error, 1)
	go func() { relayDone <- r.Run(runCtx) }()
	var stopOnce sync.Once
	w.stopRelay = func() {
		stopOnce.Do(func() {
			cancelRelay()
			if err := <-relayDone; err != nil {
				t.Errorf("relay: %v", err)
			}
		})
	}
	t.Cleanup(w.stopRelay)

	echoAddr := serveTCP(t, func(c net.Conn) {
		w.echoes.add()
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
	greetAddr := serveTCP(t, func(c net.Conn) {
		io.WriteString(c, "hello\n")
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		select {
		case w.greeted <- string(b):
		default:
		}
	})
	webLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	webSrv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(rw http.ResponseWriter, req *http.Request) {
		io.Copy(io.Discard, req.Body)
		rw.Header().Set("Tether-Error", "not_allowed") // a service cannot pass for the relay
		if req.URL.Path == "/bye" {
			rw.Header().Set("Connection", "close") // ends the connection, and so its stream
		}
		fmt.Fprintf(rw, "web %s %s", req.Method, req.URL.Path)
	})}
	webDone := make(chan struct{})
	go func() {
		defer close(webDone)
		webSrv.Serve(webLn)
	}()
	t.Cleanup(func() {
		webSrv.Close()
		<-webDone
	})
	services := map[string]agent.Service{"echo": {Address: echoAddr}, "greet": {Address: greetAddr}, "secret": {Address: echoAddr}, "web": {Address: webLn.Addr().String()}}
	for name, handle := range o.services {
		services[name] = agent.Service{Address: serveTCP(t, handle)}
	}
	st, err := agent.Enroll(ctx, agent.EnrollOptions{Relay: r.AgentAddr().String(), Token: token, StateDir: filepath.Join(dir, "agent")})
	if err != nil {
		t.Fatal(err)
	}
	ag, err := agent.New(agent.Config{
		StateDir: st.Dir, Transport: "tcp", NoFileWatch: true,
		Services: services,
		Logger:   testLogger(t, slog.LevelWarn),
	})
	if err != nil {
		t.Fatal(err)
	}
	agentCtx, stopAgent := context.WithCancel(context.Background())
	agentDone := make(chan struct{})
	go func() {
		defer close(agentDone)
		ag.Run(agentCtx)
	}()
	t.Cleanup(func() {
		stopAgent()
		<-agentDone
	})

	w.plain = &client.Dialer{Relay: r.ConnectAddr().String(), Backend: "billing", APIKey: key, Timeout: 20 * time.Second}
	conf, err := client.LoadCertificate(w.certDir)
	if err != nil {
		t.Fatal(err)
	}
	w.tls = &client.Dialer{Relay: r.ConnectTLSAddr().String(), TLSConfig: conf, Timeout: 20 * time.Second}

	// The agent is up once a dial through it succeeds.
	for deadline := time.Now().Add(30 * time.Second); ; {
		c, err := w.plain.DialContext(ctx, "tcp", w.target)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent never became reachable: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The echo service counts that connection on its own goroutine: wait
	// for it, so that tests counting connections start from a settled
	// count.
	w.echoes.wait(t, 1, 10*time.Second, "the readiness connection at the echo service")
	return w
}

// counter counts events and lets a test wait for a count.
type counter struct {
	mu sync.Mutex // guards n and ch
	n  int
	ch chan struct{} // closed and replaced at every add
}

func (c *counter) add() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if c.ch != nil {
		close(c.ch)
		c.ch = nil
	}
}

func (c *counter) get() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// wait waits until the count reaches n.
func (c *counter) wait(t testing.TB, n int, d time.Duration, what string) {
	t.Helper()
	timeout := time.After(d)
	for {
		c.mu.Lock()
		if c.n >= n {
			c.mu.Unlock()
			return
		}
		if c.ch == nil {
			c.ch = make(chan struct{})
		}
		ch := c.ch
		c.mu.Unlock()
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("%s: count %d after %v, want %d", what, c.get(), d, n)
		}
	}
}

// serveTCP runs a TCP server on loopback calling handle for each
// connection (which it closes afterwards) until the test ends.
func serveTCP(t testing.TB, handle func(net.Conn)) string {
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

// testLogger logs to the test's log at level and above.
func testLogger(t testing.TB, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// logBuffer is a JSON log a test reads, also shown in the test's log.
type logBuffer struct {
	t   testing.TB
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func newLogBuffer(t testing.TB) (*logBuffer, *slog.Logger) {
	b := &logBuffer{t: t}
	return b, slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.t.Log(strings.TrimSpace(string(p)))
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls the log until it contains every one of subs.
func (b *logBuffer) waitFor(t testing.TB, d time.Duration, subs ...string) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		s := b.String()
		ok := true
		for _, sub := range subs {
			ok = ok && strings.Contains(s, sub)
		}
		if ok {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("log lacks %q after %v:\n%s", subs, d, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
