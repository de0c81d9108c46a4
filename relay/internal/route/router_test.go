package route_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

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

// relayCarrier is a fakeCarrier to another relay.
type relayCarrier struct{ *fakeCarrier }

func (c relayCarrier) Relay() string { return c.name }

// shiftingCluster is the cluster as a dial sees it while an agent moves:
// its reads of where the tenant's agents are answer before until the
// moveAt-th, after from then on; onRead, when set, runs at each read.
type shiftingCluster struct {
	before, after []route.Carrier
	moveAt        int
	onRead        func(n int)

	mu    sync.Mutex
	reads int
}

func (c *shiftingCluster) Carriers(_ context.Context, _ string, _ bool) ([]route.Carrier, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads++
	if c.onRead != nil {
		c.onRead(c.reads)
	}
	if c.moveAt > 0 && c.reads >= c.moveAt {
		return c.after, nil
	}
	return c.before, nil
}

func (c *shiftingCluster) read() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads
}

func newClusterRouter(t *testing.T, tab *route.Table, elsewhere route.Elsewhere) *route.Router {
	t.Helper()
	return route.NewRouter(route.Config{Table: tab, StreamOpenTimeout: 5 * time.Second, Elsewhere: elsewhere,
		Dir: &datadir.Dir{Path: t.TempDir()}, Logger: slog.New(slog.DiscardHandler), Now: time.Now})
}

