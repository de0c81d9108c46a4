package yamux

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"
)

// Tests of the frames senders write themselves (Session.writeFrame), on
// connections with write deadlines.

// TestDirectWritesKeepEveryStreamInOrder: many streams opened and written
// at once, so that senders write frames themselves and queue them behind
// one another in turn: every stream's SYN comes before its data and every
// byte arrives, in order.
func TestDirectWritesKeepEveryStreamInOrder(t *testing.T) {
	a, b := net.Pipe()
	conf := testConfNoKeepAlive()
	client, err := Client(a, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := Server(b, conf.Clone())
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	if client.deadlines == nil {
		t.Fatal("a net.Conn's session does not write frames itself")
	}

	const streams, msgs = 32, 50
	var wg sync.WaitGroup
	errs := make(chan error, 2*streams)
	wg.Add(1)
	go func() { // echo every stream
		defer wg.Done()
		for i := 0; i < streams; i++ {
			st, err := server.AcceptStream()
			if err != nil {
				errs <- err
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer st.Close()
				if _, err := io.Copy(st, st); err != nil {
					errs <- err
				}
			}()
		}
	}()
	for i := 0; i < streams; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			st, err := client.OpenStream()
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			r := rand.New(rand.NewSource(int64(i)))
			var sent bytes.Buffer
			got := make(chan []byte, 1)
			go func() { b, _ := io.ReadAll(st); got <- b }()
			for m := 0; m < msgs; m++ {
				p := make([]byte, 1+r.Intn(3000))
				r.Read(p)
				sent.Write(p)
				if _, err := st.Write(p); err != nil {
					errs <- err
					return
				}
			}
			st.Close() // a half-close in yamux: the echo still comes back
			if b := <-got; !bytes.Equal(b, sent.Bytes()) {
				errs <- fmt.Errorf("stream %d: %d bytes back, want the %d sent", i, len(b), sent.Len())
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestDirectWriteTimesOut: a frame the peer does not take within
// ConnectionWriteTimeout fails with ErrConnectionWriteTimeout, and ends
// the session (part of the frame may have been written).
func TestDirectWriteTimesOut(t *testing.T) {
	a, b := net.Pipe() // b is never read
	defer b.Close()
	conf := testConfNoKeepAlive()
	conf.ConnectionWriteTimeout = 100 * time.Millisecond
	client, err := Client(a, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	start := time.Now()
	if _, err := client.OpenStream(); err != ErrConnectionWriteTimeout {
		t.Fatalf("OpenStream to a peer that reads nothing: %v, want ErrConnectionWriteTimeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the write timed out after %v, want about 100ms", d)
	}
	select {
	case <-client.CloseChan():
	case <-time.After(5 * time.Second):
		t.Fatal("the session was not closed after a write timed out")
	}
}

// TestWriteAfterIdleMeetsNoOldDeadline: the write deadline is moved on
// only when less than half of ConnectionWriteTimeout is left (armDeadline);
// a frame written, queued or not, long after the last one must not meet
// the deadline that one left behind.
func TestWriteAfterIdleMeetsNoOldDeadline(t *testing.T) {
	a, b := net.Pipe()
	conf := testConfNoKeepAlive()
	conf.ConnectionWriteTimeout = 50 * time.Millisecond
	client, err := Client(a, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := Server(b, testConfNoKeepAlive())
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	st, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	peer, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	buf := make([]byte, 5)
	for i := 0; i < 3; i++ {
		if i > 0 {
			time.Sleep(120 * time.Millisecond) // the idle time is the test: past the deadline the last write set
		}
		if _, err := st.Write([]byte("hello")); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if _, err := io.ReadFull(peer, buf); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if _, err := client.Ping(); err != nil { // a queued frame (and its answer)
			t.Fatalf("ping %d: %v", i, err)
		}
	}
}

// Tests of ReadDirect: the receive loop writing small frames to a
// stream's destination itself.

// chokyWriter is a DirectWriter that takes a random part of each TryWrite
// (often all, sometimes none), like a socket whose buffer fills now and
// then, and records everything written to it either way; without rnd it
// takes everything.
type chokyWriter struct {
	grew   chan struct{} // notified at each write, when not nil
	mu     sync.Mutex
	rnd    *rand.Rand
	got    bytes.Buffer
	tries  int // TryWrite calls
	direct int // bytes TryWrite took
	fail   error
}

func (w *chokyWriter) TryWrite(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tries++
	if w.fail != nil {
		return 0, w.fail
	}
	n := len(p)
	if w.rnd != nil && w.rnd.Intn(4) == 0 {
		n = w.rnd.Intn(len(p) + 1)
	}
	w.got.Write(p[:n])
	w.direct += n
	w.notify()
	return n, nil
}

func (w *chokyWriter) notify() {
	if w.grew != nil {
		select {
		case w.grew <- struct{}{}:
		default:
		}
	}
}

// len is how many bytes the destination has.
func (w *chokyWriter) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.got.Len()
}

// write is the reader's own write of what ReadDirect returned.
func (w *chokyWriter) write(p []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.got.Write(p)
	w.notify()
}

func directPair(t *testing.T) (client, server *Session) {
	t.Helper()
	a, b := net.Pipe()
	conf := testConfNoKeepAlive()
	client, err := Client(a, conf)
	if err != nil {
		t.Fatal(err)
	}
	server, err = Server(b, conf.Clone())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return client, server
}

// TestReadDirectKeepsOrder: messages of every size, written one by one
// (frames of up to 16 KiB are delivered by the receive loop, longer ones
// and what the destination did not take are buffered and read), arrive
// at the destination whole and in order, then the end of the stream; far
// more than a stream's receive window goes through, so the window
// updates the reader sends for the delivered bytes work.
func TestReadDirectKeepsOrder(t *testing.T) {
	for seed := int64(1); seed <= 8; seed++ {
		readDirectInOrder(t, seed)
	}
}

func readDirectInOrder(t *testing.T, seed int64) {
	client, server := directPair(t)
	rnd := rand.New(rand.NewSource(seed))
	var sent bytes.Buffer
	var sizes []int
	for sent.Len() < 4*int(initialStreamWindow) {
		n := 1 + rnd.Intn(64)
		switch rnd.Intn(10) {
		case 0:
			n = 1 + rnd.Intn(directMax)
		case 1:
			n = directMax + 1 + rnd.Intn(2*directMax)
		}
		msg := make([]byte, n)
		rnd.Read(msg)
		sent.Write(msg)
		sizes = append(sizes, n)
	}
	w := &chokyWriter{rnd: rand.New(rand.NewSource(seed + 100)), grew: make(chan struct{}, 1)}
	errs := make(chan error, 1)
	go func() {
		st, err := client.OpenStream()
		if err != nil {
			errs <- err
			return
		}
		defer st.Close()
		data := sent.Bytes()
		r := rand.New(rand.NewSource(seed + 200))
		for _, n := range sizes {
			if r.Intn(2) == 0 {
				// Wait until the destination has all written so far, as
				// a request waits for its answer: the reader is waiting
				// when the next message arrives.
				for w.len() < sent.Len()-len(data) {
					<-w.grew
				}
			}
			if _, err := st.Write(data[:n]); err != nil {
				errs <- err
				return
			}
			data = data[n:]
		}
		errs <- nil
	}()
	st, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, directMax)
	for {
		n, err := st.ReadDirect(buf, w)
		w.write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("ReadDirect after %d bytes: %v", w.got.Len(), err)
		}
	}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(w.got.Bytes(), sent.Bytes()) {
		t.Fatalf("seed %d: the destination got %d bytes, not the %d sent in order", seed, w.got.Len(), sent.Len())
	}
	if w.direct == 0 {
		t.Fatal("the receive loop wrote nothing to the destination itself")
	}
	t.Logf("seed %d: %d bytes, %d of them written by the receive loop in %d tries", seed, sent.Len(), w.direct, w.tries)
}

// TestReadDirectWriteError: a write the receive loop made that failed ends
// ReadDirect with its error; the session goes on.
func TestReadDirectWriteError(t *testing.T) {
	client, server := directPair(t)
	cst, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer cst.Close()
	if _, err := cst.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	st, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	buf := make([]byte, 64)
	if n, err := st.Read(buf[:5]); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("Read: %q, %v", buf[:n], err)
	}
	broken := errors.New("destination gone")
	w := &chokyWriter{rnd: rand.New(rand.NewSource(4)), fail: broken}
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := st.ReadDirect(buf, w); err != nil {
				done <- err
				return
			}
		}
	}()
	// Writes until one reaches the waiting ReadDirect's destination.
	for {
		if _, err := cst.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if !errors.Is(err, broken) {
				t.Fatalf("ReadDirect after the destination failed: %v, want %v", err, broken)
			}
			// The session still carries other streams.
			other, err := client.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			other.Close()
			return
		case <-time.After(time.Millisecond):
		}
	}
}

