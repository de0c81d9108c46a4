package client_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/tetherhq/tether/relay/client"
)

// TestDialContextEndsWithItsContext: a relay that takes the request and
// never answers holds DialContext only until its context ends, and the
// error says which way it ended (errors.Is with the context's error; a
// deadline is a net.Error whose Timeout is true, as net.Dialer's is).
// Without a deadline in the context, Timeout bounds the dial.
func TestDialContextEndsWithItsContext(t *testing.T) {
	silent := serveTCP(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	d := &client.Dialer{Relay: silent, Backend: "b", APIKey: "k"}
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		d    *client.Dialer
		want error
	}{
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 200*time.Millisecond)
		}, d, context.DeadlineExceeded},
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(200*time.Millisecond, cancel)
			return ctx, cancel
		}, d, context.Canceled},
		{"Dialer.Timeout", func() (context.Context, context.CancelFunc) {
			return context.WithCancel(context.Background())
		}, &client.Dialer{Relay: silent, Backend: "b", APIKey: "k", Timeout: 200 * time.Millisecond}, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.ctx()
			defer cancel()
			done := make(chan error, 1)
			go func() {
				c, err := tc.d.DialContext(ctx, "tcp", "db.acme.tether:5432")
				if c != nil {
					c.Close()
				}
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("DialContext still waiting for a silent relay 20 s after its context ended")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want errors.Is %v", err, tc.want)
			}
			var ne net.Error
			if tc.want == context.DeadlineExceeded && (!errors.As(err, &ne) || !ne.Timeout()) {
				t.Fatalf("%v: not a net.Error with Timeout() true", err)
			}
		})
	}
}

// TestConnDeadlines: a read deadline on a connection from DialContext
// (both doors) times out as net.Conn's do, and the connection works on
// once it is cleared.
func TestConnDeadlines(t *testing.T) {
	w := newWorld(t, worldOpts{})
	for name, d := range map[string]*client.Dialer{"connect": w.plain, "connect-tls": w.tls} {
		t.Run(name, func(t *testing.T) {
			c, err := d.Dial("tcp", w.target)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			var ne net.Error
			if _, err := c.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("read past its deadline: got %v, want a timeout", err)
			}
			c.SetDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.WriteString(c, "x"); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 1)
			if _, err := io.ReadFull(c, b); err != nil || string(b) != "x" {
				t.Fatalf("echo after the deadline was moved: %q, %v", b, err)
			}
		})
	}
}

// TestIdleTunnelIsReset: a tunnel on which nothing moves for the relay's
// idle timeout is reset, so that the client cannot take it for a clean
// end of the service's answer.
func TestIdleTunnelIsReset(t *testing.T) {
	w := newWorld(t, worldOpts{relayIdleTimeout: time.Second})
	start := time.Now() // before the tunnel's idle clock starts
	c, err := w.plain.Dial("tcp", w.target)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("an idle tunnel: read %v after %v, want a connection reset", err, time.Since(start))
	}
	if el := time.Since(start); el < time.Second {
		t.Fatalf("reset after %v, before the idle timeout (1 s)", el)
	}
}

// TestSlowReaderHoldsBackTheService: a client that reads nothing holds
// the service back: what the service manages to write stays bounded by
// the buffers on the way (sockets, the transport's window, the copy
// buffers), not by what it has to send.
func TestSlowReaderHoldsBackTheService(t *testing.T) {
	const limit, bound = 256 << 20, 64 << 20
	var written atomic.Int64
	w := newWorld(t, worldOpts{services: map[string]func(net.Conn){
		"flood": func(c net.Conn) {
			buf := make([]byte, 64<<10)
			for written.Load() < limit {
				n, err := c.Write(buf)
				written.Add(int64(n))
				if err != nil {
					return
				}
			}
		},
	}})
	c, err := w.plain.Dial("tcp", "flood.acme.tether:1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Wait until the service's writes stall (or it has written all).
	last := int64(-1)
	for n := written.Load(); n != last; n = written.Load() {
		last = n
		time.Sleep(500 * time.Millisecond)
	}
	if last > bound {
		t.Fatalf("the service wrote %d MiB to a client that read nothing: more than %d MiB buffered on the way", last>>20, bound>>20)
	}
	t.Logf("the service stalled after %d MiB", last>>20)
}

// TestUploadThenHalfCloseOnBothDoors: 64 MiB sent through either door,
// then CloseWrite (a TLS close_notify on the TLS door): the service
// reads every byte, in order, and an EOF, and its answer still comes
// back.
func TestUploadThenHalfCloseOnBothDoors(t *testing.T) {
	const size = 64 << 20
	w := newWorld(t, worldOpts{services: map[string]func(net.Conn){
		"sink": func(c net.Conn) { // answers the SHA-256 of all it read
			h := sha256.New()
			if _, err := io.Copy(h, c); err != nil {
				return
			}
			io.WriteString(c, hex.EncodeToString(h.Sum(nil)))
			c.(*net.TCPConn).CloseWrite()
		},
	}})
	for name, d := range map[string]*client.Dialer{"connect": w.plain, "connect-tls": w.tls} {
		t.Run(name, func(t *testing.T) {
			c, err := d.Dial("tcp", "sink.acme.tether:1")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			h := sha256.New()
			if n, err := io.Copy(io.MultiWriter(c, h), io.LimitReader(rand.NewChaCha8([32]byte{1}), size)); err != nil || n != size {
				t.Fatalf("upload: %d of %d bytes: %v", n, size, err)
			}
			if err := c.(*client.Conn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(c)
			if want := hex.EncodeToString(h.Sum(nil)); err != nil || string(got) != want {
				t.Fatalf("the service's answer: %q, %v; want the SHA-256 of what was sent, %s", got, err, want)
			}
		})
	}
}

// TestRelayStopResetsTunnelsLeft: a relay that stops lets its tunnels go
// on for its drain timeout, then resets those left, at every door: a
// client in the middle of a download reads a reset, never a clean end
// (a FIN, or a TLS close_notify) that would make the cut answer look
// whole.
func TestRelayStopResetsTunnelsLeft(t *testing.T) {
	w := newWorld(t, worldOpts{socks: true, relayDrainTimeout: 200 * time.Millisecond, services: map[string]func(net.Conn){
		"flood": func(c net.Conn) { // sends until the connection fails
			buf := make([]byte, 64<<10)
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		},
	}})
	socks, err := proxy.SOCKS5("tcp", w.socks, &proxy.Auth{User: w.plain.Backend, Password: w.plain.APIKey}, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	doors := []string{"connect", "connect-tls", "socks5"}
	conns := make([]net.Conn, len(doors))
	for i, d := range []proxy.Dialer{w.plain, w.tls, socks} {
		c, err := d.Dial("tcp", "flood.acme.tether:1")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil {
			t.Fatalf("%s: the first MiB: %v", doors[i], err)
		}
		conns[i] = c
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		w.stopRelay()
	}()
	for i, c := range conns {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		n, err := io.Copy(io.Discard, c)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s: the relay stopped mid-answer; the client read %d bytes more, then %v; want a connection reset", doors[i], n, err)
		}
	}
	<-stopped
}
