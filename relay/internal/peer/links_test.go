package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/trust"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// watchdog bounds each wait of these tests for something that must
// happen without waiting on a dial or a peer.
const watchdog = 5 * time.Second

// peers returns the relay-to-relay TLS of relays relay-1 and relay-2 of
// one CA.
func peers(t *testing.T) (*trust.Peer, *trust.Peer) {
	t.Helper()
	dir, authority, err := datadir.Open(context.Background(), t.TempDir(), datadir.Options{TrustDomain: "peer.test"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dir.Close() })
	auth := trust.NewAuthority(dir.CAStorage(), authority)
	p1, err := trust.NewPeer(auth, nil, "relay-1", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := trust.NewPeer(auth, nil, "relay-2", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	return p1, p2
}

// serve runs relay-2's peer listener until the test ends.
func serve(t *testing.T, tlsPeer *trust.Peer) *Server {
	t.Helper()
	return serveWith(t, tlsPeer, watchdog)
}

// serveWith is serve with a handshake timeout of its own.
func serveWith(t *testing.T, tlsPeer *trust.Peer, handshakeTimeout time.Duration) *Server {
	t.Helper()
	return serveLogged(t, tlsPeer, handshakeTimeout, slog.New(slog.DiscardHandler))
}

// serveLogged is serveWith logging to log.
func serveLogged(t *testing.T, tlsPeer *trust.Peer, handshakeTimeout time.Duration, log *slog.Logger) *Server {
	t.Helper()
	srv, err := NewServer(ServerConfig{Listen: "127.0.0.1:0", TLS: tlsPeer, HandshakeTimeout: handshakeTimeout,
		IdleTimeout: time.Minute, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Run(ctx)
	}()
	t.Cleanup(func() {
		srv.Close()
		cancel()
		<-done
	})
	return srv
}

// gate is a TCP proxy in front of a peer listener that holds each
// connection it accepts, unforwarded, until released: a dial through it
// stays in its TLS handshake for as long as the test wants.
type gate struct {
	ln       net.Listener
	accepted chan struct{} // one value per connection accepted
	release  chan struct{} // closed: forward (or, with fail set, drop) every connection
	fail     bool
	dials    atomic.Int32
	wg       sync.WaitGroup
}

func newGate(t *testing.T, target string, fail bool) *gate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{ln: ln, accepted: make(chan struct{}, 16), release: make(chan struct{}), fail: fail}
	g.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.dials.Add(1)
			g.accepted <- struct{}{}
			g.wg.Go(func() { g.forward(c, target) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		g.open()
		g.wg.Wait()
	})
	return g
}

func (g *gate) open() {
	select {
	case <-g.release:
	default:
		close(g.release)
	}
}

func (g *gate) forward(c net.Conn, target string) {
	defer c.Close()
	<-g.release
	if g.fail {
		return
	}
	up, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(up, c)
		up.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(c, up)
	c.(*net.TCPConn).CloseWrite()
	<-done
}

// holdings is a Holders function whose answers the test sets per tenant.
type holdings struct {
	mu sync.Mutex
	m  map[string][]store.Holding
}

func (h *holdings) set(tenant string, hs ...store.Holding) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		h.m = map[string][]store.Holding{}
	}
	h.m[tenant] = hs
}

func (h *holdings) get(_ context.Context, tenant string, _ bool) ([]store.Holding, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.m[tenant], nil
}

