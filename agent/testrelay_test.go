package agent

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/quic"
	"github.com/tetherhq/tether/protocol/transport/tcp"
)

// testRelay is a small relay for the agent's tests of clusters: it speaks
// the real protocol over the real transports (QUIC and TLS over TCP with
// yamux, on one port), authenticates agents by the test CA, answers the
// Hello with a Welcome that carries its id and, when it announces the
// relays capability, the cluster's list; it answers pings and records
// every session: through which listener it came and when it opened and
// closed. It does no routing, no policy, no store: the relay side of
// clusters is not this package's to test.
type testRelay struct {
	t        testing.TB
	id       string
	addr     string // advertised: the address of its own listener
	announce bool   // CapRelays in the Welcome, and the list after it
	tlsConf  *tls.Config
	hb       time.Duration

	ctx    context.Context // cancelled by stop
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex // guards the fields below
	list   []protocol.RelayInfo
	lns    []*relayListener
	conns  map[*relayConn]bool // sessions that sent their Hello and are open
	all    []*relayConn        // every session that sent its Hello
	hellos map[string]int      // by listener address
	seq    int
	dead   bool
	// listAt, when above 1, holds the list back until that many sessions
	// are open (then every session gets it): two sessions of one agent
	// then surely both arrive before it knows the list.
	listAt int
	// refuseHello, when not empty, is the reason the relay closes a QUIC
	// session with (quic.CodeRefused) once it has read its Hello, with
	// no Reject before: a refusal whose Reject was lost.
	refuseHello string
}

type relayListener struct {
	addr string
	udp  *net.UDPConn
	tr   *quicgo.Transport
	qln  *quicgo.Listener
	tln  net.Listener
	raw  map[net.Conn]bool // TCP connections, for kill; guarded by testRelay.mu
}

// relayConn is one agent session at a test relay.
type relayConn struct {
	r        *testRelay
	via      string // the listener's address
	ts       transport.Session
	ctl      transport.Stream
	ctlMu    sync.Mutex // serialises writes to ctl
	hello    protocol.Hello
	session  string
	openedAt time.Time
	done     chan struct{} // closed when the session has ended
	closedAt time.Time     // set before done is closed
}

// testCA makes the relays' certificates and the agents' state.
type testCA struct {
	root testRoot
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	root := newTestRoot(t, "tether.internal", "cluster root")
	pool := x509.NewCertPool()
	pool.AddCert(root.cert)
	return &testCA{root: root, pool: pool}
}

// relayTLS is the TLS configuration of a relay: a certificate with the
// relay SPIFFE ID and no host name (agents verify relays by CA and trust
// domain, so any address reaches one), agents' certificates required.
func (c *testCA) relayTLS(t testing.TB) *tls.Config {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		URIs: []*url.URL{identity.RelayURI("tether.internal")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.root.cert, &key.PublicKey, c.root.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{protocol.ALPN},
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    c.pool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := identity.AgentFromCertificate(cs.PeerCertificates[0], "tether.internal")
			return err
		},
	}
}

