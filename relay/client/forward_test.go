package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// serveForward runs f on a free loopback port until the test ends (or
// stop is called) and returns its address. stop cancels Serve's context
// and returns Serve's result once it has returned.
func serveForward(t testing.TB, f *client.Forward) (addr string, stop func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Serve(ctx, ln) }()
	var result error
	stopped := false
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case result = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("Serve did not return within 30s of its context ending")
			}
		}
		return result
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String(), stop
}

// echoThrough sends data through the forward at addr, half-closes, and
// checks that exactly data comes back, then EOF.
func echoThrough(t testing.TB, addr string, data []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read the echo: %v (after %d bytes)", err, len(got))
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes back, want the %d sent", len(got), len(data))
	}
}

// TestForwardEcho tunnels connections through both CONNECT doors, with and
// without spare connections: bytes arrive intact in both directions, and
// half-close passes through (the echo service answers after our EOF, and
// its EOF reaches us).
func TestForwardEcho(t *testing.T) {
	w := newWorld(t, worldOpts{})
	data := make([]byte, 3<<20)
	rand.Read(data)
	for _, door := range []string{"connect", "connect-tls"} {
		for _, spares := range []int{-1, 0} {
			name := door + "/spares-default"
			if spares < 0 {
				name = door + "/no-spares"
			}
			t.Run(name, func(t *testing.T) {
				d := w.plain
				if door == "connect-tls" {
					d = w.tls
				}
				addr, _ := serveForward(t, &client.Forward{Dialer: d, Target: w.target, Spares: spares, Logger: testLogger(t, slog.LevelDebug)})
				for range 3 {
					echoThrough(t, addr, data[:1+len(data)/3])
				}
				echoThrough(t, addr, data)
				echoThrough(t, addr, nil)
			})
		}
	}
}

