package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	quicgo "github.com/quic-go/quic-go"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport/quic"
)

// logTee is a log writer that keeps what it is given and passes it to
// t.Log.
type logTee struct {
	t   *testing.T
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (w *logTee) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	w.mu.Unlock()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func (w *logTee) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// runLoggedAgent runs an agent enrolled with ca's root, with one
// connection over QUIC to relay, logging to t.Log and to the returned
// tee; Run's result comes on the returned channel. It stops when the
// test ends.
func runLoggedAgent(t *testing.T, ca *testCA, relay string) (*Agent, *logTee, <-chan error) {
	t.Helper()
	tee := &logTee{t: t}
	cfg := Config{Relays: []string{relay}, Transport: TransportQUIC, RelayConnections: 1, NoFileWatch: true,
		Reconnect: Backoff{Initial: 100 * time.Millisecond, Max: time.Second},
		Logger:    slog.New(slog.NewTextHandler(tee, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	a := enrolledWith(t, cfg, ca.root, ca.root)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		done <- a.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-ran
	})
	return a, tee, done
}

// lastError is the last error of a's only slot.
func lastError(a *Agent) string {
	if ss := a.Status().Sessions; len(ss) == 1 {
		return ss[0].LastError
	}
	return ""
}

// A relay that ends an agent's QUIC session closes the connection with
// quic.CodeRefused and the refusal as its reason: the agent reports that
// session's end as it reports a Reject on the control stream, whether the
// Reject got through too (once, not twice) or not. A reason that is no
// refusal (an older or hostile relay's) is an ordinary close, its text
// never shown raw. The agent learns why from the session that ended: the
// relay saw one hello when the agent reported it.
func TestRelayCloseReasonEndsSession(t *testing.T) {
	revoked := protocol.Errorf(protocol.CodeRevoked, "agent a1 was revoked at 2026-12-07T19:30:00Z (laptop stolen)")
	for _, c := range []struct {
		name   string
		reject bool // a Reject on the control stream before the close
		code   quicgo.ApplicationErrorCode
		reason string
		want   string // the slot's last error
	}{
		{"refusal in the close", false, quic.CodeRefused, protocol.CloseReason(revoked), "relay closed the session: " + revoked.Error()},
		{"reject and close", true, quic.CodeRefused, protocol.CloseReason(revoked), "relay closed the session: " + revoked.Error()},
		{"hostile reason", false, quic.CodeRefused, "revoked:\x1b[2J\nlevel=ERROR msg=forged \xff", ""},
		{"no reason", false, quic.CodeNoError, "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			ca := newTestCA(t)
			r := newTestRelay(t, ca, "r1", "127.0.0.1", false)
			a, tee, _ := runLoggedAgent(t, ca, r.addr)
			waitFor(t, 10*time.Second, "the agent connected", func() error {
				if len(r.open()) != 1 {
					return errors.New("no session open at the relay")
				}
				return nil
			})
			rc := onlyOpen(t, r)
			if c.reject {
				if err := rc.send(protocol.RejectFor(revoked)); err != nil {
					t.Fatal(err)
				}
			}
			rc.ts.(*quic.Session).CloseWithError(c.code, c.reason)
			// The agent reconnects, and this relay welcomes it: a
			// refusal in the slot's last error can only come from the
			// session that ended.
			waitFor(t, 10*time.Second, "the agent connected again", func() error {
				if len(r.open()) != 1 || r.hellosVia(r.addr) != 2 {
					return fmt.Errorf("%d sessions open, %d hellos", len(r.open()), r.hellosVia(r.addr))
				}
				return nil
			})
			got := lastError(a)
			switch {
			case c.want != "":
				if got != c.want {
					t.Fatalf("the slot's last error is %q, want %q", got, c.want)
				}
			case got == "":
				t.Fatal("the slot has no last error")
			case strings.Contains(got, "relay closed the session"):
				t.Fatalf("the slot's last error %q reads an ordinary close as a refusal", got)
			case strings.ContainsAny(got, "\x1b\n") || !utf8.ValidString(got) || strings.Contains(tee.String(), "\x1b"):
				t.Fatalf("the relay's raw close reason reached the status or the log: %q", got)
			}
			t.Logf("the slot's last error: %q", got)
			if n := strings.Count(tee.String(), `msg="connection to relay lost; reconnecting"`); n != 1 {
				t.Errorf("the agent reported %d lost sessions, want 1", n)
			}
		})
	}
}

// A relay that refuses a hello and closes the QUIC connection with the
// refusal as its reason, the Reject before it lost, refuses the agent as
// a Reject does: revoked is final, and Run stops with a *RefusedError.
func TestRelayCloseReasonRefusesHello(t *testing.T) {
	ca := newTestCA(t)
	r := newTestRelay(t, ca, "r1", "127.0.0.1", false)
	r.refuseHello = protocol.CloseReason(protocol.Errorf(protocol.CodeRevoked, "agent a1 was revoked (laptop stolen)"))
	_, tee, done := runLoggedAgent(t, ca, r.addr)
	var err error
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the agent is still running 20 s after its refusal")
	}
	re, ok := errors.AsType[*RefusedError](err)
	if !ok || !errors.Is(err, protocol.ErrRevoked) || !strings.Contains(err.Error(), "laptop stolen") {
		t.Fatalf("Run = %v, want a *RefusedError for revoked", err)
	}
	if re.ExitCode() != ExitRefused {
		t.Errorf("exit code %d, want %d", re.ExitCode(), ExitRefused)
	}
	if n := strings.Count(tee.String(), `msg="the relay refused this agent for good: stopping"`); n != 1 {
		t.Errorf("the agent logged its refusal %d times, want once", n)
	}
}
