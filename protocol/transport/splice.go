package transport

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Splice copies through one of two buffer sizes. A direction starts with a
// small buffer, which is all an interactive stream (a database query and its
// answer) ever needs; when a read fills it, the direction is moving bulk
// data and switches to a large buffer, which cuts the number of reads,
// writes and frames per byte several times over. After a few reads in a row
// that would have fit the small buffer it goes back, so a stream that waits idle does not hold a large
// buffer.
const (
	SmallCopyBuffer = 16 << 10
	LargeCopyBuffer = 256 << 10
)

var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, SmallCopyBuffer); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, LargeCopyBuffer); return &b }}
)

// SpliceResult reports what Splice moved.
type SpliceResult struct {
	AToB int64 // bytes read from a and written to b
	BToA int64 // bytes read from b and written to a
}

// Splice copies between a and b in both directions until both directions are
// finished, then closes both streams.
//
// When one side's reader reaches io.EOF, Splice half-closes the other side
// (CloseWrite) and keeps the opposite direction flowing, so protocols that
// shut down their write side and then wait for an answer work. If either
// direction fails, both streams are closed at once with a reset (abort: a
// stream that is an Aborter is aborted, a TCP connection closed with
// SO_LINGER 0), so that the failure reaches both peers, and the first
// error is returned. If idle > 0 and no byte moves in either direction for
// idle, both streams are closed and ErrIdle is returned.
//
// Splice runs one direction on the calling goroutine and the other on a
// goroutine that has exited by the time Splice returns.
func Splice(a, b Stream, idle time.Duration) (SpliceResult, error) {
	return splice(a, b, idle, nil, nil, 0)
}

// SpliceCounter shows how many bytes a running Splice has moved so far, for
// totals that must include long-lived streams before they end. Each
// direction's copy loop stores its running total after every write (a
// plain atomic store of a value it keeps anyway, with no contention: one
// writer per field).
type SpliceCounter struct {
	AToB atomic.Int64
	BToA atomic.Int64
}

// SpliceCounting is Splice that also keeps c up to date while it runs. When
// it returns, c holds the same totals as the result.
func SpliceCounting(a, b Stream, idle time.Duration, c *SpliceCounter) (SpliceResult, error) {
	return splice(a, b, idle, c, nil, 0)
}

// SpliceOptions are the optional parts of a splice. The zero value is
// Splice's behaviour.
type SpliceOptions struct {
	// Idle closes both streams when no byte has moved for this long
	// (ErrIdle); 0 means never.
	Idle time.Duration
	// Counter, if not nil, is kept up to date as in SpliceCounting.
	Counter *SpliceCounter
	// Gate, if not nil, bounds this splice's bulk copies together with
	// those of every other splice given the same gate (CopyGate).
	Gate *CopyGate
	// Early is how many bytes of a the caller has already written to b
	// before the splice (a's first bytes sent with b's opening): they are
	// counted in AToB, in the result and the Counter, from the start.
	Early int64
}

// SpliceWith is Splice with options.
func SpliceWith(a, b Stream, o SpliceOptions) (SpliceResult, error) {
	return splice(a, b, o.Idle, o.Counter, o.Gate, o.Early)
}

func splice(a, b Stream, idle time.Duration, c *SpliceCounter, gate *CopyGate, early int64) (SpliceResult, error) {
	a, b = directStream(a), directStream(b)
	var aToB, bToA *atomic.Int64
	if c != nil {
		aToB, bToA = &c.AToB, &c.BToA
		aToB.Store(early)
	}
	var res SpliceResult
	act := activity{base: time.Now()}
	act.touch()

	var once sync.Once
	var firstErr error
	abort := func(err error) {
		once.Do(func() {
			firstErr = err
			Abort(a)
			Abort(b)
		})
	}

	if idle > 0 {
		w := &idleWatch{act: &act, idle: idle, fire: func() { abort(ErrIdle) }}
		w.start()
		defer w.stop()
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		var err error
		res.AToB, err = copyHalf(b, a, &act, aToB, gate, early)
		if err != nil {
			abort(err)
		}
	}()
	var err error
	res.BToA, err = copyHalf(a, b, &act, bToA, gate, 0)
	if err != nil {
		abort(err)
	}
	<-done // orders the goroutine's write of res.AToB before our read

	// Both directions finished (or were aborted): release both streams. In
	// the clean case both write halves are already closed, so this only
	// frees resources.
	once.Do(func() {}) // a late idle abort can no longer set firstErr; orders any earlier write before the read below
	_ = a.Close()
	_ = b.Close()
	return res, firstErr
}

// directStream gives a TCP connection raw-system-call I/O (see Direct).
func directStream(s Stream) Stream {
	if tc, ok := s.(*net.TCPConn); ok {
		if d, ok := Direct(tc).(Stream); ok {
			return d
		}
	}
	return s
}

