package yamux

import (
	"bytes"
	"fmt"
	"io"
	"math/rand"
	"net"
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
