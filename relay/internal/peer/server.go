// Package peer carries streams between the relays of a cluster. A backend
// request that reaches relay A for a tenant whose agents are connected to
// relay B only is forwarded over a link from A to B: A authenticates,
// authorizes, applies the tenant's limits and audits, as for any stream;
// B only opens the stream on one of its own agents (wire.go). Links is
// A's side, a route.Elsewhere; Server is B's.
package peer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/tcp"
	"github.com/tetherhq/tether/relay/internal/route"
	"github.com/tetherhq/tether/relay/internal/streammem"
	"github.com/tetherhq/tether/relay/internal/throttle"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// linkConfig is the yamux configuration of a link. yamux's own keepalive
// is on (unlike agent sessions, links carry no control stream of ours):
// a peer that stops answering ends the link, and its streams with it,
// within a few intervals.
func linkConfig(log *slog.Logger) *yamux.Config {
	c := tcp.Config(log)
	c.EnableKeepAlive = true
	c.KeepAliveInterval = 5 * time.Second
	// Forwarded streams are opened by the entry relay only; the holding
	// relay reads each one's request at once, so the backlog only holds a
	// burst of opens.
	c.AcceptBacklog = 4096
	return c
}

// The bounds on the handshakes of links in progress, before the peer is
// authenticated: a connection counts against its source address and
// network (throttle.Sources) from its accept, and holds a slot of the gate
// (throttle.Gate) from before its TLS handshake, until the handshake
// ends. One beyond its source's bound is closed at once; one that finds no
// slot within half the handshake timeout is closed then. A reachable peer
// listener (it is meant for the cluster's private network, but nothing
// makes it so) otherwise ran a handshake, a goroutine and a timer for
// every connection anyone opened, as many at once as they liked, each for
// up to the handshake timeout.
//
// They are fixed: what the relays of a cluster need is far below them. A
// relay dials one link to each other relay, one dial at a time, and
// waits at least firstPause after one that failed; when a relay starts, every
// other one dials it at once, so a cluster of N relays brings N-1
// handshakes together. 64 slots hold that for a cluster of 64 relays,
// and 32 a network (a /24, a /56) for 32 relays on one subnet at once,
// as the README's example puts them; 8 an address for relays behind one
// NAT address. A flood from one address then holds 8 handshakes, from one
// network 32, and while more than half of the slots are taken a network
// may hold only its share (a sixteenth of them, 4): filling them takes
// nine networks, and until then a relay from a network the flood does not
// use gets in at once. A relay turned away dials again after firstPause (longer after further failures);
// the streams that wanted its link try another relay meanwhile.
const (
	maxHandshakes           = 64
	maxHandshakesPerAddress = 8
	maxHandshakesPerNetwork = 32
	networkShare            = maxHandshakes / 16
)

// ServerConfig configures the holding side of links.
type ServerConfig struct {
	// Listen is the relay-to-relay listener's address.
	Listen string
	TLS    *trust.Peer
	// Router opens streams on this relay's own agents (DialLocal).
	Router *route.Router
	// HandshakeTimeout bounds a link's TLS handshake and a stream's
	// request; a connection waits for a handshake slot at most half as
	// long, so that a peer dialing within HandshakeTimeout that got one
	// still has time to finish (a relay's links dial within
	// defaultDialTimeout, 2 s: one kept waiting longer has given up, and
	// dials again after its pause). IdleTimeout closes forwarded streams
	// idle both ways.
	HandshakeTimeout, IdleTimeout time.Duration
	// LastHeartbeat is when this relay last wrote its heartbeat to the
	// store (the zero time: never), for peers that ask whether it
	// reaches the store; nil: it answers that it never did. Its age is
	// time.Since of it: a time with a monotonic reading (as time.Now
	// gives) is immune to steps of the wall clock.
	LastHeartbeat func() time.Time
	// Memory is the relay's stream memory budget, shared with its front
	// doors: each forwarded stream is charged its worst case here while
	// it is open (streammem.ChargeForwarded), and one past the cap, or
	// past its tenant's share while the relay is busy, is refused with
	// unavailable. nil: no cap.
	Memory *streammem.Budget
	Logger *slog.Logger
}

// Stats counts the links' handshakes by outcome, as session.Stats counts
// the agents'.
type Stats = throttle.HandshakeStats