// TestForwardHalfCloseFromService: a service that ends its side first
// (FIN) while still reading: the local client reads EOF with its own side
// open, and what it sends afterwards still reaches the service.
func TestForwardHalfCloseFromService(t *testing.T) {
	w := newWorld(t, worldOpts{})
	for _, door := range []string{"connect", "connect-tls"} {
		t.Run(door, func(t *testing.T) {
			d := w.plain
			if door == "connect-tls" {
				d = w.tls
			}
			addr, _ := serveForward(t, &client.Forward{Dialer: d, Target: w.greeter, Logger: testLogger(t, slog.LevelDebug)})
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			got, err := io.ReadAll(c)
			if err != nil || string(got) != "hello\n" {
				t.Fatalf("read until the service's EOF: %q, %v", got, err)
			}
			if _, err := c.Write([]byte("bye")); err != nil {
				t.Fatalf("write after the service's EOF: %v", err)
			}
			c.(*net.TCPConn).CloseWrite()
			select {
			case s := <-w.greeted:
				if s != "bye" {
					t.Fatalf("the service read %q, want %q", s, "bye")
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the service never read our EOF")
			}
		})
	}
}

// TestForwardRefusal: a target the backend has no grant for is refused by
// the relay; the forward logs the refusal with its code and request id,
// closes the local connection without sending it anything, never reaches
// the service, and goes on serving.
func TestForwardRefusal(t *testing.T) {
	w := newWorld(t, worldOpts{})
	logs, log := newLogBuffer(t)
	addr, _ := serveForward(t, &client.Forward{Dialer: w.plain, Target: w.denied, Logger: log})
	before := w.echoes.get()
	for i := range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(make([]byte, 1))
		c.Close()
		if n != 0 || err == nil || isTimeout(err) {
			t.Fatalf("connection %d: read %d bytes, %v; want the forward to close it", i, n, err)
		}
	}
	// One refusal line per connection: the forward logs each after it has
	// closed the connection, so wait for both.
	var s string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s = logs.waitFor(t, 5*time.Second, `"msg":"relay refused the connection; closed it"`, `"code":"not_allowed"`, `"request":`)
		if strings.Count(s, `"code":"not_allowed"`) == 2 || time.Now().After(deadline) {
			break
		}
	}
	if strings.Count(s, `"code":"not_allowed"`) != 2 {
		t.Fatalf("want one refusal line per connection:\n%s", s)
	}
	if got := w.echoes.get(); got != before {
		t.Fatalf("the service got %d connections, want none", got-before)
	}

	// The Dialer reports the same refusal as a *client.Refusal.
	_, err := w.plain.DialContext(context.Background(), "tcp", w.denied)
	var r *client.Refusal
	if !errors.As(err, &r) || !errors.Is(err, client.ErrNotAllowed) || r.Err.Message == "" {
		t.Fatalf("Dialer: got %v (%T), want a *client.Refusal matching ErrNotAllowed, with a message", err, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestForwardRelayUnreachable: with the relay down, a local connection
// waits RelayWait and is closed; the forward keeps listening.
func TestForwardRelayUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close() // nothing listens there now: connection refused
	logs, log := newLogBuffer(t)
	d := &client.Dialer{Relay: dead, Backend: "billing", APIKey: "tbk1_x"}
	const wait = 400 * time.Millisecond
	addr, stop := serveForward(t, &client.Forward{Dialer: d, Target: "echo.acme.tether:7", RelayWait: wait, Logger: log})
	for i := range 2 {
		// The forward's wait starts at its accept, which can come before
		// the dial returns here: the clock starts before the dial.
		start := time.Now()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d: the forward stopped listening: %v", i, err)
		}
		c.SetDeadline(start.Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
		took := time.Since(start)
		c.Close()
		if err == nil || isTimeout(err) {
			t.Fatalf("connection %d: read: %v, want the forward to close it", i, err)
		}
		if took < wait || took > wait+5*time.Second {
			t.Fatalf("connection %d closed after %v, want about RelayWait (%v)", i, took, wait)
		}
	}
	logs.waitFor(t, 5*time.Second, `"msg":"relay unreachable; closed the connection"`, "connection refused")
	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// TestForwardRelayBack: a local connection made while the relay is down
// (every connection to it reset) is served once the relay is back within
// RelayWait.
func TestForwardRelayBack(t *testing.T) {
	w := newWorld(t, worldOpts{})
	p := newTCPProxy(t, w.relay.ConnectAddr().String(), 0)
	p.down.Store(true)
	d := *w.plain
	d.Relay = p.addr()
	addr, _ := serveForward(t, &client.Forward{Dialer: &d, Target: w.target, RelayWait: 20 * time.Second, Spares: -1, Logger: testLogger(t, slog.LevelDebug)})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p.resets.wait(t, 2, 10*time.Second, "the local connection's attempts reset while the relay is down")
	p.down.Store(false)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 6)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "hello\n" {
		t.Fatalf("echo after the relay came back: %q, %v", got, err)
	}
}

// TestForwardSpares: spares are dialled before any local connection, a
// local connection's request goes out on one of them, spares are replaced
// as they age, and an unused forward ends up holding no connection to the
// relay.
func TestForwardSpares(t *testing.T) {
	w := newWorld(t, worldOpts{})
	proxied := func() (*tcpProxy, *client.Dialer) {
		p := newTCPProxy(t, w.relay.ConnectAddr().String(), 0)
		d := *w.plain
		d.Relay = p.addr()
		return p, &d
	}

	// Spares that do not age while the test looks: the request goes out
	// on one dialled before the local connection was made. (Spares
	// replaced every 300 ms, as below, had it go out on one dialled after,
	// when the local connection reached the forward 300 ms late.)
	p, d := proxied()
	addr, stop := serveForward(t, &client.Forward{Dialer: d, Target: w.target, Spares: 2,
		SpareMaxAge: time.Minute, Logger: testLogger(t, slog.LevelDebug)})
	p.accepted.wait(t, 2, 10*time.Second, "spares dialled at start")
	before := time.Now()
	echoThrough(t, addr, []byte("through a spare"))
	carrying := p.carrying()
	if len(carrying) != 1 {
		t.Fatalf("%d connections to the relay carried requests, want 1", len(carrying))
	}
	if !carrying[0].acceptedAt.Before(before) {
		t.Fatal("the request went out on a connection dialled after the local one was made, not on a spare")
	}
	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}

	// Aged spares are replaced while warm (from the start)...
	p, d = proxied()
	const keepWarm = 1500 * time.Millisecond
	addr, _ = serveForward(t, &client.Forward{Dialer: d, Target: w.target, Spares: 2,
		SpareMaxAge: 300 * time.Millisecond, KeepWarm: keepWarm, Logger: testLogger(t, slog.LevelDebug)})
	p.accepted.wait(t, 6, 10*time.Second, "spares replaced as they age")
	// ...and none is left once unused for KeepWarm.
	deadline := time.Now().Add(keepWarm + 10*time.Second)
	for p.open() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections to the relay still open %v after the last use", p.open(), keepWarm+10*time.Second)
		}
		time.Sleep(20 * time.Millisecond)
	}
	settled := p.accepted.get()
	// A new connection warms the forward up again.
	echoThrough(t, addr, []byte("again"))
	p.accepted.wait(t, settled+3, 10*time.Second, "a fresh connection and two spares after warming up again")
}

// TestForwardNoSpares: with Spares < 0 the forward holds no connection to
// the relay until it is used.
func TestForwardNoSpares(t *testing.T) {
	w := newWorld(t, worldOpts{})
	p := newTCPProxy(t, w.relay.ConnectAddr().String(), 0)
	d := *w.plain
	d.Relay = p.addr()
	addr, _ := serveForward(t, &client.Forward{Dialer: &d, Target: w.target, Spares: -1, Logger: testLogger(t, slog.LevelDebug)})
	before := time.Now()
	echoThrough(t, addr, []byte("no spare"))
	carrying := p.carrying()
	if len(carrying) != 1 || carrying[0].acceptedAt.Before(before) || p.accepted.get() != 1 {
		t.Fatalf("want exactly one connection to the relay, dialled for the local one; got %d accepted", p.accepted.get())
	}
}

