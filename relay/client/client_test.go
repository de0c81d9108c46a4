package client_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// answerCONNECT serves one CONNECT request on loopback with the raw bytes
// answer, as a relay, a misbehaving relay or something else answering at
// the relay's address might, and returns the address.
func answerCONNECT(t *testing.T, answer string) string {
	t.Helper()
	return serveTCP(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, answer)
	})
}

// TestDialerAnswers: what the relay answers a CONNECT with is hostile
// input; refusals become a *client.Refusal with the code, the message and
// the request id, anything else a plain error, never a panic.
func TestDialerAnswers(t *testing.T) {
	for _, tc := range []struct {
		name      string
		answer    string
		want      error // errors.Is target; nil: not a refusal
		requestID string
		message   string
	}{
		{"refusal with request id", "HTTP/1.1 403 Forbidden\r\nTether-Error: not_allowed\r\nTether-Request-Id: r-123\r\nContent-Length: 26\r\n\r\nnot_allowed: no grant here", client.ErrNotAllowed, "r-123", "no grant here"},
		{"refusal without request id", "HTTP/1.1 503 Service Unavailable\r\nTether-Error: no_agent\r\nConnection: close\r\n\r\nno_agent: tenant \"acme\" has no agent connected\n", client.ErrNoAgent, "", `tenant "acme" has no agent connected`},
		{"rate limited", "HTTP/1.1 429 Too Many Requests\r\nTether-Error: rate_limited\r\nTether-Request-Id: r-9\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n", client.ErrRateLimited, "r-9", ""},
		{"hostile Retry-After", "HTTP/1.1 429 Too Many Requests\r\nTether-Error: rate_limited\r\nRetry-After: 99999999999999999999\r\nContent-Length: 0\r\n\r\n", client.ErrRateLimited, "", ""},
		{"status only", "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n", client.ErrUnauthenticated, "", "407 Proxy Authentication Required"},
		{"unknown code", "HTTP/1.1 502 Bad Gateway\r\nTether-Error: no_such_code\r\nContent-Length: 0\r\n\r\n", client.ErrTargetUnreachable, "", "502 Bad Gateway"},
		{"huge body", "HTTP/1.1 504 Gateway Timeout\r\nTether-Error: timeout\r\nConnection: close\r\n\r\ntimeout: " + strings.Repeat("x", 1<<20), client.ErrTimeout, "", ""},
		{"not HTTP", "SSH-2.0-OpenSSH_9.6\r\n", nil, "", ""},
		{"nothing", "", nil, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &client.Dialer{Relay: answerCONNECT(t, tc.answer), Backend: "b", APIKey: "k", Timeout: 10 * time.Second}
			c, err := d.DialContext(context.Background(), "tcp", "db.acme.tether:5432")
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			var r *client.Refusal
			// Only a relay that closed the connection without a word
			// is unreachable; an answer, whatever it says, is not.
			if got, want := errors.Is(err, client.ErrRelayUnreachable), tc.answer == ""; got != want {
				t.Errorf("%v: errors.Is(err, client.ErrRelayUnreachable) = %v, want %v", err, got, want)
			}
			if tc.want == nil {
				if errors.As(err, &r) {
					t.Fatalf("got refusal %v, want another error", err)
				}
				return
			}
			if !errors.As(err, &r) || !errors.Is(err, tc.want) {
				t.Fatalf("got %v (%T), want a *client.Refusal matching %v", err, err, tc.want)
			}
			if r.RequestID != tc.requestID {
				t.Errorf("request id %q, want %q", r.RequestID, tc.requestID)
			}
			if want := map[string]time.Duration{"rate limited": 7 * time.Second}[tc.name]; r.RetryAfter != want {
				t.Errorf("RetryAfter %v, want %v (the relay's Retry-After)", r.RetryAfter, want)
			}
			if tc.message != "" && r.Err.Message != tc.message {
				t.Errorf("message %q, want %q", r.Err.Message, tc.message)
			}
			if len(r.Err.Message) > 64<<10 {
				t.Errorf("message of %d bytes: the body is not bounded", len(r.Err.Message))
			}
			if tc.requestID != "" && !strings.Contains(err.Error(), tc.requestID) {
				t.Errorf("%q does not name the request id", err.Error())
			}
		})
	}
}

