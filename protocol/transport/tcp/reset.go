package tcp

import (
	"encoding/binary"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Resetting a stream.
//
// hashicorp/yamux (v0.1) has no call that resets a stream: Stream.Close
// sends FIN, which the peer reads as a clean end of that direction. The
// yamux protocol has a reset all the same — a window-update frame flagged
// RST, which yamux sends itself when its accept backlog overflows — and
// every yamux peer, old Tether relays and agents included, handles it: the
// peer marks the stream reset, forgets it, and its reads and writes on it
// fail with yamux.ErrConnectionReset.
//
// A frameTap, under the yamux session, lets Stream.Abort use it:
//
//   - Towards the peer, it writes the RST frame into the byte stream yamux
//     writes, between two of yamux's frames. It keeps track of where each
//     frame that yamux writes ends, and holds the RST until yamux is
//     between frames.
//   - The local yamux session must forget the stream too, or it would
//     keep it (and up to a window of data for it) until the session ends:
//     it forgets a stream when the peer resets it. So the tap also hands
//     yamux, in the byte stream it reads, the same RST frame as if the
//     peer had sent it, again between two of the peer's frames.
//   - yamux reads only when bytes arrive; after an abort on a quiet
//     session that may be a while. The tap therefore sends a yamux ping
//     after the RST: the peer answers it at once (an unknown ping id is
//     ignored), and the answer brings the local RST its turn.
//
// Both byte streams are parsed as they pass: a 12-byte header, followed,
// for a data frame only, by as many bytes of body as its length says.

// yamuxTypePing is the frame type of yamux pings (see batch.go for the
// others used here).
const yamuxTypePing = 2

// resetPingID is the id of the pings a reset sends. yamux numbers its own
// pings from 0; Tether never sends any (keep-alive is off).
const resetPingID = math.MaxUint32

// frameScanner follows a yamux byte stream to know where frames end.
type frameScanner struct {
	hdr  [yamuxHeaderSize]byte // the current frame's header, as far as seen
	n    int                   // bytes of hdr seen
	body uint32                // bytes of the current frame's body still to come
}

// between reports whether the bytes seen so far end with a whole frame.
func (f *frameScanner) between() bool { return f.n == 0 && f.body == 0 }

// advance follows p, the next bytes of the stream.
func (f *frameScanner) advance(p []byte) {
	for len(p) > 0 {
		if f.body > 0 {
			k := min(uint64(f.body), uint64(len(p)))
			f.body -= uint32(k)
			p = p[k:]
			continue
		}
		k := copy(f.hdr[f.n:], p)
		f.n += k
		p = p[k:]
		if f.n == yamuxHeaderSize {
			f.n = 0
			if f.hdr[1] == yamuxTypeData {
				f.body = binary.BigEndian.Uint32(f.hdr[8:12])
			}
		}
	}
}

// appendFrame appends a yamux frame header (version 0) to b.
func appendFrame(b []byte, typ uint8, flags uint16, stream, length uint32) []byte {
	b = append(b, 0, typ)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint32(b, stream)
	return binary.BigEndian.AppendUint32(b, length)
}

// frameTap is the connection a yamux session runs on: it passes reads and
// writes through to Conn and adds the frames of resets between yamux's
// own (see above).
type frameTap struct {
	net.Conn
	// writeTimeout is yamux's ConnectionWriteTimeout. yamux sets the
	// connection's write deadline before its own writes only; the frames
	// a kick writes while yamux is not writing get one of their own, or
	// they would meet whatever deadline yamux set last, long past on a
	// quiet session (see kick).
	writeTimeout time.Duration

	wmu sync.Mutex   // held across every write to Conn; guards out
	out frameScanner // the byte stream written to Conn

	qmu     sync.Mutex  // guards outQ and inQ
	outQ    []byte      // frames to write at the next frame boundary
	inQ     []byte      // frames to hand yamux at the next frame boundary
	outWait atomic.Bool // outQ is not empty
	inWait  atomic.Bool // inQ is not empty

	// Used only by Read: yamux has one receive loop.
	in  frameScanner // the byte stream read from Conn
	cur []byte       // the rest of a frame of inQ being read
}

// Write writes p, which is yamux's, then the frames of resets asked for
// meanwhile when p ended a frame.
func (c *frameTap) Write(p []byte) (int, error) {
	c.wmu.Lock()
	n, err := c.Conn.Write(p)
	c.out.advance(p[:n])
	if err == nil && c.out.between() && c.outWait.Load() {
		err = c.flushLocked()
	}
	c.wmu.Unlock()
	if c.outWait.Load() {
		c.kick() // a reset asked for while this write held wmu
	}
	return n, err
}

// kick writes the queued frames now when nobody is writing and the
// written stream is between frames. Otherwise whoever holds wmu writes
// them: yamux after its current write (Write), or another kick.
//
// Its write is yamux's to time: it moves the connection's write deadline
// on to a whole writeTimeout from now first (only ever later than the
// one yamux set, which is at most that far from an earlier now). On a
// session quiet for longer than that, yamux's deadline has passed: the
// write failed at once, after TLS had sealed the frames into a record
// with the next sequence number, and the peer then failed the whole
// connection on the record after it (bad record MAC).
func (c *frameTap) kick() {
	for c.outWait.Load() && c.wmu.TryLock() {
		if !c.out.between() {
			// yamux wrote a data frame's header; the Write of its body
			// flushes.
			c.wmu.Unlock()
			return
		}
		if c.writeTimeout > 0 {
			c.Conn.SetWriteDeadline(time.Now().Add(c.writeTimeout))
		}
		err := c.flushLocked()
		c.wmu.Unlock()
		if err != nil {
			return // the connection failed; yamux finds out on its own
		}
	}
}

// flushLocked writes the queued frames; wmu is held and the written stream
// is between frames.
func (c *frameTap) flushLocked() error {
	c.qmu.Lock()
	q := c.outQ
	c.outQ = nil
	c.outWait.Store(false)
	c.qmu.Unlock()
	if len(q) == 0 {
		return nil
	}
	n, err := c.Conn.Write(q)
	c.out.advance(q[:n])
	return err
}

// Read reads what yamux receives: a queued reset frame when the stream
// read so far ends with a whole frame, else the connection's bytes.
func (c *frameTap) Read(p []byte) (int, error) {
	if len(c.cur) == 0 && c.inWait.Load() && c.in.between() {
		c.qmu.Lock()
		c.cur, c.inQ = c.inQ, nil
		c.inWait.Store(false)
		c.qmu.Unlock()
	}
	if len(c.cur) > 0 {
		// Whole frames of our own: the connection's stream stays where
		// it was.
		n := copy(p, c.cur)
		c.cur = c.cur[n:]
		return n, nil
	}
	n, err := c.Conn.Read(p)
	c.in.advance(p[:n])
	return n, err
}

// reset resets stream id: a RST frame and a ping to the peer, and the same
// RST to the local yamux session.
func (c *frameTap) reset(id uint32) {
	c.qmu.Lock()
	c.outQ = appendFrame(c.outQ, yamuxTypeWindowUpdate, yamuxFlagRST, id, 0)
	c.outQ = appendFrame(c.outQ, yamuxTypePing, yamuxFlagSYN, 0, resetPingID)
	c.outWait.Store(true)
	c.inQ = appendFrame(c.inQ, yamuxTypeWindowUpdate, yamuxFlagRST, id, 0)
	c.inWait.Store(true)
	c.qmu.Unlock()
	c.kick()
}
