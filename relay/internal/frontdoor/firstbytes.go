package frontdoor

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// firstBytes gathers a forward client's first bytes while the stream for
// them opens, and sends them with it (route.Early): a client that speaks
// first (psql's startup, an HTTP request, a TLS ClientHello) has its first
// message at the agent when the agent answers, and at the service as soon
// as the agent has connected to it, instead of one trip through the tunnel
// later. Nothing waits for the client: a service that speaks first is not
// held up. At most maxEarly bytes are gathered; the rest, and everything
// after the stream opened, goes through the splice.
//
// One goroutine reads the client until stop; bytes it reads are written,
// in order, to the stream attached last, and kept to be written whole to
// the next one should that stream fail and the router try another.
type firstBytes struct {
	c    net.Conn
	done chan struct{}

	mu   sync.Mutex // guards the fields below
	buf  []byte     // every byte read so far, at most maxEarly
	st   io.Writer  // the stream attached last; nil once a write to it failed
	sent bool       // bytes went (or began to go) to the stream attached last
	werr error      // the failed write to the stream attached last
	rerr error      // the client's read error (not the end, not stop's deadline)
}

// maxEarly bounds a client's first bytes sent with the stream's opening
// (16 KiB: a TLS record, a request's headers, a database's startup
// message). They pass by the tenant's bandwidth limit, which meters the
// splice that follows; at this size per stream opened, that is immaterial.
const maxEarly = 16 << 10

var earlyBufs = sync.Pool{New: func() any { b := make([]byte, 0, maxEarly); return &b }}

// gatherFirstBytes starts reading c's first bytes; the caller must stop.
func gatherFirstBytes(c net.Conn) *firstBytes {
	f := &firstBytes{c: c, done: make(chan struct{}), buf: (*earlyBufs.Get().(*[]byte))[:0]}
	go f.read()
	return f
}

func (f *firstBytes) read() {
	defer close(f.done)
	for {
		// Only this goroutine extends buf, so it reads into buf's spare
		// room without the lock: Attach reads only the bytes before it.
		f.mu.Lock()
		room := f.buf[len(f.buf):maxEarly]
		f.mu.Unlock()
		if len(room) == 0 {
			return
		}
		n, err := f.c.Read(room)
		f.mu.Lock()
		if n > 0 {
			f.buf = f.buf[:len(f.buf)+n]
			if f.st != nil {
				f.sent = true
				if _, werr := f.st.Write(room[:n]); werr != nil {
					f.st, f.werr = nil, werr
				}
			}
		}
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) {
			f.rerr = err
		}
		f.mu.Unlock()
		if err != nil {
			return // at the end the splice reads the end again; at stop's deadline, stopped
		}
	}
}

// Attach implements route.Early.
func (f *firstBytes) Attach(st io.Writer, opening []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st, f.werr, f.sent = st, nil, len(f.buf) > 0
	_, err := st.Write(append(opening, f.buf...))
	if err != nil {
		f.st, f.werr = nil, err
	}
	return err
}

// Sent implements route.Early.
func (f *firstBytes) Sent() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent
}

// stop ends the gathering and returns how many bytes were gathered (all
// of them written to the stream attached last) and, when the stream that
// opened must not be used, why: the client's connection failed, or a
// write of the bytes to the stream did. Call it once the dial returned.
func (f *firstBytes) stop() (int, error) {
	f.c.SetReadDeadline(time.Unix(1, 0)) // wakes a waiting read
	<-f.done
	f.c.SetReadDeadline(time.Time{})
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.buf)
	b := f.buf
	f.buf, f.st = nil, nil
	earlyBufs.Put(&b)
	if f.rerr != nil {
		return n, f.rerr
	}
	return n, f.werr
}