// closedAddr returns a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestDialerRelaysFallOver: a Dialer given several relays reaches the
// one that answers whatever the others do at the connection level:
// nothing listening, or a door that closes the connection without
// answering (a relay shutting down).
func TestDialerRelaysFallOver(t *testing.T) {
	w := newWorld(t, worldOpts{})
	var hungUp counter
	closing := serveTCP(t, func(c net.Conn) {
		hungUp.add()
		http.ReadRequest(bufio.NewReader(c)) // and close without a word
	})
	d := *w.plain
	d.Relay, d.Relays = "", []string{closedAddr(t), closing, w.plain.Relay}
	for i := range 12 {
		c, err := d.DialContext(context.Background(), "tcp", w.target)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		msg := fmt.Sprintf("dial %d\n", i)
		io.WriteString(c, msg)
		c.(*client.Conn).CloseWrite()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != msg {
			t.Fatalf("dial %d: echo %q, %v; want %q", i, got, err, msg)
		}
	}
	if hungUp.get() == 0 {
		t.Error("no dial went to the door that hangs up first: dials do not start at a random relay")
	}
}

// TestDialerRelaysAnswerStands: an answer — a refusal, unavailable
// included, or a reply that is not HTTP — is never retried on another
// relay: each dial reaches exactly one.
func TestDialerRelaysAnswerStands(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer string
		want   error
	}{
		{"unavailable", "HTTP/1.1 503 Service Unavailable\r\nTether-Error: unavailable\r\nContent-Length: 0\r\n\r\n", client.ErrUnavailable},
		{"no agent", "HTTP/1.1 503 Service Unavailable\r\nTether-Error: no_agent\r\nContent-Length: 0\r\n\r\n", client.ErrNoAgent},
		{"not HTTP", "SSH-2.0-OpenSSH_9.6\r\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var asked counter
			door := func() string {
				return serveTCP(t, func(c net.Conn) {
					c.SetDeadline(time.Now().Add(10 * time.Second))
					if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
						return
					}
					asked.add()
					io.WriteString(c, tc.answer)
				})
			}
			d := &client.Dialer{Relays: []string{door(), door(), door()}, Backend: "b", APIKey: "k", Timeout: 10 * time.Second}
			const dials = 10
			for range dials {
				c, err := d.DialContext(context.Background(), "tcp", "db.acme.tether:5432")
				if err == nil {
					c.Close()
					t.Fatal("dial succeeded")
				}
				var r *client.Refusal
				if tc.want != nil && !errors.Is(err, tc.want) {
					t.Fatalf("got %v, want %v", err, tc.want)
				}
				if tc.want == nil && errors.As(err, &r) {
					t.Fatalf("got refusal %v, want another error", err)
				}
			}
			if got := asked.get(); got != dials {
				t.Errorf("%d relays asked for %d dials: an answer was retried elsewhere", got, dials)
			}
		})
	}
}

// TestDialerRelaysNoneReachable: when no relay can be reached the error
// says so and keeps each relay's.
func TestDialerRelaysNoneReachable(t *testing.T) {
	a, b := closedAddr(t), closedAddr(t)
	d := &client.Dialer{Relays: []string{a, b}, Backend: "b", APIKey: "k", Timeout: 10 * time.Second}
	_, err := d.DialContext(context.Background(), "tcp", "db.acme.tether:5432")
	if err == nil {
		t.Fatal("dial succeeded")
	}
	var oe *net.OpError
	if !errors.As(err, &oe) {
		t.Errorf("%v: not a *net.OpError underneath", err)
	}
	if !errors.Is(err, client.ErrRelayUnreachable) {
		t.Errorf("%v: does not match client.ErrRelayUnreachable", err)
	}
	for _, want := range []string{"none of the 2 relays", a, b} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}
}

// TestDialerConfig: a Dialer without a relay, with both Relay and
// Relays, or with an empty address is refused before any dial.
func TestDialerConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		d    client.Dialer
		want string
	}{
		{"no relay", client.Dialer{Backend: "b", APIKey: "k"}, "needs Relay"},
		{"both", client.Dialer{Relay: "127.0.0.1:1", Relays: []string{"127.0.0.1:2"}, Backend: "b", APIKey: "k"}, "both Relay and Relays"},
		{"empty address", client.Dialer{Relays: []string{"127.0.0.1:1", ""}, Backend: "b", APIKey: "k"}, "empty address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.d.DialContext(context.Background(), "tcp", "db.acme.tether:5432")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
}
