package transport_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherhq/tether/protocol/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// hangGuard bounds every wait in these tests. It is never what a test
// measures; it only turns a hang into a failure.
const hangGuard = 20 * time.Second

// *net.TCPConn is a transport.Stream, so Splice can bridge two sockets.
var _ transport.Stream = (*net.TCPConn)(nil)

// tcpPair returns the two ends of one loopback TCP connection.
func tcpPair(t testing.TB) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialed, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	accepted, err = ln.AcceptTCP()
	if err != nil {
		dialed.Close()
		t.Fatal(err)
	}
	return dialed, accepted
}

type spliceReturn struct {
	res transport.SpliceResult
	err error
}

// splice is one running Splice between two loopback connections:
//
//	aPeer <-TCP-> a  [Splice]  b <-TCP-> bPeer
//
// The test drives aPeer and bPeer; Splice owns a and b.
type splice struct {
	aPeer, a, b, bPeer *net.TCPConn
	done               chan spliceReturn
}

func startSplice(t *testing.T, idle time.Duration) *splice {
	t.Helper()
	return startSpliceCounting(t, idle, nil)
}

// startSpliceCounting runs SpliceCounting with counter, or Splice when it
// is nil.
func startSpliceCounting(t *testing.T, idle time.Duration, counter *transport.SpliceCounter) *splice {
	t.Helper()
	return startSpliceFunc(t, nil, func(a, b transport.Stream) (transport.SpliceResult, error) {
		if counter != nil {
			return transport.SpliceCounting(a, b, idle, counter)
		}
		return transport.Splice(a, b, idle)
	})
}

// startSpliceFunc runs run between a and b. When prepare is not nil,
// it is called with the four sockets before the splice starts.
func startSpliceFunc(t *testing.T, prepare func(*splice), run func(a, b transport.Stream) (transport.SpliceResult, error)) *splice {
	t.Helper()
	s := &splice{done: make(chan spliceReturn, 1)}
	s.aPeer, s.a = tcpPair(t)
	s.b, s.bPeer = tcpPair(t)
	for _, c := range []*net.TCPConn{s.aPeer, s.bPeer} {
		_ = c.SetDeadline(time.Now().Add(hangGuard))
	}
	if prepare != nil {
		prepare(s)
	}
	go func() {
		res, err := run(s.a, s.b)
		s.done <- spliceReturn{res, err}
	}()
	t.Cleanup(func() {
		// Closing every socket ends Splice even if a test failed early;
		// then wait for it so no goroutine outlives the test.
		for _, c := range []*net.TCPConn{s.aPeer, s.a, s.b, s.bPeer} {
			c.Close()
		}
		select {
		case r := <-s.done:
			s.done <- r
		case <-time.After(hangGuard):
			t.Error("Splice did not return after every socket was closed")
		}
	})
	return s
}

// wait returns what Splice returned.
func (s *splice) wait(t *testing.T) spliceReturn {
	t.Helper()
	select {
	case r := <-s.done:
		s.done <- r // keep it for Cleanup
		return r
	case <-time.After(hangGuard):
		t.Fatalf("Splice did not return within %v", hangGuard)
		return spliceReturn{}
	}
}

// returned reports whether Splice has returned, without waiting.
func (s *splice) returned() (spliceReturn, bool) {
	select {
	case r := <-s.done:
		s.done <- r
		return r, true
	default:
		return spliceReturn{}, false
	}
}

// checkClosed checks that Splice closed both of its streams.
func (s *splice) checkClosed(t *testing.T) {
	t.Helper()
	for name, c := range map[string]*net.TCPConn{"a": s.a, "b": s.b} {
		if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("writing to %s after Splice returned: got %v, want %v", name, err, net.ErrClosed)
		}
	}
}

// checkReset reads from peer and checks that the connection ended with an
// error (a reset), not a clean EOF that would pass for a complete transfer.
func checkReset(t *testing.T, name string, peer *net.TCPConn) {
	t.Helper()
	_, err := io.Copy(io.Discard, peer)
	if err == nil || errors.Is(err, io.EOF) {
		t.Errorf("%s: got a clean end (%v), want a reset", name, err)
		return
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Logf("%s: ended with %v", name, err)
	}
}

func randomBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