// TestReadDirectDeadline: ReadDirect waiting with nothing to read ends at
// the read deadline, and nothing is delivered after it returned.
func TestReadDirectDeadline(t *testing.T) {
	client, server := directPair(t)
	cst, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer cst.Close()
	cst.Write([]byte("x"))
	st, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	w := &chokyWriter{rnd: rand.New(rand.NewSource(5))}
	buf := make([]byte, 64)
	if n, err := st.ReadDirect(buf, w); n != 1 || err != nil {
		t.Fatalf("ReadDirect of the buffered byte: %d, %v", n, err)
	}
	st.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := st.ReadDirect(buf, w); err != ErrTimeout {
		t.Fatalf("ReadDirect past its deadline: %v, want ErrTimeout", err)
	}
	if _, err := cst.Write([]byte("later")); err != nil {
		t.Fatal(err)
	}
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := st.Read(buf)
	if err != nil || string(buf[:n]) != "later" {
		t.Fatalf("Read after ReadDirect returned: %q, %v; want the bytes buffered, not delivered", buf[:n], err)
	}
	if w.tries != 0 {
		t.Fatalf("the destination was tried %d times after ReadDirect returned", w.tries)
	}
}

// TestReadDirectWindow: a stream whose every message the receive loop
// delivers (the reader never gets one to read) still moves far more than
// its receive window: the reader is woken to send the window update.
func TestReadDirectWindow(t *testing.T) {
	client, server := directPair(t)
	w := &chokyWriter{rnd: rand.New(rand.NewSource(6)), grew: make(chan struct{}, 1)}
	w.rnd = nil // takes everything
	const msg, total = 1024, 4 * int(initialStreamWindow)
	errs := make(chan error, 1)
	go func() {
		st, err := client.OpenStream()
		if err != nil {
			errs <- err
			return
		}
		defer st.Close()
		p := bytes.Repeat([]byte{'m'}, msg)
		for sent := 0; sent < total; sent += msg {
			for w.len() < sent {
				<-w.grew
			}
			if _, err := st.Write(p); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	st, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, directMax)
	for {
		n, err := st.ReadDirect(buf, w)
		w.write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("ReadDirect after %d bytes: %v", w.len(), err)
		}
	}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if w.len() != total || w.direct < total/2 {
		t.Fatalf("the destination got %d bytes, %d of them from the receive loop; want %d, most from the receive loop", w.len(), w.direct, total)
	}
}