// TestForwardSpareClosedByRelay: a relay that closes idle connections
// sooner than SpareMaxAge (its handshake timeout) leaves dead spares; a
// local connection that draws one is still served, on a fresh connection.
func TestForwardSpareClosedByRelay(t *testing.T) {
	w := newWorld(t, worldOpts{relayHandshakeTimeout: 300 * time.Millisecond})
	p := newTCPProxy(t, w.relay.ConnectAddr().String(), 0)
	d := *w.plain
	d.Relay = p.addr()
	addr, _ := serveForward(t, &client.Forward{Dialer: &d, Target: w.target, Spares: 2,
		SpareMaxAge: time.Minute, Logger: testLogger(t, slog.LevelDebug)})
	p.accepted.wait(t, 2, 10*time.Second, "spares dialled at start")
	p.relayEnd.wait(t, 2, 10*time.Second, "spares closed by the relay")
	echoThrough(t, addr, []byte("after the relay closed the spares"))
}

// TestForwardDrain: when Serve's context ends, the listener closes at
// once; a tunnel in progress goes on until it ends by itself within
// Drain, or is closed when Drain runs out.
func TestForwardDrain(t *testing.T) {
	w := newWorld(t, worldOpts{})

	t.Run("finishes within drain", func(t *testing.T) {
		addr, stop := serveForward(t, &client.Forward{Dialer: w.plain, Target: w.target, Drain: time.Minute, Logger: testLogger(t, slog.LevelDebug)})
		c := mustEcho(t, addr)
		defer c.Close()
		stopped := make(chan error, 1)
		go func() { stopped <- stop() }()
		waitRefused(t, addr)
		// The tunnel still works during the drain.
		if _, err := c.Write([]byte("still here\n")); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "still here\n" {
			t.Fatalf("echo during the drain: %q, %v", got, err)
		}
		select {
		case err := <-stopped:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return when its last tunnel ended")
		}
	})

	t.Run("closed when drain runs out", func(t *testing.T) {
		const drain = 300 * time.Millisecond
		logs, log := newLogBuffer(t)
		addr, stop := serveForward(t, &client.Forward{Dialer: w.plain, Target: w.target, Drain: drain, Logger: log})
		c := mustEcho(t, addr)
		defer c.Close()
		start := time.Now()
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took < drain || took > drain+10*time.Second {
			t.Fatalf("Serve returned after %v, want just after the drain (%v)", took, drain)
		}
		// The goroutine serving the connection has ended: it logs last.
		if !strings.Contains(logs.String(), `"msg":"connection closed"`) {
			t.Fatalf("Serve returned before the connection's goroutine ended:\n%s", logs.String())
		}
		// Reset, not closed: a clean end would pass for the end of the
		// service's answer.
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read after the drain: %d, %v; want the connection reset", n, err)
		}
	})
}

// mustEcho opens a connection through the forward and checks one round
// trip on it, leaving it open.
func mustEcho(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping\n" {
		t.Fatalf("echo: %q, %v", got, err)
	}
	return c
}

// waitRefused waits until nothing accepts connections at addr.
func waitRefused(t *testing.T, addr string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the listener still accepts after Serve's context ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestForwardConfig: an incomplete Forward or Dialer fails Serve and Run
// at once, without serving.
func TestForwardConfig(t *testing.T) {
	good := &client.Dialer{Relay: "127.0.0.1:1", Backend: "b", APIKey: "k"}
	for _, tc := range []struct {
		name string
		f    client.Forward
		want string
	}{
		{"no dialer", client.Forward{Target: "db.acme.tether:5432"}, "needs a Dialer"},
		{"no credential", client.Forward{Dialer: &client.Dialer{Relay: "127.0.0.1:1"}, Target: "db.acme.tether:5432"}, "needs a credential"},
		{"API key without backend", client.Forward{Dialer: &client.Dialer{Relay: "127.0.0.1:1", APIKey: "k"}, Target: "db.acme.tether:5432"}, "no Backend"},
		{"no target", client.Forward{Dialer: good}, "target"},
		{"not a tether name", client.Forward{Dialer: good, Target: "db.example.com:5432"}, "target"},
		{"no tenant", client.Forward{Dialer: good, Target: "db.tether:5432"}, "target"},
		{"bad listen", client.Forward{Dialer: good, Target: "db.acme.tether:5432", Listen: "localhost:http"}, "listen address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := tc.f.Run(ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run: got %v, want an error about %q", err, tc.want)
			}
		})
	}
}

func TestListenAddr(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"5432", "127.0.0.1:5432", ""},
		{":5432", "127.0.0.1:5432", ""},
		{"0", "127.0.0.1:0", ""},
		{"0.0.0.0:5432", "0.0.0.0:5432", ""},
		{"localhost:15432", "localhost:15432", ""},
		{"[::1]:5432", "[::1]:5432", ""},
		{"", "", "port"},
		{"65536", "", "port"},
		{"-1", "", "port"},
		{"db:postgres", "", "port"},
		{"::1", "", "want PORT"},
	} {
		got, err := client.ListenAddr(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ListenAddr(%q) = %q, %v; want an error about %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ListenAddr(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