func TestSpliceBothWays(t *testing.T) {
	tests := []struct {
		name       string
		aToB, bToA int
		idle       time.Duration
	}{
		{"nothing", 0, 0, 0},
		{"one byte each way", 1, 1, 0},
		{"a to b only", 100 << 10, 0, 0},
		{"b to a only", 0, 100 << 10, 0},
		{"large both ways", 4 << 20, 3<<20 + 17, 0},
		{"large both ways with an idle timeout", 2 << 20, 1 << 20, time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := startSplice(t, tc.idle)
			toB, toA := randomBytes(tc.aToB, 1), randomBytes(tc.bToA, 2)
			var gotAtA, gotAtB []byte
			var errs [4]error
			var wg sync.WaitGroup
			wg.Go(func() {
				if _, errs[0] = s.aPeer.Write(toB); errs[0] == nil {
					errs[0] = s.aPeer.CloseWrite()
				}
			})
			wg.Go(func() {
				if _, errs[1] = s.bPeer.Write(toA); errs[1] == nil {
					errs[1] = s.bPeer.CloseWrite()
				}
			})
			wg.Go(func() { gotAtA, errs[2] = io.ReadAll(s.aPeer) })
			wg.Go(func() { gotAtB, errs[3] = io.ReadAll(s.bPeer) })
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("peer I/O %d: %v", i, err)
				}
			}
			if !bytes.Equal(gotAtB, toB) {
				t.Errorf("b's peer got %d bytes, want the %d a's peer sent", len(gotAtB), len(toB))
			}
			if !bytes.Equal(gotAtA, toA) {
				t.Errorf("a's peer got %d bytes, want the %d b's peer sent", len(gotAtA), len(toA))
			}
			r := s.wait(t)
			if r.err != nil {
				t.Errorf("Splice got error %v, want nil", r.err)
			}
			if want := (transport.SpliceResult{AToB: int64(tc.aToB), BToA: int64(tc.bToA)}); r.res != want {
				t.Errorf("got %+v, want %+v", r.res, want)
			}
			s.checkClosed(t)
		})
	}
}

// TestSpliceCountingWhileRunning: the counter shows the bytes of a stream
// that is still open, each direction on its own, and equals the result at
// the end.
func TestSpliceCountingWhileRunning(t *testing.T) {
	var ctr transport.SpliceCounter
	s := startSpliceCounting(t, 0, &ctr)
	// a to b: 300 KiB, read in full at b's peer.
	toB := randomBytes(300<<10, 3)
	errc := make(chan error, 1)
	go func() { _, err := s.aPeer.Write(toB); errc <- err }()
	if _, err := io.ReadFull(s.bPeer, make([]byte, len(toB))); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// b to a: 5 bytes.
	if _, err := s.bPeer.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(s.aPeer, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	// The counter shows every byte while the stream is still open. A copy
	// loop stores its total just after its write returns, which may be a
	// moment after the peer has read the bytes: wait for it, briefly.
	deadline := time.Now().Add(5 * time.Second)
	for ctr.AToB.Load() != int64(len(toB)) || ctr.BToA.Load() != 5 {
		if time.Now().After(deadline) {
			t.Fatalf("while open: counter {%d %d}, want {%d 5}", ctr.AToB.Load(), ctr.BToA.Load(), len(toB))
		}
		time.Sleep(time.Millisecond)
	}
	if _, ok := s.returned(); ok {
		t.Fatal("Splice returned while both peers were open")
	}
	s.aPeer.CloseWrite()
	s.bPeer.CloseWrite()
	r := s.wait(t)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.res.AToB != ctr.AToB.Load() || r.res.BToA != ctr.BToA.Load() {
		t.Errorf("result %+v, counter {%d %d}: want equal", r.res, ctr.AToB.Load(), ctr.BToA.Load())
	}
}

// TestSpliceHalfClose: one side finishes sending (CloseWrite) and then waits
// for the answer, which keeps flowing; EOF reaches each peer after all data.
func TestSpliceHalfClose(t *testing.T) {
	tests := []struct {
		name      string
		bFinishes bool // b's peer half-closes first instead of a's
	}{
		{"a's peer half-closes first", false},
		{"b's peer half-closes first", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := startSplice(t, 0)
			asker, answerer := s.aPeer, s.bPeer
			if tc.bFinishes {
				asker, answerer = s.bPeer, s.aPeer
			}
			request := []byte("GET / HTTP/1.0\r\n\r\n")
			if _, err := asker.Write(request); err != nil {
				t.Fatal(err)
			}
			if err := asker.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(answerer) // ends only when the half-close arrives
			if err != nil {
				t.Fatalf("answerer reading the request: %v", err)
			}
			if !bytes.Equal(got, request) {
				t.Errorf("answerer got %q, want %q", got, request)
			}
			if r, ok := s.returned(); ok {
				t.Fatalf("Splice returned %+v, %v after one half-close, want it to keep the other direction open", r.res, r.err)
			}
			// The answer flows after the half-close, in several writes.
			first, rest := []byte("HTTP/1.0 200 OK\r\n\r\n"), randomBytes(300<<10, 3)
			if _, err := answerer.Write(first); err != nil {
				t.Fatal(err)
			}
			part := make([]byte, len(first))
			if _, err := io.ReadFull(asker, part); err != nil || !bytes.Equal(part, first) {
				t.Fatalf("asker got %q, %v after its half-close, want %q", part, err, first)
			}
			var werr error
			var wg sync.WaitGroup
			wg.Go(func() {
				if _, werr = answerer.Write(rest); werr == nil {
					werr = answerer.CloseWrite()
				}
			})
			got, err = io.ReadAll(asker)
			wg.Wait()
			if werr != nil {
				t.Fatalf("answerer writing: %v", werr)
			}
			if err != nil {
				t.Fatalf("asker reading the answer: %v", err)
			}
			if !bytes.Equal(got, rest) {
				t.Errorf("asker got %d bytes, want the %d sent", len(got), len(rest))
			}
			r := s.wait(t)
			if r.err != nil {
				t.Errorf("Splice got error %v, want nil", r.err)
			}
			askLen, ansLen := int64(len(request)), int64(len(first)+len(rest))
			want := transport.SpliceResult{AToB: askLen, BToA: ansLen}
			if tc.bFinishes {
				want = transport.SpliceResult{AToB: ansLen, BToA: askLen}
			}
			if r.res != want {
				t.Errorf("got %+v, want %+v", r.res, want)
			}
			s.checkClosed(t)
		})
	}
}