func newLinks(t *testing.T, tlsPeer *trust.Peer, h *holdings) *Links {
	l := NewLinks(LinksConfig{TLS: tlsPeer, Holders: h.get, DialTimeout: 30 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(l.Close)
	return l
}

// carrier returns tenant's only carrier.
func carrier(t *testing.T, l *Links, tenant string) *Carrier {
	t.Helper()
	cs, err := l.Carriers(context.Background(), tenant, false)
	if err != nil || len(cs) != 1 {
		t.Fatalf("Carriers(%s) = %v, %v; want one", tenant, cs, err)
	}
	return cs[0].(*Carrier)
}

type result struct {
	v   any
	err error
}

// sessionAsync calls l.session for lk on a goroutine of its own; its
// result arrives on the channel returned.
func sessionAsync(ctx context.Context, l *Links, lk *link) <-chan result {
	ch := make(chan result, 1)
	go func() {
		s, err := l.session(ctx, lk, nil)
		ch <- result{s, err}
	}()
	return ch
}

// within runs f and fails the test unless it returns within watchdog.
func within(t *testing.T, what string, f func() (any, error)) (any, error) {
	t.Helper()
	ch := make(chan result, 1)
	go func() {
		v, err := f()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(watchdog):
		t.Fatalf("%s did not return within %v", what, watchdog)
		return nil, nil
	}
}

// TestCarriersDoNotWaitForADial is the deadlock a rolling restart of a
// cluster ran into: while a stream of one tenant dialed the link to a
// restarted relay at its new address, a stream of another tenant, whose
// remembered holdings still named the relay's old address, replaced the
// link under the links' lock and waited for the dial to let go of it;
// the dial, done, waited for the links' lock. Every forwarded stream of
// the relay then hung. Now the older address does not replace the newer
// run's link, and nothing holds the links' lock while waiting on a link.
func TestCarriersDoNotWaitForADial(t *testing.T) {
	p1, p2 := peers(t)
	srv := serve(t, p2)
	g := newGate(t, srv.Addr().String(), false)
	var h holdings
	h.set("acme", store.Holding{RelayID: "relay-2", Epoch: 2, PeerAddr: g.ln.Addr().String(), Agents: 1})
	h.set("beta", store.Holding{RelayID: "relay-2", Epoch: 1, PeerAddr: "127.0.0.1:1", Agents: 1})
	l := newLinks(t, p1, &h)

	c := carrier(t, l, "acme")
	first, giveUp := context.WithCancel(context.Background())
	defer giveUp()
	dialed := sessionAsync(first, l, c.link)
	<-g.accepted // the dial is in its TLS handshake, held by the gate

	v, _ := within(t, "Carriers of another tenant during the dial", func() (any, error) { return carrier(t, l, "beta"), nil })
	if b := v.(*Carrier); b.link != c.link {
		t.Errorf("a holding of the relay's older run (epoch 1, %s) replaced the link of its newer run (epoch 2, %s)", b.link.addr, c.link.addr)
	}
	if !c.link.usable(time.Now()) {
		t.Error("a link being dialed is not usable")
	}
	// Another caller's context is honoured while the dial runs.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := within(t, "session with an ended context", func() (any, error) { return l.session(ctx, c.link, nil) }); !errors.Is(err, context.Canceled) {
		t.Errorf("session with an ended context during a dial: %v, want context.Canceled", err)
	}

	// The caller that started the dial gives up: it returns, and the
	// dial goes on for the others.
	giveUp()
	if r, _ := within(t, "session whose context ended", func() (any, error) { r := <-dialed; return r, nil }); !errors.Is(r.(result).err, context.Canceled) {
		t.Errorf("the dial's first caller, its context ended: %v, want context.Canceled", r.(result).err)
	}
	later := sessionAsync(context.Background(), l, c.link)
	g.open()
	var r result
	select {
	case r = <-later:
	case <-time.After(watchdog):
		t.Fatal("the dial did not finish once the gate opened")
	}
	if r.err != nil {
		t.Fatalf("dial through the gate: %v", r.err)
	}
	again, err := within(t, "session of an up link", func() (any, error) { return l.session(context.Background(), c.link, nil) })
	if err != nil || again != r.v {
		t.Errorf("session of the up link = %v, %v; want the same session", again, err)
	}
	if n := g.dials.Load(); n != 1 {
		t.Errorf("%d dials, want 1", n)
	}
}

// TestNewerRunReplacesLink: a holding of a relay's newer run, at a new
// address, replaces the link and closes the old one's session; an older
// holding after it does not bring the old address back.
func TestNewerRunReplacesLink(t *testing.T) {
	p1, p2 := peers(t)
	old, cur := serve(t, p2), serve(t, p2)
	var h holdings
	h.set("acme", store.Holding{RelayID: "relay-2", Epoch: 1, PeerAddr: old.Addr().String(), Agents: 1})
	l := newLinks(t, p1, &h)
	c1 := carrier(t, l, "acme")
	s1, err := within(t, "dial of the old run", func() (any, error) { return l.session(context.Background(), c1.link, nil) })
	if err != nil {
		t.Fatal(err)
	}

	h.set("acme", store.Holding{RelayID: "relay-2", Epoch: 2, PeerAddr: cur.Addr().String(), Agents: 1})
	c2 := carrier(t, l, "acme")
	if c2.link == c1.link || c2.link.addr != cur.Addr().String() {
		t.Fatalf("after the relay's restart the carrier's link is at %s, want a new link at %s", c2.link.addr, cur.Addr())
	}
	select {
	case <-s1.(interface{ Done() <-chan struct{} }).Done():
	case <-time.After(watchdog):
		t.Error("the replaced link's session is still open")
	}
	if _, err := l.session(context.Background(), c1.link, nil); err == nil {
		t.Error("the replaced link dialed again")
	}
	if c1.link.usable(time.Now()) {
		t.Error("the replaced link is usable")
	}
	if _, err := within(t, "dial of the new run", func() (any, error) { return l.session(context.Background(), c2.link, nil) }); err != nil {
		t.Fatal(err)
	}

	h.set("beta", store.Holding{RelayID: "relay-2", Epoch: 1, PeerAddr: old.Addr().String(), Agents: 1})
	if b := carrier(t, l, "beta"); b.link != c2.link {
		t.Errorf("a holding of the older run brought back its address %s", b.link.addr)
	}
}

// TestLinkClosedDuringDial: closing a link being dialed returns at once;
// the dial's session, when it comes, is closed, and the link is not
// dialed again.
func TestLinkClosedDuringDial(t *testing.T) {
	p1, p2 := peers(t)
	srv := serve(t, p2)
	g := newGate(t, srv.Addr().String(), false)
	var h holdings
	h.set("acme", store.Holding{RelayID: "relay-2", Epoch: 1, PeerAddr: g.ln.Addr().String(), Agents: 1})
	l := newLinks(t, p1, &h)
	c := carrier(t, l, "acme")
	dialed := sessionAsync(context.Background(), l, c.link)
	<-g.accepted
	within(t, "close of a link being dialed", func() (any, error) { c.link.close(); return nil, nil })
	g.open()
	r := <-dialed
	if r.err == nil {
		t.Fatal("the dial of a closed link handed out its session")
	}
	if _, err := l.session(context.Background(), c.link, nil); err == nil {
		t.Error("a closed link dialed again")
	}
	if n := g.dials.Load(); n != 1 {
		t.Errorf("%d dials, want 1", n)
	}
}

// TestFailedDialIsShared: callers that waited for a dial that failed get
// its error rather than dialing again, one after the other.
func TestFailedDialIsShared(t *testing.T) {
	p1, _ := peers(t)
	g := newGate(t, "127.0.0.1:1", true)
	var h holdings
	h.set("acme", store.Holding{RelayID: "relay-2", Epoch: 1, PeerAddr: g.ln.Addr().String(), Agents: 1})
	l := newLinks(t, p1, &h)
	c := carrier(t, l, "acme")
	first := sessionAsync(context.Background(), l, c.link)
	<-g.accepted
	// A second caller finds the dial running and waits for it.
	c.link.mu.Lock()
	running := c.link.dialing != nil
	c.link.mu.Unlock()
	if !running {
		t.Fatal("no dial running while the gate holds it")
	}
	second := sessionAsync(context.Background(), l, c.link)
	// Both callers wait for the one dial (its starter included), which
	// the gate holds until it is opened.
	deadline := time.Now().Add(watchdog)
	for {
		c.link.mu.Lock()
		waiting := c.link.waiting
		c.link.mu.Unlock()
		if waiting == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d callers waiting for the dial, want 2", waiting)
		}
		time.Sleep(time.Millisecond)
	}
	g.open()
	for _, ch := range []<-chan result{first, second} {
		select {
		case r := <-ch:
			if r.err == nil {
				t.Error("a dial through a gate that drops connections succeeded")
			}
		case <-time.After(watchdog):
			t.Fatal("a caller did not return once the dial failed")
		}
	}
	if c.link.usable(time.Now()) {
		t.Error("a link whose dial just failed is usable")
	}
	if n := g.dials.Load(); n != 1 {
		t.Errorf("%d dials for two callers, want 1", n)
	}
}

