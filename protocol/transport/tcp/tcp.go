// Package tcp adapts TLS 1.3 over TCP, multiplexed with hashicorp/yamux, to
// the transport contract. It is the fallback for networks that block UDP.
//
// yamux itself has no call to reset a stream (closing one sends FIN), and
// it ends the streams of a closed session as if each had been closed
// cleanly. The adapter supplies both, as QUIC has them: Stream.Abort
// resets a stream with yamux's RST frame (see reset.go), so that the peer's
// reads and writes fail rather than it reading a clean end; and a stream
// whose session has ended reads an error wrapping transport.ErrClosed, not
// io.EOF, so that a tunnel cut by a lost or closed session is never taken
// for a complete one.
package tcp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tetherhq/tether/protocol/transport"
)

// Config returns the yamux settings shared by agent and relay. Every
// unbounded yamux default is set deliberately.
func Config(logger *slog.Logger) *yamux.Config {
	c := yamux.DefaultConfig()
	c.AcceptBacklog = 1024
	// Tether's own heartbeats on the control stream detect a dead peer;
	// yamux's would cost every session another goroutine and timer.
	c.EnableKeepAlive = false
	c.ConnectionWriteTimeout = 10 * time.Second
	c.MaxStreamWindowSize = 1 << 20
	c.StreamOpenTimeout = 10 * time.Second
	// A stream we half-closed may legitimately keep receiving for a long time
	// (an upload finished, the download continues); yamux would reset it after
	// StreamCloseTimeout regardless of activity. Idle streams are closed by
	// transport.Splice instead.
	c.StreamCloseTimeout = 0
	// A stream closed both ways (Stream.Close) keeps no data (CloseRead),
	// but stays in the session until the peer closes its side too: a peer
	// that never does gets a reset after ClosedStreamTimeout, and the
	// stream is forgotten.
	c.ClosedStreamTimeout = ClosedStreamTimeout
	c.LogOutput = nil
	c.Logger = yamuxLogger{logger}
	return c
}

// ClosedStreamTimeout is how long a stream closed with Stream.Close waits
// for the peer's FIN before it is reset (yamux's Config.ClosedStreamTimeout).
// A peer that read a refusal and closes its side takes a round trip.
const ClosedStreamTimeout = 5 * time.Second

// RelayConfig is Config for the relay's end of an agent session. Agents
// open exactly one stream, the control stream; the relay opens all the
// others and never accepts another. The backlog holds the control stream
// until it is accepted; streams an agent opens after it wait unread — at
// most relayBacklog of them, each bounded by yamux's initial 256 KiB
// receive window, so 4 MiB for an agent that misbehaves — and any further
// ones are reset. Nothing reads them, so an agent cannot send the relay a
// stream header to act on.
//
// yamux sizes by the same number its bound on streams this end has opened
// that the peer has not yet acknowledged. With a backlog of one, every
// stream open waited for the agent to acknowledge the one before it (a
// round trip through both processes), which capped stream opens per
// agent connection; relayBacklog lets that many opens overlap.
func RelayConfig(logger *slog.Logger) *yamux.Config {
	c := Config(logger)
	c.AcceptBacklog = relayBacklog
	return c
}

// relayBacklog is the relay's yamux accept backlog; see RelayConfig.
const relayBacklog = 16

// Session is a transport.Session over one yamux session on a TLS connection.
type Session struct {
	mux  *yamux.Session
	conn net.Conn
	rec  *recordingConn
	tap  *frameTap
}

// recordingConn keeps the first read error of the connection under yamux,
// which yamux itself reports only as a closed session. It is how a TLS
// alert from the peer (a refused certificate) reaches the caller. It also
// counts the reads that returned data (Session.Reads).
type recordingConn struct {
	net.Conn
	reads atomic.Uint64
	mu    sync.Mutex // guards err
	err   error
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.reads.Add(1)
	}
	if err != nil {
		c.mu.Lock()
		if c.err == nil {
			c.err = err
		}
		c.mu.Unlock()
	}
	return n, err
}

