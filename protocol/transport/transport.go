// Package transport is the contract between Tether's tunnel logic and the
// transports that carry it (QUIC, and TLS over TCP with yamux). Nothing above
// this interface knows which transport carries a stream.
package transport

import (
	"context"
	"errors"
	"io"
	"time"
)

// Session is one authenticated connection between an agent and a relay that
// carries many independent streams.
//
// Lifetime: a Session is done when either side closes it or the underlying
// connection fails; Done is then closed and every method returns an error
// wrapping ErrClosed (or the transport's own cause). Close is idempotent and
// aborts streams that are still open: on both sides, their pending and
// later reads and writes fail with an error, never a clean io.EOF, so a
// stream cut short is not taken for a complete one.
//
// The streams a Session opens and accepts also implement Aborter.
type Session interface {
	// OpenStream opens a new stream to the peer. It blocks while the peer's
	// stream limit is reached, until ctx is done.
	OpenStream(ctx context.Context) (Stream, error)
	// AcceptStream waits for the next stream the peer opens.
	AcceptStream(ctx context.Context) (Stream, error)
	Close() error
	Done() <-chan struct{}
}

// Stream is one bidirectional byte stream inside a Session. A *net.TCPConn
// satisfies it too, so the same code can splice a stream to a socket.
//
//   - CloseWrite ends the write direction cleanly: the peer reads io.EOF
//     after all data written before it. Reading continues.
//   - Close releases the stream in both directions at once. If CloseWrite was
//     not called first, the write direction is aborted: data not yet
//     delivered may be discarded and, where the transport can signal it
//     (QUIC), the peer sees an error rather than a clean EOF; Abort
//     (Aborter) makes sure of that on every transport. To send a last
//     message and finish, call CloseWrite and then Close.
//   - SetDeadline applies to pending and future Read and Write calls.
type Stream interface {
	io.ReadWriteCloser
	CloseWrite() error
	SetDeadline(t time.Time) error
}

// Aborter is a stream that can be reset: Abort releases it in both
// directions at once, like Close, and makes the peer's reads and writes on
// it fail — whether or not CloseWrite was called — where Close may end the
// peer's reading cleanly. Data not yet delivered may be discarded. It is
// how a relay or agent passes on that the far end of a tunnel failed (a
// service reset its connection): QUIC sends RESET_STREAM and
// STOP_SENDING, yamux its RST frame. After Close, Abort does nothing.
type Aborter interface {
	Abort() error
}

// TryWriter is a destination that can be written without waiting: a TCP
// connection with raw-system-call I/O (Direct) on Linux.
type TryWriter interface {
	// TryWrite writes what it can of p now; n < len(p) with a nil error
	// means it could take no more without waiting.
	TryWrite(p []byte) (n int, err error)
}

// DirectReader is a stream whose transport can write small messages that
// arrive on it to their destination itself, from the goroutine that reads
// the connection, instead of waking the stream's reader for each: a
// stream of a TCP session (yamux). Splice uses it when the destination is
// a TryWriter. ReadDirect is Read for a caller that writes what it reads to
// w and nothing else, before calling it again; bytes written to w meanwhile
// were written with TryWrite.
type DirectReader interface {
	ReadDirect(p []byte, w TryWriter) (int, error)
}

// ErrClosed is returned (wrapped) by a Session that has been closed.
var ErrClosed = errors.New("transport: session closed")

// ErrIdle is returned by Splice when the idle timeout closed the streams.
var ErrIdle = errors.New("stream idle timeout")