// TestSpliceAbort: when one peer resets its connection, Splice returns an
// error, resets the other side too (so it cannot mistake the truncated
// transfer for a complete one) and leaves no goroutine behind.
func TestSpliceAbort(t *testing.T) {
	tests := []struct {
		name   string
		bReset bool // b's peer resets instead of a's
		halfA  bool // a's peer half-closed before the reset happened
	}{
		{"a's peer resets", false, false},
		{"b's peer resets", true, false},
		{"b's peer resets after a's peer half-closed", true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := startSplice(t, 0)
			// Some traffic first, so both directions are established.
			if _, err := s.aPeer.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(s.bPeer, buf); err != nil {
				t.Fatal(err)
			}
			if _, err := s.bPeer.Write([]byte("pong")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(s.aPeer, buf); err != nil {
				t.Fatal(err)
			}
			if tc.halfA {
				if err := s.aPeer.CloseWrite(); err != nil {
					t.Fatal(err)
				}
				if _, err := s.bPeer.Read(buf); err != io.EOF {
					t.Fatalf("b's peer got %v after a's half-close, want io.EOF", err)
				}
			}
			resetter, other, otherName := s.aPeer, s.bPeer, "b's peer"
			if tc.bReset {
				resetter, other, otherName = s.bPeer, s.aPeer, "a's peer"
			}
			if err := resetter.SetLinger(0); err != nil {
				t.Fatal(err)
			}
			if err := resetter.Close(); err != nil { // with linger 0: RST, not FIN
				t.Fatal(err)
			}
			r := s.wait(t)
			if r.err == nil || errors.Is(r.err, transport.ErrIdle) {
				t.Errorf("Splice got error %v, want the reset", r.err)
			}
			if want := (transport.SpliceResult{AToB: 4, BToA: 4}); r.res != want {
				t.Errorf("got %+v, want %+v", r.res, want)
			}
			checkReset(t, otherName, other)
			s.checkClosed(t)
		})
	}
}

func TestSpliceIdleTimeout(t *testing.T) {
	const idle = 100 * time.Millisecond
	tests := []struct {
		name     string
		traffic  func(t *testing.T, s *splice) // before the silence
		wantAToB int64
	}{
		{"no traffic", func(*testing.T, *splice) {}, 0},
		{"silence after some traffic", func(t *testing.T, s *splice) {
			if _, err := s.aPeer.Write([]byte("abc")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(s.bPeer, make([]byte, 3)); err != nil {
				t.Fatal(err)
			}
		}, 3},
		{"silence after a half-close", func(t *testing.T, s *splice) {
			if err := s.aPeer.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if _, err := s.bPeer.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("b's peer got %v, want io.EOF", err)
			}
		}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := startSplice(t, idle)
			tc.traffic(t, s)
			r := s.wait(t)
			if !errors.Is(r.err, transport.ErrIdle) {
				t.Errorf("got error %v, want %v", r.err, transport.ErrIdle)
			}
			if want := (transport.SpliceResult{AToB: tc.wantAToB}); r.res != want {
				t.Errorf("got %+v, want %+v", r.res, want)
			}
			// a's peer still had its incoming direction open in every case;
			// a reset after a FIN reads as EOF, so that is where to look.
			checkReset(t, "a's peer", s.aPeer)
			s.checkClosed(t)
		})
	}
}

