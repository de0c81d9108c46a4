package relay

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// syncBuffer is a bytes.Buffer safe for a logger and a test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAcceptSurvivesDescriptorShortage: the process out of file
// descriptors for a moment (EMFILE at accept, which any flood of
// connections can cause) makes the agent listener and the SOCKS5 door
// wait and accept again, not end: before, either error shut the whole
// relay down.
func TestAcceptSurvivesDescriptorShortage(t *testing.T) {
	for _, door := range []string{"agent", "socks5"} {
		t.Run(door, func(t *testing.T) {
			var logs syncBuffer
			r := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: "127.0.0.1:0", ConnectListen: Off,
				DisableQUIC: true, DrainTimeout: time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
			addr := r.AgentAddr().String()
			if door == "socks5" {
				addr = r.SOCKSAddr().String()
			}

			// Use up every descriptor but one under a lowered limit: the
			// client's socket takes that one, and the relay's accept of
			// it fails with EMFILE.
			var saved syscall.Rlimit
			if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &saved); err != nil {
				t.Fatal(err)
			}
			open, err := os.ReadDir("/proc/self/fd")
			if err != nil {
				t.Skipf("no /proc/self/fd: %v", err)
			}
			lowered := saved
			lowered.Cur = uint64(len(open) + 32)
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lowered); err != nil {
				t.Fatal(err)
			}
			var held []*os.File
			release := func() {
				for _, f := range held {
					f.Close()
				}
				held = nil
				syscall.Setrlimit(syscall.RLIMIT_NOFILE, &saved)
			}
			defer release()
			for {
				f, err := os.Open(os.DevNull)
				if errors.Is(err, syscall.EMFILE) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				held = append(held, f)
			}
			// Free one for the client's socket. The relay's own work may
			// take it first (a file opened in the background): then free
			// another, until the client's socket is made.
			var c net.Conn
			for {
				if len(held) == 0 {
					t.Fatal("no descriptor left to free for the client's socket")
				}
				held[len(held)-1].Close()
				held = held[:len(held)-1]
				c, err = net.Dial("tcp", addr)
				if err == nil {
					break
				}
				if !errors.Is(err, syscall.EMFILE) {
					t.Fatal(err)
				}
			}
			defer c.Close()
			for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), "accept failed; accepting again shortly"); time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the listener's accept did not fail for want of descriptors:\n%s", logs.String())
				}
			}
			release() // the shortage was momentary

			// The waiting connection is served, and so is a new one.
			c2, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			for _, conn := range []net.Conn{c, c2} {
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				if door == "socks5" {
					if _, err := conn.Write([]byte{5, 1, 0}); err != nil {
						t.Fatal(err)
					}
					reply := make([]byte, 2)
					if _, err := io.ReadFull(conn, reply); err != nil || reply[0] != 5 {
						t.Fatalf("SOCKS5 greeting after the shortage: %v %v", reply, err)
					}
					continue
				}
				// A handshake without a client certificate: refused by
				// the relay (it served the connection), not timed out.
				err := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{protocol.ALPN}}).Handshake()
				if err == nil {
					_, err = conn.Read(make([]byte, 1))
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("agent TLS handshake after the shortage: %v; want the relay to answer", err)
				}
			}
			if !r.serving.Load() || strings.Contains(logs.String(), "listener failed") {
				t.Fatalf("the relay stopped serving after a momentary EMFILE at accept:\n%s", logs.String())
			}
		})
	}
}

// TestFailedHandshakeWarningsBounded: a source whose TLS handshakes at the
// agent port keep failing (a scanner, a flood, a misconfigured client) is
// warned about for its first 10, then once every 5 s: not a line per
// connection.
func TestFailedHandshakeWarningsBounded(t *testing.T) {
	var logs syncBuffer
	r := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off,
		DisableQUIC: true, DrainTimeout: time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	const attempts = 50
	for range attempts {
		c, err := net.Dial("tcp", r.AgentAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		// A handshake that is not TLS at all fails at once.
		c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		c.Read(make([]byte, 1))
		c.Close()
	}
	for deadline := time.Now().Add(10 * time.Second); r.sessions.Stats().Failed.Load() < attempts; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d handshakes counted as failed", r.sessions.Stats().Failed.Load(), attempts)
		}
	}
	if n := strings.Count(logs.String(), "agent TLS handshake failed"); n < 1 || n > 11 {
		t.Fatalf("%d warnings for %d failed handshakes from one address; want the first 10 (and at most one more)", n, attempts)
	}
}