// TestTidyForgetsRelaysGone: the links, carriers and failure counts (the
// tether_peer_link_failures_total series) of relays missing from the
// cluster's live relays for ForgetAfter are forgotten, while a link that
// is up stays, whatever the list says. Before, every relay a link was
// ever made to stayed for as long as the relay ran: a cluster whose relays
// get new ids at each deployment grew a link and three series per relay
// replaced.
func TestTidyForgetsRelaysGone(t *testing.T) {
	p1, p2 := peers(t)
	srv := serve(t, p2)
	var h holdings
	l := newLinks(t, p1, &h)

	// Relays that served a tenant, then went away for good: the dial to
	// each fails.
	const n = 50
	for i := range n {
		tenant := fmt.Sprintf("t%d", i)
		h.set(tenant, store.Holding{RelayID: fmt.Sprintf("gone-%d", i), Epoch: 1, PeerAddr: "127.0.0.1:1", Agents: 1})
		c := carrier(t, l, tenant)
		ctx, cancel := context.WithTimeout(context.Background(), watchdog)
		_, err := l.session(ctx, c.link, nil)
		cancel()
		if err == nil {
			t.Fatalf("dial of relay gone-%d at 127.0.0.1:1 succeeded", i)
		}
	}
	// relay-2, whose link is up, leaves the live list too (it lost the
	// store, say): its link carries streams and stays.
	h.set("acme", store.Holding{RelayID: "relay-2", Epoch: 1, PeerAddr: srv.Addr().String(), Agents: 1})
	c := carrier(t, l, "acme")
	ctx, cancel := context.WithTimeout(context.Background(), watchdog)
	defer cancel()
	if _, err := l.session(ctx, c.link, nil); err != nil {
		t.Fatalf("link to relay-2: %v", err)
	}
	if got := len(l.Failures()); got != n+1 {
		t.Fatalf("failure counts of %d relays, want %d", got, n+1)
	}

	t0 := time.Now()
	live := []string{"relay-1", "gone-7"} // gone-7 comes back
	l.Tidy(live, t0)
	l.Tidy(live, t0.Add(ForgetAfter-time.Second))
	if got := len(l.Failures()); got != n+1 {
		t.Fatalf("failure counts of %d relays before ForgetAfter, want %d", got, n+1)
	}
	l.Tidy(live, t0.Add(ForgetAfter))

	var kept []string
	for _, f := range l.Failures() {
		kept = append(kept, f.Relay)
	}
	if want := []string{"gone-7", "relay-2"}; !slices.Equal(kept, want) {
		t.Fatalf("failure counts kept for %v, want %v", kept, want)
	}
	l.mu.Lock()
	links, carriers, missing := len(l.links), len(l.carriers), len(l.missing)
	l.mu.Unlock()
	if links != 2 || carriers != 2 || missing != 1 {
		t.Fatalf("kept %d links, %d carriers, %d relays missing; want 2, 2, 1 (gone-7, and relay-2 while its link is up)", links, carriers, missing)
	}
	// The link that stayed still carries streams.
	if _, err := l.session(ctx, c.link, nil); err != nil {
		t.Fatalf("link to relay-2 after Tidy: %v", err)
	}
	// A relay forgotten that holds agents again gets a new link.
	h.set("t3", store.Holding{RelayID: "gone-3", Epoch: 2, PeerAddr: "127.0.0.1:1", Agents: 1})
	if !carrier(t, l, "t3").link.usable(time.Now()) {
		t.Fatal("the new link to gone-3 is not usable (closed, or passed over for the old one's failures)")
	}
}