// TestPingFloodBoundsGoroutines: a peer that sends pings and reads nothing
// does not make the session start a goroutine per ping (upstream answered
// each ping on a goroutine of its own, which waited for the write until
// ConnectionWriteTimeout): the pings are answered in order by one, and
// those beyond maxPendingPongs unanswered go unanswered.
func TestPingFloodBoundsGoroutines(t *testing.T) {
	clientConn, serverConn := testConnTCP(t)
	conf := testConfNoKeepAlive()
	conf.ConnectionWriteTimeout = 5 * time.Second
	conf.LogOutput = io.Discard
	server, err := Server(serverConn, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	base := runtime.NumGoroutine()

	stop := make(chan struct{})
	peak := make(chan int)
	go func() {
		most := 0
		for {
			if n := runtime.NumGoroutine(); n > most {
				most = n
			}
			select {
			case <-stop:
				peak <- most
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	// 100 000 pings in frames of 1 000, never reading an answer.
	batch := make([]byte, 0, 1000*headerSize)
	for i := 0; i < 1000; i++ {
		hdr := header(make([]byte, headerSize))
		hdr.encode(typePing, flagSYN, 0, uint32(i))
		batch = append(batch, hdr...)
	}
	clientConn.(net.Conn).SetWriteDeadline(time.Now().Add(10 * time.Second))
	for i := 0; i < 100; i++ {
		if _, err := clientConn.Write(batch); err != nil {
			t.Fatalf("write pings: %v", err)
		}
	}
	// Wait until the session has read them all: a ping then still gets
	// its answer queued.
	for deadline := time.Now().Add(10 * time.Second); server.pendingPongs() < maxPendingPongs; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the session holds %d pings to answer, want %d", server.pendingPongs(), maxPendingPongs)
		}
	}
	close(stop)
	if grew := <-peak - base; grew > 10 {
		t.Errorf("the goroutines grew by %d during a ping flood; want a handful", grew)
	}
}

// TestConcurrentPingsAnswered: many pings outstanding at once, as from
// several callers of Ping and the keepalive, are all answered.
func TestConcurrentPingsAnswered(t *testing.T) {
	client, server := testClientServer(t)
	var wg sync.WaitGroup
	errs := make(chan error, 2*maxPendingPongs)
	for _, s := range []*Session{client, server} {
		for i := 0; i < maxPendingPongs; i++ {
			wg.Add(1)
			go func(s *Session) {
				defer wg.Done()
				if _, err := s.Ping(); err != nil {
					errs <- err
				}
			}(s)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("ping: %v", err)
	}
}
