package tcp

import (
	"crypto/tls"
	"encoding/binary"
	"net"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol/transport"
)

// Left alone, a yamux session over TLS makes many small system calls: yamux
// writes each frame's 12-byte header and its body separately, and crypto/tls
// writes each record (at most 16 KiB) with its own write. A 64 KiB frame
// thus costs six writes to the socket. Coalescing them into one write is
// the biggest single saving on the TCP transport's CPU per byte.
//
// The work is split in two layers:
//   - RawConn sits under TLS and, while a batch is open, collects TLS's
//     record writes into one buffer that it flushes with one write;
//   - frameConn sits between yamux and TLS. It recognises a data-frame
//     header (whose body yamux writes next) and opens a batch that spans the
//     header and its body. A body that fits one TLS record with its header
//     goes out with it in one record: a small message then costs the
//     sender one seal and the receiver one open, not two of each.
//
// Opening a stream costs yamux a frame of its own: the opener sends a
// window update flagged SYN before the stream's first data, and the
// acceptor one flagged ACK before its first answer. Each would be a socket
// write and a wake-up of the peer, though the data follows at once (the
// relay's stream header after its SYN; the agent's reply after its ACK,
// once it has dialled the service). frameConn holds such a frame in the
// open batch so that it goes out with the next frame, for at most holdMax;
// a timer then flushes it alone.
//
// Reads are the mirror image: crypto/tls reads the socket a record or so at
// a time. While data streams in (a read fills what TLS asked for), RawConn
// reads up to readChunk at once into a pooled buffer and serves TLS from it.
//
// Buffers come from pools and are held only while a batch is open or read
// data waits, so an idle session keeps none.

// yamux frame header layout (see github.com/hashicorp/yamux const.go):
// version(1) type(1) flags(2) stream id(4) length(4).
const (
	yamuxHeaderSize       = 12
	yamuxTypeData         = 0
	yamuxTypeWindowUpdate = 1
	yamuxFlagSYN          = 1
	yamuxFlagACK          = 2
	yamuxFlagFIN          = 4
	yamuxFlagRST          = 8
)

// holdMax bounds how long a stream's SYN or ACK waits for the frame that
// usually follows it.
const holdMax = 500 * time.Microsecond

// maxPooledBatch is the largest batch buffer kept for reuse: a data frame
// is at most the stream window (Config's MaxStreamWindowSize) plus TLS
// overhead.
const maxPooledBatch = 2 << 20

var batchPool = sync.Pool{New: func() any {
	b := make([]byte, 0, 128<<10)
	return &b
}}

// readChunk is the size of a bulk read from the socket.
const readChunk = 128 << 10

var readPool = sync.Pool{New: func() any {
	b := make([]byte, readChunk)
	return &b
}}

// RawConn wraps the TCP connection under TLS so that a session can batch
// TLS records into one write. Use it on both sides before tls.Client or
// tls.Server; a session whose TLS connection is not over a RawConn works
// too, without batching.
type RawConn struct {
	net.Conn

	mu    sync.Mutex // guards batch, buf, held, timer and werr, and is held across batch writes to Conn
	batch bool
	buf   *[]byte
	held  bool        // the batch ends with a frame waiting for company
	timer *time.Timer // flushes a held batch after holdMax
	werr  error       // the first failed write of a batch: every write after it fails with it
	// holdFor is how long a frame is held; 0 means holdMax. Tests set it.
	holdFor time.Duration

	// Read state, used only by Read; crypto/tls never reads concurrently.
	bulk bool    // the last read filled its buffer: more is likely waiting
	rbuf *[]byte // pooled read buffer while it holds unread data
	rd   []byte  // the unread data in rbuf
}

// Read serves p from data read ahead, or reads the socket: straight into p
// while traffic is light, through a large pooled buffer while it streams.
func (c *RawConn) Read(p []byte) (int, error) {
	if len(c.rd) > 0 {
		n := copy(p, c.rd)
		c.rd = c.rd[n:]
		if len(c.rd) == 0 {
			readPool.Put(c.rbuf)
			c.rbuf, c.rd = nil, nil
		}
		return n, nil
	}
	if !c.bulk || len(p) >= readChunk {
		n, err := c.Conn.Read(p)
		c.bulk = n == len(p)
		return n, err
	}
	bp := readPool.Get().(*[]byte)
	n, err := c.Conn.Read(*bp)
	c.bulk = n == len(*bp) || n > 2*len(p)
	m := copy(p, (*bp)[:n])
	if m < n {
		c.rbuf, c.rd = bp, (*bp)[m:n]
	} else {
		readPool.Put(bp)
	}
	return m, err
}

// NewRawConn wraps c. Until a session starts a batch it passes every call
// straight through. A TCP connection is read and written with raw system
// calls (transport.Direct).
func NewRawConn(c net.Conn) *RawConn { return &RawConn{Conn: transport.Direct(c)} }