func (c *recordingConn) firstErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func newSession(conn net.Conn, cfg *yamux.Config, client bool) (*Session, error) {
	if cfg == nil {
		cfg = Config(nil)
	}
	under := conn
	if tc, ok := conn.(*tls.Conn); ok {
		under = batching(tc)
	}
	tap := &frameTap{Conn: under, writeTimeout: cfg.ConnectionWriteTimeout}
	rec := &recordingConn{Conn: tap}
	start, role := yamux.Server, "server"
	if client {
		start, role = yamux.Client, "client"
	}
	m, err := start(rec, cfg)
	if err != nil {
		return nil, fmt.Errorf("start yamux %s: %w", role, err)
	}
	return &Session{mux: m, conn: conn, rec: rec, tap: tap}, nil
}

// Err returns why the session ended — the underlying connection's error
// when there was one — or nil while it is open.
func (s *Session) Err() error {
	if !s.mux.IsClosed() {
		return nil
	}
	if err := s.rec.firstErr(); err != nil && err != io.EOF {
		return err
	}
	return transport.ErrClosed
}

// Client starts the client (agent) side of a session on an established
// connection. cfg nil means Config(nil).
func Client(conn net.Conn, cfg *yamux.Config) (*Session, error) {
	return newSession(conn, cfg, true)
}

// Server starts the server (relay) side of a session.
func Server(conn net.Conn, cfg *yamux.Config) (*Session, error) {
	return newSession(conn, cfg, false)
}

// Dial connects to addr over TCP, completes the TLS handshake and starts a
// client session. dial may be nil (a net.Dialer with TCP keep-alive is used).
func Dial(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr string, tlsConf *tls.Config, cfg *yamux.Config) (*Session, error) {
	if dial == nil {
		d := &net.Dialer{KeepAlive: 15 * time.Second}
		dial = d.DialContext
	}
	raw, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(NewRawConn(raw), tlsConf)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	s, err := Client(tc, cfg)
	if err != nil {
		tc.Close()
		return nil, err
	}
	return s, nil
}

// OpenStream implements transport.Session.
func (s *Session) OpenStream(ctx context.Context) (transport.Stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st, err := s.mux.OpenStream()
	if err != nil {
		return nil, s.wrap("open stream", err)
	}
	return &Stream{Stream: st, sess: s}, nil
}

// AcceptStream implements transport.Session.
func (s *Session) AcceptStream(ctx context.Context) (transport.Stream, error) {
	st, err := s.mux.AcceptStreamWithContext(ctx)
	if err != nil {
		return nil, s.wrap("accept stream", err)
	}
	return &Stream{Stream: st, sess: s}, nil
}

// Abort closes the session at once, for a peer deemed dead: the TCP
// connection first, without the TLS close_notify Close sends, which could
// only wait (up to its 5 s deadline) for a peer that no longer reads.
func (s *Session) Abort() error {
	if tc, ok := s.conn.(*tls.Conn); ok {
		tc.NetConn().Close()
	}
	return s.Close()
}

// Close closes the session and its connection; open streams fail (their
// reads and writes return errors wrapping transport.ErrClosed).
func (s *Session) Close() error {
	err := s.mux.Close()
	s.conn.Close()
	return err
}

// Done implements transport.Session.
func (s *Session) Done() <-chan struct{} { return s.mux.CloseChan() }

// ConnectionState returns the TLS state when the connection is TLS.
func (s *Session) ConnectionState() tls.ConnectionState {
	if tc, ok := s.conn.(*tls.Conn); ok {
		return tc.ConnectionState()
	}
	return tls.ConnectionState{}
}

// RemoteAddr returns the peer's address.
func (s *Session) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// Reads counts the reads of the connection under the session that returned
// data: it moves whenever the peer sends anything at all (a frame of any
// stream, a window update), so a peer busy sending data is seen alive while
// its answer on one stream waits behind that data.
func (s *Session) Reads() uint64 { return s.rec.reads.Load() }