// Server accepts links from peer relays and serves their streams.
type Server struct {
	cfg   ServerConfig
	log   *slog.Logger
	ln    net.Listener
	stats Stats
	gate  *throttle.Gate    // handshakes in progress
	src   *throttle.Sources // of them, per source address and network
	// failLogs bounds the warnings of failed handshakes per source (the
	// first 10, then one every 5 s; the rest at debug level), as at the
	// agent port: a scanner or a flood would otherwise write a line per
	// connection.
	failLogs *throttle.Limiter

	mu     sync.Mutex // guards links and closed
	links  map[*tcp.Session]string
	closed bool
	wg     sync.WaitGroup // links' and streams' goroutines
}

// NewServer binds the relay-to-relay listener.
func NewServer(cfg ServerConfig) (*Server, error) {
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("relay-to-relay listener: %w", err)
	}
	gate := throttle.NewGate(maxHandshakes, cfg.HandshakeTimeout/2)
	src := throttle.NewSources(maxHandshakesPerAddress, maxHandshakesPerNetwork).ShareWhenBusy(gate.Busy, networkShare)
	return &Server{cfg: cfg, log: cfg.Logger, ln: ln, links: map[*tcp.Session]string{}, gate: gate, src: src,
		failLogs: throttle.New(throttle.Config{Burst: 10, Every: 5 * time.Second, MaxKeys: 4096})}, nil
}

// Stats counts the links' handshakes by outcome.
func (s *Server) Stats() *Stats { return &s.stats }

// InProgress reports the handshakes holding a slot now and how many source
// addresses they come from.
func (s *Server) InProgress() (handshakes, sources int) {
	return s.gate.InUse(), s.src.Held()
}

// Addr is the listener's address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Links reports how many links peers hold to this relay.
func (s *Server) Links() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.links)
}

// Run accepts links until Close, then returns once every link and stream
// it served has ended.
func (s *Server) Run(ctx context.Context) error {
	defer s.wg.Wait()
	var backoff throttle.AcceptBackoff
	for {
		c, err := s.ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			if backoff.Retry(ctx, err, s.log, "relay-to-relay listener") {
				continue
			}
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("relay-to-relay listener: %w", err)
		}
		backoff.Accepted()
		// Turned away here, before a goroutine is spent on it, when its
		// source is at its bound: a flood costs an accept and a close.
		leaveSource, ok, byShare := s.src.EnterShared(c.RemoteAddr())
		if !ok {
			s.stats.SourceLimited.Add(1)
			if byShare {
				s.log.Debug("relay-to-relay connection turned away: the listener is busy and its network has its share of the handshakes in progress", "remote", c.RemoteAddr().String(), "share", networkShare)
			} else {
				s.log.Debug("relay-to-relay connection turned away: too many handshakes in progress from its address or network", "remote", c.RemoteAddr().String())
			}
			c.Close()
			continue
		}
		s.wg.Go(func() { s.serveLink(ctx, c, leaveSource) })
	}
}

// Close stops accepting and closes every link: their streams end.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	links := make([]*tcp.Session, 0, len(s.links))
	for l := range s.links {
		links = append(links, l)
	}
	s.mu.Unlock()
	s.ln.Close()
	for _, l := range links {
		l.Close()
	}
}