// newTestRelay starts a relay listening on host (TCP and UDP, one port);
// it stops when the test ends.
func newTestRelay(t testing.TB, ca *testCA, id, host string, announce bool) *testRelay {
	r := &testRelay{t: t, id: id, announce: announce, tlsConf: ca.relayTLS(t), hb: time.Second,
		conns: map[*relayConn]bool{}, hellos: map[string]int{}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.addr = r.listen(host)
	t.Cleanup(r.stop)
	return r
}

// listen adds a listener on host (a free port, TCP and UDP) and returns
// its address. A relay's second listener stands for a name that several
// relays share (a load balancer's).
func (r *testRelay) listen(host string) string {
	t := r.t
	var l *relayListener
	for range 20 {
		tln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			// Linux routes all of 127.0.0.0/8 to loopback; other
			// systems may have 127.0.0.1 alone.
			t.Skipf("loopback address %s is not available here: %v", host, err)
		}
		if err != nil {
			t.Fatal(err)
		}
		port := tln.Addr().(*net.TCPAddr).Port
		udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(host), Port: port})
		if err != nil {
			tln.Close() // the UDP port is taken: another port
			continue
		}
		l = &relayListener{addr: net.JoinHostPort(host, strconv.Itoa(port)), udp: udp, tln: tln, raw: map[net.Conn]bool{}}
		break
	}
	if l == nil {
		t.Fatalf("no port free for TCP and UDP on %s", host)
	}
	l.tr = &quicgo.Transport{Conn: l.udp}
	qln, err := l.tr.Listen(r.tlsConf, quic.Config(1))
	if err != nil {
		t.Fatal(err)
	}
	l.qln = qln
	r.mu.Lock()
	r.lns = append(r.lns, l)
	r.mu.Unlock()
	r.wg.Go(func() {
		for {
			conn, err := l.qln.Accept(r.ctx)
			if err != nil {
				return
			}
			r.wg.Go(func() { r.serve(quic.NewSession(conn), l.addr) })
		}
	})
	r.wg.Go(func() {
		for {
			c, err := l.tln.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			if r.dead {
				r.mu.Unlock()
				c.Close()
				continue
			}
			l.raw[c] = true
			r.mu.Unlock()
			r.wg.Go(func() {
				tc := tls.Server(c, r.tlsConf)
				hctx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
				err := tc.HandshakeContext(hctx)
				cancel()
				if err != nil {
					c.Close()
					return
				}
				sess, err := tcp.Server(tc, tcp.RelayConfig(slog.New(slog.DiscardHandler)))
				if err != nil {
					c.Close()
					return
				}
				r.serve(sess, l.addr)
			})
		}
	})
	return l.addr
}

// serve runs one agent session: Hello, Welcome (and the list), then pongs
// for pings until the session ends.
func (r *testRelay) serve(ts transport.Session, via string) {
	defer ts.Close()
	actx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
	ctl, err := ts.AcceptStream(actx)
	cancel()
	if err != nil {
		return
	}
	c := &relayConn{r: r, via: via, ts: ts, ctl: ctl, done: make(chan struct{})}
	br := bufio.NewReader(ctl)
	m, err := protocol.ReadMessage(br)
	hello, ok := m.(*protocol.Hello)
	if err != nil || !ok {
		return
	}
	c.hello = *hello
	r.mu.Lock()
	refuse := r.refuseHello
	r.mu.Unlock()
	if qs, ok := ts.(*quic.Session); ok && refuse != "" {
		qs.CloseWithError(quic.CodeRefused, refuse)
		return
	}
	// Opened before the Welcome is sent: the agent cannot act on this
	// session (and close another) before openedAt.
	c.openedAt = time.Now()
	r.mu.Lock()
	r.seq++
	c.session = fmt.Sprintf("%s-%d", r.id, r.seq)
	w := &protocol.Welcome{ProtocolVersion: protocol.Version, RelayVersion: "test", SessionID: c.session,
		HeartbeatMillis: r.hb.Milliseconds(), Capabilities: []string{protocol.CapHeartbeat, protocol.CapGoAway}}
	if r.announce {
		w.RelayID = r.id
		w.Capabilities = append(w.Capabilities, protocol.CapRelays)
	}
	err = c.send(w)
	held := len(r.conns)+1 < r.listAt
	if err == nil && r.announce && !held && slices.Contains(hello.Capabilities, protocol.CapRelays) {
		err = c.send(&protocol.Relays{Relays: r.list})
	}
	if err != nil || r.dead {
		r.mu.Unlock()
		return
	}
	if r.listAt > 1 && len(r.conns)+1 == r.listAt {
		for o := range r.conns {
			if err := o.send(&protocol.Relays{Relays: r.list}); err != nil {
				r.t.Logf("relay %s: send the list: %v", r.id, err)
			}
		}
	}
	r.conns[c] = true
	r.all = append(r.all, c)
	r.hellos[via]++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.conns, c)
		c.closedAt = time.Now()
		close(c.done)
		r.mu.Unlock()
	}()
	for {
		m, err := protocol.ReadMessage(br)
		if err != nil {
			return
		}
		if p, ok := m.(*protocol.Ping); ok {
			if c.send(&protocol.Pong{Seq: p.Seq}) != nil {
				return
			}
		}
	}
}