// copyHalf copies src to dst and half-closes dst when src ends cleanly.
// Its total starts at from (bytes the caller sent before). When counter is
// not nil, it holds the running total after each write.
// When gate is not nil, every write from the large buffer (bulk) holds a
// slot of it; writes from the small buffer never wait for one.
func copyHalf(dst, src Stream, act *activity, counter *atomic.Int64, gate *CopyGate, from int64) (int64, error) {
	small := smallBufs.Get().(*[]byte)
	defer smallBufs.Put(small)
	var large *[]byte
	defer func() {
		if large != nil {
			largeBufs.Put(large)
		}
	}()
	var gw *gatedWrite
	if gate != nil {
		gw = &gatedWrite{gate: gate}
		defer gw.stop()
	}
	buf := *small
	// The total is the caller's counter when it has one. The copy loop
	// and, with direct delivery, the session's receive loop both add to
	// it; they take turns (the stream's sink lock), but one atomic sum does
	// not rely on that.
	tot := counter
	if tot == nil {
		tot = new(atomic.Int64)
	}
	tot.Store(from)
	// While the small buffer is in use, a stream that can have its
	// transport deliver small messages straight to dst does (sink).
	var dr DirectReader
	var sink *directSink
	if r, ok := src.(DirectReader); ok {
		if tw, ok := dst.(TryWriter); ok {
			dr, sink = r, &directSink{w: tw, act: act, tot: tot}
		}
	}
	smallReads := 0 // consecutive reads the small buffer would have held
	for {
		var n int
		var rerr error
		if sink != nil && large == nil {
			n, rerr = dr.ReadDirect(buf, sink)
		} else {
			n, rerr = src.Read(buf)
		}
		if n > 0 {
			act.touch()
			var w int
			var werr error
			if gw != nil && large != nil {
				w, werr = gw.write(dst, buf[:n])
			} else {
				w, werr = dst.Write(buf[:n])
			}
			tot.Add(int64(w))
			if werr != nil {
				return tot.Load(), werr
			}
			if w != n {
				return tot.Load(), io.ErrShortWrite
			}
		}
		if rerr == io.EOF {
			return tot.Load(), dst.CloseWrite()
		}
		if rerr != nil {
			return tot.Load(), rerr
		}
		// Pick the buffer for the next read: large after a read that
		// filled the small one, small again after several reads in a row
		// that the small one would have held.
		if n < SmallCopyBuffer {
			smallReads++
		} else {
			smallReads = 0
		}
		switch {
		case large == nil && n == len(buf):
			large = largeBufs.Get().(*[]byte)
			buf = *large
		case large != nil && smallReads >= 4:
			largeBufs.Put(large)
			large = nil
			buf = *small
		}
	}
}

// directSink is a splice's destination as a stream's transport writes to
// it directly (DirectReader): it counts the bytes and the activity as the
// copy loop does.
type directSink struct {
	w   TryWriter
	act *activity
	tot *atomic.Int64
}

func (s *directSink) TryWrite(p []byte) (int, error) {
	n, err := s.w.TryWrite(p)
	if n > 0 {
		s.act.touch()
		s.tot.Add(int64(n))
	}
	return n, err
}

// Abort closes s without a clean end: a stream of a Session is reset
// (Aborter), a TCP connection gets a reset rather than a FIN, so a
// truncated transfer is never mistaken for a complete one.
func Abort(s Stream) {
	if a, ok := s.(Aborter); ok {
		_ = a.Abort()
		return
	}
	if c, ok := s.(net.Conn); ok {
		Reset(c)
		return
	}
	_ = s.Close()
}

// Reset closes c with a TCP reset rather than a FIN, so that its peer
// never takes what it received for the whole of it: over TLS, the TCP
// connection under it, with no close_notify (the record layer is left
// alone). Any other connection is closed.
func Reset(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		_ = l.SetLinger(0)
	}
	_ = c.Close()
}

// activity is the time of the last byte moved, as an offset from base.
// Offsets come from base's monotonic clock reading, so a step of the wall
// clock neither fires the idle timeout nor postpones it.
type activity struct {
	base time.Time
	last atomic.Int64 // time.Since(base) at the last byte, in nanoseconds
}

func (a *activity) touch()               { a.last.Store(int64(time.Since(a.base))) }
func (a *activity) since() time.Duration { return time.Since(a.base) - time.Duration(a.last.Load()) }

// idleWatch fires once when act has not been touched for idle. It uses one
// timer, re-armed at most once per idle period, instead of resetting a timer
// on every read.
type idleWatch struct {
	act  *activity
	idle time.Duration
	fire func()

	mu      sync.Mutex // guards t and stopped
	t       *time.Timer
	stopped bool
}

func (w *idleWatch) start() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t = time.AfterFunc(w.idle, w.check)
}

func (w *idleWatch) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	if s := w.act.since(); s < w.idle {
		w.t.Reset(w.idle - s)
		return
	}
	w.stopped = true
	// fire only closes streams, which never calls back into w, so holding mu
	// here is safe and lets stop wait for a firing in progress.
	w.fire()
}

func (w *idleWatch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	w.t.Stop()
}

// IsClosedErr reports whether err is the ordinary result of a stream or
// connection having been closed, as opposed to a failure worth logging.
func IsClosedErr(err error) bool {
	return err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, ErrClosed)
}