// Ping sends yamux's ping and waits for the peer's answer, up to the
// session's ConnectionWriteTimeout; it returns the round trip.
func (s *Session) Ping() (time.Duration, error) {
	d, err := s.mux.Ping()
	if err != nil {
		return 0, s.wrap("ping", err)
	}
	return d, nil
}

// NumStreams is the number of streams currently open.
func (s *Session) NumStreams() int { return s.mux.NumStreams() }

func (s *Session) wrap(op string, err error) error {
	if s.mux.IsClosed() {
		return fmt.Errorf("%s: %w: %w", op, transport.ErrClosed, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Stream is a transport.Stream over one yamux stream.
type Stream struct {
	*yamux.Stream
	sess      *Session
	closed    atomic.Bool // Close or Abort was called
	peerReset atomic.Bool // a read or write found the stream reset by the peer
}

// Read reads from the stream. After the peer's CloseWrite it returns io.EOF;
// when the session ended first, an error wrapping transport.ErrClosed.
func (s *Stream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	if err != nil {
		err = s.streamErr("read", err)
	}
	return n, err
}

// ReadDirect is Read that lets the session's receive loop write small
// messages to w itself meanwhile (transport.DirectReader).
func (s *Stream) ReadDirect(p []byte, w transport.TryWriter) (int, error) {
	n, err := s.Stream.ReadDirect(p, w)
	if err != nil {
		err = s.streamErr("read", err)
	}
	return n, err
}

// Write writes to the stream.
func (s *Stream) Write(p []byte) (int, error) {
	n, err := s.Stream.Write(p)
	if err != nil {
		err = s.streamErr("write", err)
	}
	return n, err
}

// streamErr turns yamux's errors into the contract's: yamux ends the
// streams of a session that closed or failed with io.EOF, as if the peer
// had finished cleanly; such a stream was cut, and says so.
func (s *Stream) streamErr(op string, err error) error {
	switch {
	case err == io.EOF && s.sess.mux.IsClosed():
		return fmt.Errorf("%s: stream cut: %w", op, transport.ErrClosed)
	case errors.Is(err, yamux.ErrConnectionReset):
		s.peerReset.Store(true)
	case errors.Is(err, yamux.ErrSessionShutdown):
		return fmt.Errorf("%s: %w: %w", op, transport.ErrClosed, err)
	}
	return err
}

// CloseWrite sends FIN; reading continues until the peer's FIN.
func (s *Stream) CloseWrite() error { return s.Stream.Close() }

// Close releases the stream: pending reads and writes return at once and a
// FIN is sent if CloseWrite was not called. What the peer sent that was not
// read is dropped, and what it sends from then on is discarded (it can send
// at most what is left of the stream's receive window); a peer that has not
// closed its side within ClosedStreamTimeout gets a reset, and both sessions
// forget the stream. To end the stream with a reset at once, call Abort.
func (s *Stream) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	_ = s.Stream.SetDeadline(time.Now())
	_ = s.Stream.CloseRead()
	return s.Stream.Close()
}

// Abort resets the stream (transport.Aborter): pending reads and writes
// return at once, data not yet delivered is dropped, and the peer's reads
// and writes on the stream fail with yamux.ErrConnectionReset instead of
// it reading a clean end — also after CloseWrite. Both sessions forget
// the stream. After Close, Abort does nothing.
func (s *Stream) Abort() error {
	if s.closed.Swap(true) {
		return nil
	}
	_ = s.Stream.SetDeadline(time.Now())
	if !s.peerReset.Load() { // else both ends have forgotten it already
		s.sess.tap.reset(s.Stream.StreamID())
	}
	return nil
}

type yamuxLogger struct{ l *slog.Logger }

func (y yamuxLogger) Print(v ...any) {
	if y.l != nil {
		y.l.Debug(fmt.Sprint(v...), "component", "yamux")
	}
}

func (y yamuxLogger) Printf(format string, v ...any) {
	if y.l != nil {
		y.l.Debug(fmt.Sprintf(format, v...), "component", "yamux")
	}
}

func (y yamuxLogger) Println(v ...any) { y.Print(v...) }