func (c *relayConn) send(m protocol.Message) error {
	c.ctlMu.Lock()
	defer c.ctlMu.Unlock()
	return protocol.WriteMessage(c.ctl, m)
}

// setList makes list the cluster's relay list, sent to every session now
// and to every session that starts later.
func (r *testRelay) setList(list []protocol.RelayInfo) {
	list = slices.Clone(list) // the caller may change its own afterwards
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = list
	if !r.announce {
		return
	}
	for c := range r.conns {
		if slices.Contains(c.hello.Capabilities, protocol.CapRelays) {
			if err := c.send(&protocol.Relays{Relays: list}); err != nil {
				r.t.Logf("relay %s: send the list: %v", r.id, err)
			}
		}
	}
}

// holdList holds the list back until n sessions are open (listAt).
func (r *testRelay) holdList(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.listAt = n
}

// goAway sends a GoAway to every session.
func (r *testRelay) goAway(g *protocol.GoAway) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		if err := c.send(g); err != nil {
			r.t.Logf("relay %s: send goaway: %v", r.id, err)
		}
	}
}

// kill stops the relay the way a killed process stops: its sockets close
// at once, with no goodbye on any session (no QUIC close, no GoAway), and
// nothing answers at its addresses any more.
func (r *testRelay) kill() {
	r.mu.Lock()
	r.dead = true
	lns := r.lns
	for _, l := range lns {
		l.tln.Close()
		l.udp.Close() // QUIC sessions die with their socket: nothing is sent
		for c := range l.raw {
			c.Close()
		}
	}
	r.mu.Unlock()
}

// stop ends every session and listener and waits for the relay's
// goroutines.
func (r *testRelay) stop() {
	r.kill()
	r.cancel()
	r.mu.Lock()
	for c := range r.conns {
		c.ts.Close()
	}
	for _, l := range r.lns {
		l.qln.Close()
		l.tr.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// info is the relay as a list names it.
func (r *testRelay) info() protocol.RelayInfo { return protocol.RelayInfo{ID: r.id, Addr: r.addr} }

// hellosVia counts the sessions that came through the listener at addr.
func (r *testRelay) hellosVia(addr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hellos[addr]
}

// sessions returns every session of the relay so far, open or closed.
func (r *testRelay) sessions() []*relayConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.all)
}

// open returns the sessions open now.
func (r *testRelay) open() []*relayConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*relayConn
	for _, c := range r.all {
		if r.conns[c] {
			out = append(out, c)
		}
	}
	return out
}

// openStream opens a stream to service on the session, as the relay does
// for a backend, and returns it once the agent has answered OK.
func (c *relayConn) openStream(ctx context.Context, service string) (transport.Stream, error) {
	st, err := c.ts.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	if err := protocol.WriteStreamHeader(st, protocol.StreamHeader{Service: service, Backend: "backend:test", RequestID: "req-1"}); err != nil {
		st.Close()
		return nil, err
	}
	rep, err := protocol.ReadReply(st)
	if err == nil {
		err = rep.Err()
	}
	if err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// echoService is a TCP service that echoes; it stops when the test ends.
func echoService(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex // guards conns
	conns := map[net.Conn]bool{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				io.Copy(c, c)
				c.Close()
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// roundTrip writes a line on st and reads it back.
func roundTrip(st io.ReadWriter, line string) error {
	if _, err := io.WriteString(st, line+"\n"); err != nil {
		return err
	}
	got, err := bufio.NewReader(io.LimitReader(st, int64(len(line)+1))).ReadString('\n')
	if err != nil {
		return err
	}
	if got != line+"\n" {
		return fmt.Errorf("got %q back, want %q", got, line)
	}
	return nil
}

var errNotYet = errors.New("not yet")
