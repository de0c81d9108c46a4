package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// dialFrom opens a TCP connection to addr from src, a loopback address
// (Linux routes all of 127/8 to lo, so 127.0.N.1 is a /24 of its own),
// closed when the test ends.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: watchdog}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitUntil polls cond until it holds, failing the test after watchdog.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(watchdog); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
	}
}

// closedByServer reports whether c was closed by the other end: a read
// ends with EOF or a reset within wait, rather than timing out.
func closedByServer(c net.Conn, wait time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(wait))
	_, err := c.Read(make([]byte, 1))
	return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// A flood of silent connections (no ClientHello) to the relay-to-relay
// listener holds a bounded number of handshakes: 8 an address, 32 a
// network, and, once more than half of the 64 slots are taken, a share of
// 4 a network; every connection beyond is closed at once and counted as
// source_limited. A relay from another network still opens its link
// while the flood holds its slots.
func TestLinkHandshakesBounded(t *testing.T) {
	p1, p2 := peers(t)
	// Long enough that no silent connection times out during the test.
	srv := serveWith(t, p2, time.Minute)
	addr := srv.Addr().String()
	stats := srv.Stats()
	held := func() int { n, _ := srv.InProgress(); return n }

	const nets, addrs, perAddr = 4, 4, 12
	var kept, turned []net.Conn
	dialed := 0
	for n := 1; n <= nets; n++ {
		for a := 1; a <= addrs; a++ {
			for range perAddr {
				before := stats.SourceLimited.Load()
				c := dialFrom(t, fmt.Sprintf("127.0.%d.%d", n, a), addr)
				dialed++
				// Each connection holds a slot or is turned away before
				// the next.
				waitUntil(t, "a silent connection held a slot or was turned away", func() bool {
					return held()+int(stats.SourceLimited.Load()) == dialed
				})
				if stats.SourceLimited.Load() > before {
					turned = append(turned, c)
				} else {
					kept = append(kept, c)
				}
			}
		}
	}
	// The first network: 8 from each of its 4 addresses, its bound of 32,
	// half the slots. Then the listener is busy: its share of 4 from each
	// other one.
	const want = 32 + (nets-1)*4
	if n := held(); n != want {
		t.Errorf("%d silent connections from %d networks hold %d handshakes, want %d", dialed, nets, n, want)
	}
	if n := stats.SourceLimited.Load(); n != int64(dialed-want) {
		t.Errorf("%d connections counted as source_limited, want %d", n, dialed-want)
	}
	if _, sources := srv.InProgress(); sources != addrs+nets-1 {
		t.Errorf("handshakes in progress from %d addresses, want %d", sources, addrs+nets-1)
	}
	for _, c := range turned {
		if !closedByServer(c, watchdog) {
			t.Fatalf("a connection turned away from %v is still open", c.LocalAddr())
		}
	}
	for _, c := range kept {
		if closedByServer(c, time.Millisecond) {
			t.Fatalf("a connection holding a handshake slot from %v was closed", c.LocalAddr())
		}
	}

	// relay-1 dials from 127.0.0.1, a network the flood does not use.
	var h holdings
	h.set("acme", store.Holding{RelayID: "relay-2", Epoch: 1, PeerAddr: addr, Agents: 1})
	l := newLinks(t, p1, &h)
	c := carrier(t, l, "acme")
	start := time.Now()
	if _, err := within(t, "a link dialed during the flood", func() (any, error) { return l.session(context.Background(), c.link, nil) }); err != nil {
		t.Fatalf("relay-1's link to relay-2 during a flood of %d silent connections: %v", dialed, err)
	}
	waitUntil(t, "relay-2 took the link", func() bool { return srv.Links() == 1 })
	t.Logf("link up in %v beside %d silent connections holding handshakes", time.Since(start).Round(time.Millisecond), held())
	if n := stats.OK.Load(); n != 1 {
		t.Errorf("%d links counted as ok, want 1", n)
	}
}

// A connection that sends nothing, or a TLS record a byte at a time, is
// closed by the listener once the handshake timeout has passed, and gives
// its slot back.
func TestLinkHandshakeTimeout(t *testing.T) {
	_, p2 := peers(t)
	const timeout = 300 * time.Millisecond
	srv := serveWith(t, p2, timeout)
	addr := srv.Addr().String()

	// The server's clock starts at its accept, which can come before
	// the dial returns here: start before dialling.
	start := time.Now()
	silent := dialFrom(t, "127.0.0.1", addr)
	trickle := dialFrom(t, "127.0.0.2", addr)
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		// A ClientHello's record header, and then its body, one byte
		// every 20 ms: it never completes within the timeout.
		hello := []byte{0x16, 0x03, 0x01, 0x02, 0x00}
		for i := 0; ; i++ {
			b := byte(0x01)
			if i < len(hello) {
				b = hello[i]
			}
			if _, err := trickle.Write([]byte{b}); err != nil {
				return
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	defer func() {
		close(stop)
		<-trickled
	}()
	for name, c := range map[string]net.Conn{"silent": silent, "trickling": trickle} {
		c.SetReadDeadline(time.Now().Add(watchdog))
		_, err := io.Copy(io.Discard, c)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a %s connection is still open after %v (handshake timeout %v)", name, watchdog, timeout)
		}
		if took := time.Since(start); took < timeout {
			t.Errorf("a %s connection was closed after %v, before the handshake timeout of %v", name, took, timeout)
		}
	}
	waitUntil(t, "both gave their slots back", func() bool { n, _ := srv.InProgress(); return n == 0 })
	if n := srv.Stats().Failed.Load(); n != 2 {
		t.Errorf("%d handshakes counted as failed, want 2", n)
	}
}

// levels counts the records of one message by level.
type levels struct {
	msg string
	mu  sync.Mutex
	n   map[slog.Level]int
}

func (l *levels) Enabled(context.Context, slog.Level) bool { return true }
func (l *levels) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *levels) WithGroup(string) slog.Handler            { return l }
func (l *levels) Handle(_ context.Context, r slog.Record) error {
	if r.Message == l.msg {
		l.mu.Lock()
		l.n[r.Level]++
		l.mu.Unlock()
	}
	return nil
}

func (l *levels) count(level slog.Level) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n[level]
}

// Failed handshakes are warned about for a source's first 10, and logged
// at debug level beyond: a flood of connections that are not TLS writes a
// handful of warnings, not one each.
func TestLinkRefusalsLogBounded(t *testing.T) {
	_, p2 := peers(t)
	logged := &levels{msg: "relay-to-relay link refused", n: map[slog.Level]int{}}
	srv := serveLogged(t, p2, watchdog, slog.New(logged))
	const n = 25
	for i := range n {
		c := dialFrom(t, "127.0.0.1", srv.Addr().String())
		if _, err := c.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		if !closedByServer(c, watchdog) {
			t.Fatalf("connection %d, not TLS, is still open", i+1)
		}
		c.Close()
	}
	waitUntil(t, "every refusal logged", func() bool { return logged.count(slog.LevelWarn)+logged.count(slog.LevelDebug) == n })
	if w, d := logged.count(slog.LevelWarn), logged.count(slog.LevelDebug); w != 10 || d != n-10 {
		t.Errorf("%d refused handshakes from one address logged %d warnings and %d debug lines, want 10 and %d", n, w, d, n-10)
	}
	if f := srv.Stats().Failed.Load(); f != n {
		t.Errorf("%d handshakes counted as failed, want %d", f, n)
	}
}