// TestSpliceTrafficDefersIdle sends a byte every 30ms for 500ms with an idle
// timeout of 100ms: the streams must stay open. Activity in either direction
// counts. A heavily loaded machine can stall a goroutine for longer than the
// idle timeout, so a failed attempt is retried; only repeated failures fail
// the test.
func TestSpliceTrafficDefersIdle(t *testing.T) {
	tests := []struct {
		name string
		from func(s *splice, tick int) *net.TCPConn
	}{
		{"a to b", func(s *splice, _ int) *net.TCPConn { return s.aPeer }},
		{"b to a", func(s *splice, _ int) *net.TCPConn { return s.bPeer }},
		{"alternating", func(s *splice, tick int) *net.TCPConn {
			if tick%2 == 0 {
				return s.aPeer
			}
			return s.bPeer
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			const attempts = 3
			for i := range attempts {
				err := trafficAttempt(t, tc.from)
				if err == nil {
					return
				}
				t.Logf("attempt %d: %v", i+1, err)
			}
			t.Errorf("the idle timeout closed a stream with steady traffic in %d attempts out of %d", attempts, attempts)
		})
	}
}

func trafficAttempt(t *testing.T, from func(*splice, int) *net.TCPConn) error {
	const (
		idle     = 100 * time.Millisecond
		interval = 30 * time.Millisecond
		duration = 500 * time.Millisecond
	)
	s := startSplice(t, idle)
	var atA, atB int64
	var wg sync.WaitGroup
	wg.Go(func() { atA, _ = io.Copy(io.Discard, s.aPeer) })
	wg.Go(func() { atB, _ = io.Copy(io.Discard, s.bPeer) })
	defer wg.Wait()
	defer func() { // unblock the readers whatever happened
		s.aPeer.Close()
		s.bPeer.Close()
	}()

	var fromA, fromB int64
	tick := time.NewTicker(interval)
	defer tick.Stop()
	start := time.Now()
	for i := 0; time.Since(start) < duration; i++ {
		<-tick.C
		if r, ok := s.returned(); ok {
			return fmt.Errorf("Splice returned %v after %v of traffic", r.err, time.Since(start))
		}
		c := from(s, i)
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			return fmt.Errorf("write after %v: %v", time.Since(start), err)
		}
		if c == s.aPeer {
			fromA++
		} else {
			fromB++
		}
	}
	if r, ok := s.returned(); ok {
		return fmt.Errorf("Splice returned %v at the end of the traffic", r.err)
	}
	if err := s.aPeer.CloseWrite(); err != nil {
		return err
	}
	if err := s.bPeer.CloseWrite(); err != nil {
		return err
	}
	r := s.wait(t)
	if r.err != nil {
		return fmt.Errorf("Splice got error %v after a clean end, want nil", r.err)
	}
	wg.Wait()
	if atB != fromA || atA != fromB {
		t.Errorf("peers got %d and %d bytes, want %d and %d", atB, atA, fromA, fromB)
	}
	if want := (transport.SpliceResult{AToB: fromA, BToA: fromB}); r.res != want {
		t.Errorf("got %+v, want %+v", r.res, want)
	}
	return nil
}

func TestIsClosedErr(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, true},
		{"EOF", io.EOF, true},
		{"wrapped EOF", fmt.Errorf("read: %w", io.EOF), true},
		{"net.ErrClosed", net.ErrClosed, true},
		{"wrapped net.ErrClosed", &net.OpError{Op: "read", Err: net.ErrClosed}, true},
		{"session closed", fmt.Errorf("accept: %w", transport.ErrClosed), true},
		{"idle", transport.ErrIdle, false},
		{"unexpected EOF", io.ErrUnexpectedEOF, false},
		{"reset", &net.OpError{Op: "read", Err: syscall.ECONNRESET}, false},
		{"other", errors.New("closed"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := transport.IsClosedErr(tc.err); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestSpliceCountsEarlyBytes: bytes the caller sent before the splice
// (SpliceOptions.Early) are in AToB from the start, in the counter while
// the splice runs (before any byte moved) and in the result.
func TestSpliceCountsEarlyBytes(t *testing.T) {
	var ctr transport.SpliceCounter
	started := make(chan struct{})
	s := startSpliceFunc(t, nil, func(a, b transport.Stream) (transport.SpliceResult, error) {
		close(started)
		return transport.SpliceWith(a, b, transport.SpliceOptions{Counter: &ctr, Early: 100})
	})
	<-started
	deadline := time.Now().Add(5 * time.Second)
	for ctr.AToB.Load() != 100 {
		if time.Now().After(deadline) {
			t.Fatalf("counter before any byte moved: %d, want the 100 sent early", ctr.AToB.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := s.aPeer.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(s.bPeer, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	s.aPeer.CloseWrite()
	s.bPeer.CloseWrite()
	r := s.wait(t)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.res.AToB != 105 || r.res.BToA != 0 || ctr.AToB.Load() != 105 {
		t.Errorf("result %+v, counter %d: want AToB 105 (100 early + 5)", r.res, ctr.AToB.Load())
	}
}
