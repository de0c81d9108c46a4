// Package quic adapts quic-go to the transport contract: one QUIC connection
// is a Session and every tunnelled connection is a native QUIC stream, so a
// slow stream never blocks the others.
package quic

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/tetherhq/tether/protocol/transport"
)

// Application error codes used when closing connections and streams.
const (
	// CodeNoError closes a connection normally.
	CodeNoError quicgo.ApplicationErrorCode = 0
	// CodeRefused closes a connection the relay refuses (see the Reject
	// message on the control stream for why).
	CodeRefused quicgo.ApplicationErrorCode = 1
	// CodeAbort resets a stream that was abandoned before its clean end.
	CodeAbort quicgo.StreamErrorCode = 1
)

// Config returns the QUIC settings shared by agent and relay.
// maxIncomingStreams is how many streams the peer may have open at once.
func Config(maxIncomingStreams int64) *quicgo.Config {
	return &quicgo.Config{
		HandshakeIdleTimeout: 5 * time.Second,
		MaxIdleTimeout:       30 * time.Second,
		KeepAlivePeriod:      10 * time.Second,
		MaxIncomingStreams:   maxIncomingStreams,
		// No unidirectional streams in protocol version 1.
		MaxIncomingUniStreams: -1,
	}
}

// Session is a transport.Session over one QUIC connection.
type Session struct {
	conn *quicgo.Conn
	// release, for a session that Dial opened, closes the socket and
	// the quic-go transport it dialled from, once the connection has
	// ended.
	release func()
}

// NewSession wraps an established QUIC connection.
func NewSession(conn *quicgo.Conn) *Session { return &Session{conn: conn} }

// Dial opens a QUIC connection to addr, from a UDP socket of its own
// (PacketConn: with receive offload where there is one), and wraps it. The
// socket is closed when the connection ends.
func Dial(ctx context.Context, addr string, tlsConf *tls.Config, conf *quicgo.Config) (*Session, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	// As quic-go's DialAddr: every address, so that the socket reaches
	// IPv4 and IPv6 relays alike.
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		return nil, err
	}
	tr := &quicgo.Transport{Conn: PacketConn(udp)}
	conn, err := tr.Dial(ctx, ua, tlsConf, conf)
	if err != nil {
		tr.Close()
		udp.Close()
		return nil, err
	}
	s := NewSession(conn)
	s.release = sync.OnceFunc(func() {
		tr.Close()
		udp.Close()
	})
	go func() {
		<-conn.Context().Done()
		s.release()
	}()
	return s, nil
}

// OpenStream implements transport.Session.
func (s *Session) OpenStream(ctx context.Context) (transport.Stream, error) {
	st, err := s.conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, s.wrap("open stream", err)
	}
	return &Stream{Stream: st}, nil
}

// AcceptStream implements transport.Session.
func (s *Session) AcceptStream(ctx context.Context) (transport.Stream, error) {
	st, err := s.conn.AcceptStream(ctx)
	if err != nil {
		return nil, s.wrap("accept stream", err)
	}
	return &Stream{Stream: st}, nil
}

// Close closes the connection normally.
func (s *Session) Close() error { return s.CloseWithError(CodeNoError, "") }

// CloseWithError closes the connection with an application error code.
func (s *Session) CloseWithError(code quicgo.ApplicationErrorCode, msg string) error {
	err := s.conn.CloseWithError(code, msg)
	if s.release != nil {
		s.release()
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// Done implements transport.Session.
func (s *Session) Done() <-chan struct{} { return s.conn.Context().Done() }

// Err returns why the session ended, or nil while it is open.
func (s *Session) Err() error {
	select {
	case <-s.Done():
		return context.Cause(s.conn.Context())
	default:
		return nil
	}
}

// ConnectionState returns the TLS state of the connection.
func (s *Session) ConnectionState() tls.ConnectionState { return s.conn.ConnectionState().TLS }

// PacketsReceived is how many packets the connection has received from
// the peer so far, acknowledgements included: a peer whose endpoint is
// alive keeps it moving while its application is slow to answer.
func (s *Session) PacketsReceived() uint64 { return s.conn.ConnectionStats().PacketsReceived }

// RemoteAddr returns the peer's address.
func (s *Session) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

func (s *Session) wrap(op string, err error) error {
	select {
	case <-s.Done():
		return fmt.Errorf("%s: %w: %w", op, transport.ErrClosed, err)
	default:
		return fmt.Errorf("%s: %w", op, err)
	}
}

// Stream is a transport.Stream over one QUIC stream.
type Stream struct {
	*quicgo.Stream
	writeClosed  atomic.Bool
	readCanceled atomic.Bool
}

// CloseWrite sends FIN: the peer reads io.EOF after the data written so far.
func (s *Stream) CloseWrite() error {
	if s.writeClosed.Swap(true) {
		return nil
	}
	return s.Stream.Close()
}

// Abort resets both directions (transport.Aborter): RESET_STREAM for the
// write direction, even after CloseWrite while data is still unacknowledged,
// and STOP_SENDING for the read direction, so the peer's reads and writes
// fail. After Close, Abort does nothing.
func (s *Stream) Abort() error {
	if s.readCanceled.Load() {
		return nil // closed
	}
	s.writeClosed.Store(true)
	s.Stream.CancelWrite(CodeAbort)
	if !s.readCanceled.Swap(true) {
		s.Stream.CancelRead(CodeAbort)
	}
	return nil
}

// Close releases both directions. A write direction that was not closed with
// CloseWrite is reset, so the peer sees an error instead of a clean end.
func (s *Stream) Close() error {
	if !s.writeClosed.Swap(true) {
		s.Stream.CancelWrite(CodeAbort)
	}
	if !s.readCanceled.Swap(true) {
		s.Stream.CancelRead(CodeAbort)
	}
	return nil
}