// serveLink serves one connection, counted against its source's bound
// until leaveSource is called (once its handshake is over), from its TLS
// handshake to the link's end.
func (s *Server) serveLink(ctx context.Context, c net.Conn, leaveSource func()) {
	if !s.gate.Enter(ctx) {
		leaveSource()
		s.stats.Throttled.Add(1)
		s.log.Debug("relay-to-relay connection turned away: too many handshakes in progress", "remote", c.RemoteAddr().String())
		c.Close()
		return
	}
	tc := tls.Server(tcp.NewRawConn(c), s.cfg.TLS.Listener())
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	s.gate.Leave()
	leaveSource()
	if err != nil {
		s.stats.Failed.Add(1)
		level := slog.LevelWarn
		if s.failLogs.Take(throttle.Source(c.RemoteAddr().String())) != 0 {
			level = slog.LevelDebug
		}
		s.log.Log(ctx, level, "relay-to-relay link refused", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	s.stats.OK.Add(1)
	peer := tc.ConnectionState().PeerCertificates[0].URIs[0].String()
	sess, err := tcp.Server(tc, linkConfig(s.log))
	if err != nil {
		c.Close()
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		sess.Close()
		return
	}
	s.links[sess] = peer
	s.mu.Unlock()
	log := s.log.With("peer", peer)
	log.Info("relay-to-relay link up", "remote", c.RemoteAddr().String())
	defer func() {
		s.mu.Lock()
		delete(s.links, sess)
		s.mu.Unlock()
		sess.Close()
		log.Info("relay-to-relay link down")
	}()
	for {
		st, err := sess.AcceptStream(ctx)
		if err != nil {
			return
		}
		s.wg.Go(func() { s.serveStream(ctx, st, log) })
	}
}

// serveStream answers one forwarded stream: it opens a stream on one of
// this relay's agents of the tenant asked for, answers, and joins the two.
func (s *Server) serveStream(ctx context.Context, st transport.Stream, log *slog.Logger) {
	st.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	q, err := readRequest(st)
	if err != nil {
		log.Warn("relay-to-relay stream refused", "err", err)
		writeAnswer(st, protocol.ReplyFor(err), "")
		st.Close()
		return
	}
	if q.Status {
		var last time.Time
		if s.cfg.LastHeartbeat != nil {
			last = s.cfg.LastHeartbeat()
		}
		writeStatusAnswer(st, time.Since(last), !last.IsZero())
		st.Close()
		return
	}
	// The relay's stream memory cap, shared with its front doors'
	// streams: the stream is charged the worst case of the link's stream
	// and of any agent's transport until its stream to the agent is open,
	// then of the link's and that one's, and the charge is held until the
	// stream ends. Refused, it is answered unavailable before anything
	// past the request is read: the entry relay tries another relay
	// holding the tenant's agents with the client's first bytes, or
	// tells its client unavailable.
	charge, err := s.cfg.Memory.ChargeForwarded(q.Tenant, strings.TrimPrefix(q.Header.Backend, "backend:"))
	if err != nil {
		log.Debug("forwarded stream refused", "tenant", q.Tenant, "service", q.Header.Service, "request", q.Header.RequestID, "err", err)
		writeAnswer(st, protocol.ReplyFor(err), "")
		st.Close()
		return
	}
	defer charge.Release()
	st.SetDeadline(time.Time{})
	// The entry relay resets the stream when it gives up on it (its
	// client went away, its budget ran out): the open on the agent
	// stops then, rather than at the end of this relay's own budget.
	dctx, cancel := context.WithCancel(ctx)
	w := watchOpening(st, cancel)
	t, err := s.cfg.Router.DialLocal(dctx, q.Tenant, q.Header)
	first, gone := w.stop()
	cancel()
	if err == nil && gone != nil {
		t.Abandon()
		err = fmt.Errorf("the relay that forwarded the stream gave up on it: %w", gone)
	}
	if err != nil {
		log.Debug("forwarded stream refused", "tenant", q.Tenant, "service", q.Header.Service, "request", q.Header.RequestID, "err", err)
		writeAnswer(st, protocol.ReplyFor(err), "")
		st.Close()
		return
	}
	defer t.End()
	charge.Settle(t.Stream)
	if err := writeAnswer(st, protocol.Reply{}, t.Agent); err != nil {
		t.Stream.Close()
		st.Close()
		return
	}
	if len(first) > 0 {
		if _, err := t.Stream.Write(first); err != nil {
			transport.Abort(t.Stream)
			transport.Abort(st)
			return
		}
	}
	transport.Splice(st, t.Stream, s.cfg.IdleTimeout)
}

// maxFirstBytes bounds what watchOpening keeps of the bytes that follow a
// request: the client's first bytes an entry relay sends with it, at most
// 16 KiB (frontdoor's maxEarly). Past it, the watch stops reading.
const maxFirstBytes = 64 << 10

// opening watches a forwarded stream while it opens on an agent.
type opening struct {
	st       transport.Stream
	done     chan struct{}
	stopping atomic.Bool
	first    []byte // what followed the request
	gone     error  // why the stream ended under the watch, nil if it did not
}

// watchOpening reads st (past its request) until stop, keeping what it
// reads, and calls cancel if the stream ends with an error meanwhile: the
// entry relay reset it, or the link was lost. Its end (the client's
// CloseWrite) is not one.
func watchOpening(st transport.Stream, cancel context.CancelFunc) *opening {
	o := &opening{st: st, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		var b [4096]byte
		for len(o.first) < maxFirstBytes {
			n, err := st.Read(b[:min(len(b), maxFirstBytes-len(o.first))])
			o.first = append(o.first, b[:n]...)
			if err != nil {
				if !errors.Is(err, io.EOF) && !o.stopping.Load() {
					o.gone = err
					cancel()
				}
				return
			}
		}
	}()
	return o
}

// stop ends the watch and returns what followed the request, and why the
// stream ended meanwhile (nil: it did not).
func (o *opening) stop() ([]byte, error) {
	o.stopping.Store(true)
	o.st.SetDeadline(time.Now()) // wakes the read
	<-o.done
	o.st.SetDeadline(time.Time{})
	return o.first, o.gone
}