// TestDialWaitsForMovingAgent: a dial that finds the tenant's agents only
// where they are leaving (the one relay said to hold them answers that it
// has none able to take the stream: they drain while they move) waits for
// the cluster to say where they went, rather than failing in the moment
// between an agent's new connection and the cluster learning of it.
func TestDialWaitsForMovingAgent(t *testing.T) {
	leaving := relayCarrier{&fakeCarrier{name: "relay-1", err: errors.New("relay relay-1: no_agent: none is healthy")}}
	moved := relayCarrier{&fakeCarrier{name: "relay-3"}}
	// The first two reads (the remembered one, then the fresh one after
	// relay-1 failed) do not know of relay-3 yet.
	cl := &shiftingCluster{before: []route.Carrier{leaving}, after: []route.Carrier{leaving, moved}, moveAt: 3}
	r := newClusterRouter(t, route.NewTable(), cl)
	tun, err := r.Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r0"}, fixedEarly(nil))
	if err != nil {
		t.Fatalf("Dial while the agent moved from relay-1 to relay-3: %v", err)
	}
	tun.Stream.Close()
	if tun.Relay != "relay-3" {
		t.Fatalf("stream opened via %q, want relay-3", tun.Relay)
	}
	if n := len(leaving.sent()); n != 1 {
		t.Errorf("relay-1 was tried %d times, want once", n)
	}

	// An agent whose connection here drains: the dial takes the agent's
	// next connection here (it arrives while the dial looks elsewhere).
	tab := route.NewTable()
	draining := &unusableCarrier{fakeCarrier: &fakeCarrier{name: "draining"}}
	tab.Add(draining)
	next := &fakeCarrier{name: "next"}
	cl = &shiftingCluster{onRead: func(n int) {
		if n == 2 {
			tab.Add(next)
		}
	}}
	r = newClusterRouter(t, tab, cl)
	tun, err = r.Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r1"}, fixedEarly(nil))
	if err != nil {
		t.Fatalf("Dial while the agent's connection here drained: %v", err)
	}
	tun.Stream.Close()
	if tun.Agent != "next" {
		t.Fatalf("stream opened on %q, want next", tun.Agent)
	}
	if n := len(draining.sent()); n != 0 {
		t.Errorf("the draining connection was sent %d opens, want none", n)
	}

	// A tenant with no agent anywhere, one whose only agent here stopped
	// answering, and one whose only agent, at another relay, stopped
	// answering there, fail at once: the cluster is asked twice
	// (remembered, fresh) and no more.
	stalled := route.NewTable()
	stalled.Add(&unusableCarrier{fakeCarrier: &fakeCarrier{name: "stalled"}, stalled: true})
	stalledThere := relayCarrier{&fakeCarrier{name: "relay-2", err: stalledPeerError{}}}
	for _, c := range []struct {
		name, want string
		tab        *route.Table
		there      []route.Carrier
	}{
		{"a tenant without agents", "has no agent connected", route.NewTable(), nil},
		{"the only agent stalled", "none is healthy", stalled, nil},
		{"the only agent stalled at another relay", "relay-2: timeout", route.NewTable(), []route.Carrier{stalledThere}},
	} {
		cl = &shiftingCluster{before: c.there, after: c.there}
		r = newClusterRouter(t, c.tab, cl)
		_, err = r.Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r2"}, fixedEarly(nil))
		if protocol.CodeOf(err) != protocol.CodeNoAgent || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("Dial with %s: %v, want no_agent saying %q", c.name, err, c.want)
		}
		if n := cl.read(); n != 2 {
			t.Errorf("a dial with %s asked the cluster %d times, want 2 (no waiting)", c.name, n)
		}
	}

	// DialLocal (a stream another relay forwarded) does not wait: the relay
	// that forwarded it does.
	tab = route.NewTable()
	tab.Add(&unusableCarrier{fakeCarrier: &fakeCarrier{name: "draining"}})
	r = newClusterRouter(t, tab, nil)
	_, err = r.DialLocal(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r3"})
	if protocol.CodeOf(err) != protocol.CodeNoAgent || !strings.Contains(err.Error(), "none is healthy") {
		t.Fatalf("DialLocal with the only agent draining: %v, want no_agent saying none is healthy", err)
	}
	// DialLocal's refusal when the only agent here stopped answering is a
	// timeout, which tells the relay that forwarded the stream not to wait
	// for the agent to move (that relay's carrier marks it ErrStalled).
	r = newClusterRouter(t, stalled, nil)
	_, err = r.DialLocal(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r4"})
	if protocol.CodeOf(err) != protocol.CodeTimeout || !strings.Contains(err.Error(), "stopped answering") {
		t.Fatalf("DialLocal with the only agent stalled: %v, want a timeout saying the agents stopped answering", err)
	}
	// Dial on the same relay keeps no_agent for it.
	_, err = r.Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r5"}, nil)
	if protocol.CodeOf(err) != protocol.CodeNoAgent {
		t.Fatalf("Dial with the only agent stalled: %v, want no_agent", err)
	}
}

// stalledPeerError is a peer relay's refusal because its agents of the
// tenant stopped answering, as the peer carrier reports it.
type stalledPeerError struct{}

func (stalledPeerError) Error() string {
	return "relay relay-2: timeout: tenant \"acme\"'s agents stopped answering"
}
func (stalledPeerError) Is(target error) bool { return target == route.ErrStalled }

// unusableCarrier is a connection that takes no new streams: draining,
// or (stalled) one whose agent stopped answering.
type unusableCarrier struct {
	*fakeCarrier
	stalled bool
}

func (unusableCarrier) Usable(time.Time) bool { return false }
func (c unusableCarrier) Draining() bool      { return !c.stalled }
func (c unusableCarrier) Stalled() bool       { return c.stalled }

// unreachableError is a link to another relay that could not be opened,
// or answered nothing in time, as the peer carrier reports it.
type unreachableError struct{}

func (unreachableError) Error() string {
	return "relay relay-2: the link answered nothing to the stream's opening within 3s"
}
func (unreachableError) Is(target error) bool { return target == route.ErrUnreachable }

// doubtedCarrier is a carrier to another relay in doubt (route.Suspecter).
type doubtedCarrier struct{ relayCarrier }

func (doubtedCarrier) Suspect() bool { return true }

// pausedCarrier is a carrier to another relay whose link is passed over
// after failed dials.
type pausedCarrier struct{ relayCarrier }

func (pausedCarrier) Usable(time.Time) bool { return false }

// TestDialAroundUnreachableRelay: of the relays holding a tenant's
// agents, a dial tries those in doubt last, whatever the cluster's order
// (it puts the holder of most agents first); a relay that cannot be
// reached is not waited for as if its agents were moving (they are not:
// it still heartbeats), and a relay passed over is named in the answer.
func TestDialAroundUnreachableRelay(t *testing.T) {
	doubted := doubtedCarrier{relayCarrier{&fakeCarrier{name: "relay-2"}}}
	healthy := relayCarrier{&fakeCarrier{name: "relay-3"}}
	cl := &shiftingCluster{before: []route.Carrier{doubted, healthy}, after: []route.Carrier{doubted, healthy}}
	r := newClusterRouter(t, route.NewTable(), cl)
	tun, err := r.Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r0"}, fixedEarly(nil))
	if err != nil {
		t.Fatal(err)
	}
	tun.Stream.Close()
	if tun.Relay != "relay-3" || len(doubted.sent()) != 0 {
		t.Errorf("stream via %q, relay-2 (in doubt) tried %d times; want relay-3, relay-2 not tried", tun.Relay, len(doubted.sent()))
	}
	// In doubt but the only one: tried.
	cl = &shiftingCluster{before: []route.Carrier{doubted}, after: []route.Carrier{doubted}}
	r = newClusterRouter(t, route.NewTable(), cl)
	tun, err = r.Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r1"}, fixedEarly(nil))
	if err != nil || tun.Relay != "relay-2" {
		t.Fatalf("stream with relay-2, in doubt, the only holder: %v; want it tried", err)
	}
	tun.Stream.Close()

	// The only holder cannot be reached: no_agent at once, the cluster
	// asked twice (remembered, fresh), not for moveWait.
	cut := relayCarrier{&fakeCarrier{name: "relay-2", err: unreachableError{}}}
	cl = &shiftingCluster{before: []route.Carrier{cut}, after: []route.Carrier{cut}}
	r = newClusterRouter(t, route.NewTable(), cl)
	start := time.Now()
	_, err = r.Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r2"}, fixedEarly(nil))
	if protocol.CodeOf(err) != protocol.CodeNoAgent || !strings.Contains(err.Error(), "answered nothing") {
		t.Fatalf("Dial with the only holder unreachable: %v, want no_agent saying why", err)
	}
	if n := cl.read(); n != 2 {
		t.Errorf("a dial whose only holder could not be reached asked the cluster %d times in %v, want 2 (no waiting for its agents to move)", n, time.Since(start).Round(time.Millisecond))
	}

	// The only holder's link is passed over after failed dials: the
	// answer names it.
	paused := pausedCarrier{relayCarrier{&fakeCarrier{name: "relay-2"}}}
	cl = &shiftingCluster{before: []route.Carrier{paused}, after: []route.Carrier{paused}}
	r = newClusterRouter(t, route.NewTable(), cl)
	_, err = r.Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r3"}, fixedEarly(nil))
	if protocol.CodeOf(err) != protocol.CodeNoAgent || !strings.Contains(err.Error(), "relay relay-2, which this relay cannot reach") {
		t.Fatalf("Dial with the only holder's link passed over: %v, want no_agent naming relay-2", err)
	}
}

// unreadError is a failure after which the client's first bytes are known
// not to have been read (route.ErrUnread).
type unreadError struct{}

func (unreadError) Error() string        { return "relay relay-1: no_agent: none here" }
func (unreadError) Is(target error) bool { return target == route.ErrUnread }

// TestDialRetriesUnreadEarly: an attempt that failed after the client's
// first bytes went with it, but whose carrier says they were not read (a
// peer relay refused the stream before reading past its request), is
// followed by another, which carries them again.
func TestDialRetriesUnreadEarly(t *testing.T) {
	early := fixedEarly("POST /pay HTTP/1.1\r\nHost: svc\r\nContent-Length: 0\r\n\r\n")
	refusing := &fakeCarrier{name: "refusing", err: unreadError{}}
	good := &fakeCarrier{name: "good", load: 1} // tried second
	r := newRouter(t, refusing, good)
	tun, err := r.Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r3"}, early)
	if err != nil {
		t.Fatalf("Dial after a refusal that read none of the first bytes: %v, want the stream opened on another carrier", err)
	}
	tun.Stream.Close()
	if tun.Agent != "good" {
		t.Fatalf("stream opened on %q, want good", tun.Agent)
	}
	for _, c := range []*fakeCarrier{refusing, good} {
		if got, want := c.sent(), "r3:"+string(early); len(got) != 1 || string(got[0]) != want {
			t.Errorf("carrier %s was sent %q, want one open with %q", c.name, got, want)
		}
	}
}

// busyError is a peer relay's refusal because it cannot take more streams
// now (its stream memory cap), as the peer carrier reports it.
type busyError struct{}

func (busyError) Error() string {
	return "relay relay-2: unavailable: the relay is at its stream memory cap (max_stream_memory 10 MiB, 8 MiB held for open streams at their worst case)"
}
func (busyError) Is(target error) bool { return target == route.ErrBusy || target == route.ErrUnread }

// TestDialAroundBusyRelay: a relay holding the tenant's agents that
// cannot take more streams (route.ErrBusy) is followed by another
// holding them, with the client's first bytes; when it is the only one,
// the client is told unavailable with its reason at once, the cluster
// asked twice (remembered, fresh): its agents are not moving, and are
// not waited for.
func TestDialAroundBusyRelay(t *testing.T) {
	early := fixedEarly("hello")
	busy := relayCarrier{&fakeCarrier{name: "relay-2", err: busyError{}}}
	other := relayCarrier{&fakeCarrier{name: "relay-3"}}
	cl := &shiftingCluster{before: []route.Carrier{busy, other}, after: []route.Carrier{busy, other}}
	r := newClusterRouter(t, route.NewTable(), cl)
	tun, err := r.Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r0"}, early)
	if err != nil {
		t.Fatalf("Dial with relay-2 busy and relay-3 holding acme too: %v", err)
	}
	tun.Stream.Close()
	if tun.Relay != "relay-3" {
		t.Fatalf("stream via %q, want relay-3", tun.Relay)
	}
	if got := other.sent(); len(got) != 1 || string(got[0]) != "r0:hello" {
		t.Errorf("relay-3 was sent %q, want one open with the first bytes", got)
	}

	cl = &shiftingCluster{before: []route.Carrier{busy}, after: []route.Carrier{busy}}
	r = newClusterRouter(t, route.NewTable(), cl)
	start := time.Now()
	_, err = r.Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r1"}, early)
	if protocol.CodeOf(err) != protocol.CodeUnavailable || !strings.Contains(err.Error(), "max_stream_memory 10 MiB") {
		t.Fatalf("Dial with the only holder busy: %v, want unavailable with its reason", err)
	}
	if n := cl.read(); n != 2 {
		t.Errorf("a dial whose only holder was busy asked the cluster %d times in %v, want 2 (no waiting for its agents to move)", n, time.Since(start).Round(time.Millisecond))
	}
}

// staticCluster always says the tenant's agents are at the same relays.
type staticCluster []route.Carrier

func (c staticCluster) Carriers(context.Context, string, bool) ([]route.Carrier, error) {
	return c, nil
}

// TestDialKeepsTries: the attempts that failed before a stream opened are
// in its tunnel (none when the first opened it); a refusal after failed
// attempts carries them (route.TriesOf) and still reads as the refusal:
// same text, code and *protocol.Error. A carrier to another relay is
// named by its relay, a connection here by its agent; errors are clipped.
func TestDialKeepsTries(t *testing.T) {
	good := &fakeCarrier{name: "good"}
	tun, err := newRouter(t, good).Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r0"}, fixedEarly(nil))
	if err != nil {
		t.Fatal(err)
	}
	tun.Stream.Close()
	if tun.Tries != nil {
		t.Errorf("stream opened at the first attempt: tries %+v, want nil", tun.Tries)
	}

	long := strings.Repeat("é", 400) // 800 bytes
	broken := &fakeCarrier{name: "broken", err: errors.New("connection lost: " + long)}
	good = &fakeCarrier{name: "good", load: 1} // tried second
	tun, err = newRouter(t, broken, good).Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r1"}, fixedEarly(nil))
	if err != nil {
		t.Fatal(err)
	}
	tun.Stream.Close()
	if len(tun.Tries) != 1 {
		t.Fatalf("stream opened after a failed attempt: tries %+v, want one", tun.Tries)
	}
	if try := tun.Tries[0]; try.Agent != "broken" || try.Relay != "" || !strings.HasPrefix(try.Err, "connection lost: é") ||
		len(try.Err) > 256+len("…") || !utf8.ValidString(try.Err) || try.Took < 0 {
		t.Errorf("the failed attempt: %+v; want agent broken, its error clipped to 256 bytes of UTF-8", try)
	}

	r1 := relayCarrier{&fakeCarrier{name: "relay-1", err: fmt.Errorf("relay relay-1: %w", route.ErrUnreachable)}}
	r2 := relayCarrier{&fakeCarrier{name: "relay-2", err: fmt.Errorf("relay relay-2: %w", route.ErrUnreachable)}}
	_, err = newClusterRouter(t, route.NewTable(), staticCluster{r1, r2}).Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r2"}, fixedEarly(nil))
	var pe *protocol.Error
	var te *route.TriedError
	if !errors.As(err, &pe) || !errors.As(err, &te) || protocol.CodeOf(err) != protocol.CodeNoAgent || err.Error() != pe.Error() {
		t.Fatalf("Dial with every relay unreachable: %v (%T), want a no_agent *protocol.Error with its tries", err, err)
	}
	tries := route.TriesOf(err)
	if len(tries) != 2 || tries[0].Relay != "relay-1" || tries[1].Relay != "relay-2" || tries[0].Agent != "" || !strings.Contains(tries[1].Err, "not reachable") {
		t.Errorf("tries of the refusal: %+v, want relay-1 then relay-2, each unreachable", tries)
	}

	// A refusal at the first attempt carries no tries: it is the
	// refusal itself.
	refusing := &fakeCarrier{name: "refusing", err: protocol.Errorf(protocol.CodeNotAllowed, "no")}
	_, err = newRouter(t, refusing).Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r3"}, fixedEarly(nil))
	if !errors.As(err, &pe) || errors.As(err, &te) || route.TriesOf(err) != nil {
		t.Errorf("Dial refused at the first attempt: %v (%T), want the *protocol.Error without tries", err, err)
	}
}

// sessionCarrier is a fakeCarrier that names its session (a connection
// of an agent to this relay).
type sessionCarrier struct {
	*fakeCarrier
	id string
}

func (c sessionCarrier) SessionID() string { return c.id }

// TestDialNamesRefuser: a refusal a carrier answered names who answered
// it (route.RefusedBy): the agent and session of a connection here, the
// relay of a forward; also after failed attempts, whose tries it still
// carries. It reads as the refusal: same text, code, *protocol.Error and
// reply. A refusal no carrier answered (no_agent, the dial's timeout)
// names none.
func TestDialNamesRefuser(t *testing.T) {
	want := protocol.Errorf(protocol.CodeUnknownService, "no service web")
	same := func(what string, err error) {
		t.Helper()
		var pe *protocol.Error
		if !errors.As(err, &pe) || pe != want || err.Error() != want.Error() || protocol.CodeOf(err) != want.Code || protocol.ReplyFor(err) != protocol.ReplyFor(want) {
			t.Errorf("%s: %v (%T), want it to read as the agent's refusal %v", what, err, err, want)
		}
	}
	refusing := sessionCarrier{&fakeCarrier{name: "a1", err: want}, "s1"}
	_, err := newRouter(t, refusing).Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r1"}, fixedEarly(nil))
	same("refused by a connection here", err)
	if by := route.RefusedBy(err); by == nil || by.Agent != "a1" || by.Session != "s1" || by.Relay != "" {
		t.Errorf("refused by a1's session s1: refused by %+v, want agent a1, session s1", by)
	}

	broken := sessionCarrier{&fakeCarrier{name: "a2", err: errors.New("connection lost")}, "s2"}
	refusing = sessionCarrier{&fakeCarrier{name: "a1", err: want, load: 1}, "s1"} // tried second
	_, err = newRouter(t, broken, refusing).Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r2"}, fixedEarly(nil))
	same("refused after a failed attempt", err)
	if by := route.RefusedBy(err); by == nil || by.Agent != "a1" || by.Session != "s1" {
		t.Errorf("refused by a1's session s1 after a failed attempt on a2's: refused by %+v, want agent a1, session s1", by)
	}
	if tries := route.TriesOf(err); len(tries) != 1 || tries[0].Agent != "a2" || tries[0].Session != "s2" {
		t.Errorf("tries of the refusal: %+v, want the attempt on a2's session s2", tries)
	}

	peer := relayCarrier{&fakeCarrier{name: "relay-2", err: want}}
	_, err = newClusterRouter(t, route.NewTable(), staticCluster{peer}).Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r3"}, fixedEarly(nil))
	same("refused by the relay of a forward", err)
	if by := route.RefusedBy(err); by == nil || by.Relay != "relay-2" || by.Agent != "" || by.Session != "" {
		t.Errorf("refused through relay-2: refused by %+v, want relay relay-2 and no agent", by)
	}

	// None answered: no carrier, and a carrier whose answer did not come
	// within the dial's time.
	_, err = newRouter(t).Dial(context.Background(), "acme", protocol.StreamHeader{Service: "web", RequestID: "r4"}, fixedEarly(nil))
	if protocol.CodeOf(err) != protocol.CodeNoAgent || route.RefusedBy(err) != nil {
		t.Errorf("no carrier: %v, refused by %+v; want no_agent answered by none", err, route.RefusedBy(err))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	late := sessionCarrier{&fakeCarrier{name: "a1", err: protocol.Errorf(protocol.CodeTimeout, "agent did not answer")}, "s1"}
	_, err = newRouter(t, late).Dial(ctx, "acme", protocol.StreamHeader{Service: "web", RequestID: "r5"}, fixedEarly(nil))
	if protocol.CodeOf(err) != protocol.CodeTimeout || route.RefusedBy(err) != nil {
		t.Errorf("no answer within the dial's time: %v, refused by %+v; want timeout answered by none", err, route.RefusedBy(err))
	}
}
