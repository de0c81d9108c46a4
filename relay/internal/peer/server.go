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
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/tcp"
	"github.com/tetherhq/tether/relay/internal/route"
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

// ServerConfig configures the holding side of links.
type ServerConfig struct {
	// Listen is the relay-to-relay listener's address.
	Listen string
	TLS    *trust.Peer
	// Router opens streams on this relay's own agents (DialLocal).
	Router *route.Router
	// HandshakeTimeout bounds a link's TLS handshake and a stream's
	// request; IdleTimeout closes forwarded streams idle both ways.
	HandshakeTimeout, IdleTimeout time.Duration
	Logger                        *slog.Logger
}

// Server accepts links from peer relays and serves their streams.
type Server struct {
	cfg ServerConfig
	log *slog.Logger
	ln  net.Listener

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
	return &Server{cfg: cfg, log: cfg.Logger, ln: ln, links: map[*tcp.Session]string{}}, nil
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
		s.wg.Go(func() { s.serveLink(ctx, c) })
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

func (s *Server) serveLink(ctx context.Context, c net.Conn) {
	tc := tls.Server(tcp.NewRawConn(c), s.cfg.TLS.Listener())
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.log.Warn("relay-to-relay link refused", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
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
	st.SetDeadline(time.Time{})
	t, err := s.cfg.Router.DialLocal(ctx, q.Tenant, q.Header)
	if err != nil {
		log.Debug("forwarded stream refused", "tenant", q.Tenant, "service", q.Header.Service, "request", q.Header.RequestID, "err", err)
		writeAnswer(st, protocol.ReplyFor(err), "")
		st.Close()
		return
	}
	defer t.End()
	if err := writeAnswer(st, protocol.Reply{}, t.Agent); err != nil {
		t.Stream.Close()
		st.Close()
		return
	}
	transport.Splice(st, t.Stream, s.cfg.IdleTimeout)
}
