package client_test

import (
	"bufio"
	"context"
	"errors"
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