// Write buffers p while a batch is open and writes it through otherwise.
func (c *RawConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.batch {
		*c.buf = append(*c.buf, p...)
		c.mu.Unlock()
		return len(p), nil
	}
	if err := c.werr; err != nil {
		c.mu.Unlock()
		return 0, err
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// begin opens a batch, or continues one that holds a frame.
func (c *RawConn) begin() {
	c.mu.Lock()
	if !c.batch {
		c.batch = true
		c.buf = batchPool.Get().(*[]byte)
	}
	c.held = false
	c.mu.Unlock()
}

// hold keeps the batch open after a complete frame, for the next frame to
// join it; after holdMax it is written alone.
func (c *RawConn) hold() {
	c.mu.Lock()
	c.held = true
	d := c.holdFor
	if d == 0 {
		d = holdMax
	}
	if c.timer == nil {
		c.timer = time.AfterFunc(d, c.flushHeld)
	} else {
		c.timer.Reset(d)
	}
	c.mu.Unlock()
}

// flushHeld writes a batch that still holds a frame when its time is up.
// A batch in which another frame has begun is left to that frame's flush.
func (c *RawConn) flushHeld() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.batch || !c.held {
		return
	}
	c.endLocked()
}

// flush ends the batch with one write of everything collected.
func (c *RawConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.batch {
		return c.werr // a held batch went out on its own
	}
	return c.endLocked()
}

// endLocked writes the batch and closes it. A batch holds TLS records
// whose sequence numbers are spent: once one failed to go out (whole or
// in part), no later record may, or the peer would read it out of
// sequence and fail the connection with a misleading error. So the
// first failure is kept and returned for every batch and write after it.
func (c *RawConn) endLocked() error {
	buf := c.buf
	c.batch, c.held, c.buf = false, false, nil
	err := c.werr
	if err == nil {
		if _, err = c.Conn.Write(*buf); err != nil {
			c.werr = err
		}
	}
	if cap(*buf) <= maxPooledBatch {
		*buf = (*buf)[:0]
		batchPool.Put(buf)
	}
	return err
}

// maxRecord is the most plaintext crypto/tls puts in one record.
const maxRecord = 16 << 10

var recordPool = sync.Pool{New: func() any {
	b := make([]byte, 0, maxRecord)
	return &b
}}

// frameConn is the connection yamux writes frames to: a TLS connection over
// a RawConn. Only yamux's send loop writes to it, one call at a time.
type frameConn struct {
	*tls.Conn
	raw     *RawConn
	pending bool                  // a data-frame header opened a batch its body must close
	hdr     [yamuxHeaderSize]byte // that header, not yet written
}

// batching returns the connection yamux should use over tc: tc itself when
// it does not run over a RawConn.
func batching(tc *tls.Conn) net.Conn {
	raw, ok := tc.NetConn().(*RawConn)
	if !ok {
		return tc
	}
	return &frameConn{Conn: tc, raw: raw}
}

func (c *frameConn) Write(p []byte) (int, error) {
	if c.pending {
		// The body of the frame whose header opened the batch.
		c.pending = false
		n, err := c.writeFrame(p)
		if ferr := c.raw.flush(); err == nil {
			err = ferr
		}
		return n, err
	}
	c.raw.begin()
	if len(p) == yamuxHeaderSize && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:12]) > 0 {
		// A data frame's header: yamux writes its body next. Hold the
		// header to send it with the body.
		copy(c.hdr[:], p)
		c.pending = true
		return len(p), nil
	}
	n, err := c.Conn.Write(p)
	if err == nil && opening(p) {
		c.raw.hold()
		return n, nil
	}
	if ferr := c.raw.flush(); err == nil {
		err = ferr
	}
	return n, err
}

// opening reports whether p is a window update that opens or accepts a
// stream (flagged SYN or ACK, not FIN or RST): the stream's data usually
// follows at once.
func opening(p []byte) bool {
	if len(p) != yamuxHeaderSize || p[1] != yamuxTypeWindowUpdate {
		return false
	}
	f := binary.BigEndian.Uint16(p[2:4])
	return f&(yamuxFlagSYN|yamuxFlagACK) != 0 && f&(yamuxFlagFIN|yamuxFlagRST) == 0
}

// writeFrame writes the held header and its body: with one TLS write when
// they fit one record (crypto/tls makes it one record once a connection
// has warmed up past its first segment-sized records), else the header and
// then the body.
func (c *frameConn) writeFrame(body []byte) (int, error) {
	if len(body) <= maxRecord-yamuxHeaderSize {
		bp := recordPool.Get().(*[]byte)
		rec := append(append((*bp)[:0], c.hdr[:]...), body...)
		_, err := c.Conn.Write(rec)
		*bp = rec[:0]
		recordPool.Put(bp)
		if err != nil {
			return 0, err
		}
		return len(body), nil
	}
	if _, err := c.Conn.Write(c.hdr[:]); err != nil {
		return 0, err
	}
	return c.Conn.Write(body)
}
