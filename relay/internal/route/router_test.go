package route_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/route"
)

// fakeCarrier answers OpenStream with err, or a stream when err is nil,
// and keeps what each open was sent.
type fakeCarrier struct {
	name string
	err  error
	load int64 // streams it counts besides those opened here

	mu    sync.Mutex
	opens [][]byte // early of each OpenStream
}

type pipeStream struct{ net.Conn }

func (pipeStream) CloseWrite() error { return nil }

func (c *fakeCarrier) OpenStream(_ context.Context, hdr protocol.StreamHeader, early route.Early, _ func() bool) (transport.Stream, error) {
	var sent bytes.Buffer
	if err := early.Attach(&sent, []byte(hdr.RequestID+":")); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.opens = append(c.opens, sent.Bytes())
	c.mu.Unlock()
	if c.err != nil {
		return nil, c.err
	}
	a, b := net.Pipe()
	b.Close()
	return pipeStream{a}, nil
}

func (c *fakeCarrier) sent() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.opens
}

func (c *fakeCarrier) StreamDone()           {}
func (c *fakeCarrier) Usable(time.Time) bool { return true }
func (c *fakeCarrier) Load() int64           { return c.load + int64(len(c.sent())) }
func (c *fakeCarrier) Stalled() bool         { return false }
func (c *fakeCarrier) Agent() string         { return c.name }
func (c *fakeCarrier) Tenant() string        { return "acme" }

// fixedEarly is first bytes that have all arrived.
type fixedEarly []byte

func (e fixedEarly) Attach(st io.Writer, opening []byte) error {
	_, err := st.Write(append(opening, e...))
	return err
}

func (e fixedEarly) Sent() bool { return len(e) > 0 }

func newRouter(t *testing.T, carriers ...route.Carrier) *route.Router {
	t.Helper()
	tab := route.NewTable()
	for _, c := range carriers {
		tab.Add(c)
	}
	return route.NewRouter(route.Config{Table: tab, StreamOpenTimeout: 5 * time.Second,
		Dir: &datadir.Dir{Path: t.TempDir()}, Logger: slog.New(slog.DiscardHandler), Now: time.Now})
}

// TestDialSendsEarlyOnEveryAttempt: the client's first bytes are attached
// to each attempt to open the stream, after its opening; an attempt that
// failed after some of them went with it is not followed by another (the
// service may have them), one that failed before is; a refusal is not
// retried.
func TestDialSendsEarlyOnEveryAttempt(t *testing.T) {
	// Nothing gathered yet: an attempt that fails is followed by another,
	// which carries the opening (and whatever has arrived by then).
	broken := &fakeCarrier{name: "broken", err: errors.New("connection lost")}
	good := &fakeCarrier{name: "good", load: 1} // tried second
	r := newRouter(t, broken, good)
	tun, err := r.Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r0"}, fixedEarly(nil))
	if err != nil {
		t.Fatal(err)
	}
	tun.Stream.Close()
	if tun.Agent != "good" {
		t.Fatalf("stream opened on %q, want good", tun.Agent)
	}
	for _, c := range []*fakeCarrier{broken, good} {
		if got := c.sent(); len(got) != 1 || string(got[0]) != "r0:" {
			t.Errorf("carrier %s was sent %q, want one open with %q", c.name, got, "r0:")
		}
	}

	// The client's bytes went with the failed attempt: the agent may have
	// passed them on, so no other connection is tried (a request must not
	// run twice), and the error says why.
	early := fixedEarly("POST /pay HTTP/1.1\r\nHost: svc\r\nContent-Length: 0\r\n\r\n")
	broken = &fakeCarrier{name: "broken", err: errors.New("connection lost")}
	good = &fakeCarrier{name: "good", load: 1}
	r = newRouter(t, broken, good)
	_, err = r.Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r1"}, early)
	if protocol.CodeOf(err) != protocol.CodeNoAgent || !strings.Contains(err.Error(), "not tried on another connection") {
		t.Fatalf("Dial after a failure with the first bytes sent: %v, want no_agent saying it was not retried", err)
	}
	if got, want := broken.sent(), "r1:"+string(early); len(got) != 1 || string(got[0]) != want {
		t.Errorf("carrier broken was sent %q, want one open with %q", got, want)
	}
	if got := good.sent(); len(got) != 0 {
		t.Errorf("carrier good was sent %q after the first bytes went with a failed attempt, want nothing", got)
	}

	refusing := &fakeCarrier{name: "refusing", err: protocol.Errorf(protocol.CodeNotAllowed, "no")}
	other := &fakeCarrier{name: "other", load: 1}
	r = newRouter(t, refusing, other)
	_, err = r.Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r2"}, early)
	if protocol.CodeOf(err) != protocol.CodeNotAllowed {
		t.Fatalf("Dial after a refusal: %v, want not_allowed", err)
	}
	if n := len(refusing.sent()) + len(other.sent()); n != 1 {
		t.Fatalf("a refusal was followed by %d more opens, want none", n-1)
	}
}
