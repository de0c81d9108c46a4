package yamux

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// recvState is what a stream holds for reading: bytes buffered and the
// receive window left.
func recvState(s *Stream) (buffered int, window uint32) {
	s.recvLock.Lock()
	defer s.recvLock.Unlock()
	if s.recvBuf != nil {
		buffered = s.recvBuf.Len()
	}
	return buffered, s.recvWindow
}

// TestCloseReadDropsData: a stream closed for reading drops what it had
// buffered and discards what arrives after, counting it against the
// receive window (which it no longer gives back); closed for writing too,
// it is reset and forgotten when the peer's FIN does not come within
// ClosedStreamTimeout. Before CloseRead, a stream closed by a peer that
// never closed its own side kept up to a window of data until the session
// ended.
func TestCloseReadDropsData(t *testing.T) {
	conf := testConf()
	conf.StreamCloseTimeout = 0
	conf.ClosedStreamTimeout = 50 * time.Millisecond
	cc, sc := testConnTLS(t)
	client, server := testClientServerConfig(t, cc, sc, conf, conf.Clone())

	cs, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	const first = 200_000
	if _, err := cs.Write(bytes.Repeat([]byte{'a'}, first)); err != nil {
		t.Fatal(err)
	}
	ss, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for n, _ := recvState(ss); n < first; n, _ = recvState(ss) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d bytes arrived", n, first)
		}
		time.Sleep(time.Millisecond)
	}

	if err := ss.CloseRead(); err != nil {
		t.Fatal(err)
	}
	if n, w := recvState(ss); n != 0 || w != initialStreamWindow-first {
		t.Fatalf("after CloseRead: %d bytes buffered, window %d; want 0 and %d", n, w, initialStreamWindow-first)
	}
	if _, err := ss.Read(make([]byte, 10)); !errors.Is(err, ErrStreamClosed) {
		t.Fatalf("Read after CloseRead: %v, want ErrStreamClosed", err)
	}
	ss.stateLock.Lock()
	armed := ss.closeTimer != nil
	ss.stateLock.Unlock()
	if armed {
		t.Fatal("a stream still open for writing has a close timer")
	}

	// What is left of the window arrives and is discarded; the window is
	// not given back, so the next write waits until the reset ends it.
	rest := int(initialStreamWindow - first)
	if _, err := cs.Write(bytes.Repeat([]byte{'b'}, rest)); err != nil {
		t.Fatal(err)
	}
	for _, w := recvState(ss); w != 0; _, w = recvState(ss) {
		if time.Now().After(deadline) {
			t.Fatalf("window %d after the rest was sent, want 0", w)
		}
		time.Sleep(time.Millisecond)
	}
	if n, _ := recvState(ss); n != 0 {
		t.Fatalf("%d bytes buffered after CloseRead", n)
	}

	// Closed for writing too; the client never closes its side.
	if err := ss.Close(); err != nil {
		t.Fatal(err)
	}
	cs.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := cs.Write([]byte("more")); !errors.Is(err, ErrConnectionReset) {
		t.Fatalf("client write after the server's CloseRead and Close: %v, want a reset", err)
	}
	if n := server.NumStreams(); n != 0 {
		t.Fatalf("server holds %d streams after the reset, want 0", n)
	}
}

// TestCloseWriteOnlyKeepsReceiving: a stream closed for writing only
// (Close) keeps receiving without a timer when StreamCloseTimeout is 0,
// whatever ClosedStreamTimeout says.
func TestCloseWriteOnlyKeepsReceiving(t *testing.T) {
	conf := testConf()
	conf.StreamCloseTimeout = 0
	conf.ClosedStreamTimeout = 50 * time.Millisecond
	cc, sc := testConnTLS(t)
	client, server := testClientServerConfig(t, cc, sc, conf, conf.Clone())
	cs, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	ss, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if err := ss.Close(); err != nil {
		t.Fatal(err)
	}
	ss.stateLock.Lock()
	armed := ss.closeTimer != nil
	ss.stateLock.Unlock()
	if armed {
		t.Fatal("a stream closed for writing only has a close timer")
	}
	if _, err := cs.Write([]byte("yz")); err != nil {
		t.Fatal(err)
	}
	cs.Close()
	ss.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got bytes.Buffer
	if _, err := got.ReadFrom(ss); err != nil || got.String() != "xyz" {
		t.Fatalf("read %q, %v; want xyz", got.String(), err)
	}
}

// TestCloseReadAfterClose: Close, then CloseRead (a CloseWrite followed
// by a full close) arms the timer as the other order does.
func TestCloseReadAfterClose(t *testing.T) {
	conf := testConf()
	conf.StreamCloseTimeout = 0
	conf.ClosedStreamTimeout = 50 * time.Millisecond
	cc, sc := testConnTLS(t)
	client, server := testClientServerConfig(t, cc, sc, conf, conf.Clone())
	cs, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	ss, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	ss.Close()
	ss.CloseRead()
	// The client keeps writing into the window until the reset comes.
	cs.SetWriteDeadline(time.Now().Add(10 * time.Second))
	p := make([]byte, 16<<10)
	for {
		if _, err := cs.Write(p); err != nil {
			if !errors.Is(err, ErrConnectionReset) {
				t.Fatalf("client write: %v, want a reset", err)
			}
			break
		}
	}
	if n := server.NumStreams(); n != 0 {
		t.Fatalf("server holds %d streams after the reset, want 0", n)
	}
}

// TestCloseReadWhileReading: CloseRead and Close while a reader reads and
// sends window updates do not deadlock (a reader holds recvLock while it
// waits for stateLock in sendWindowUpdate; CloseRead and Close must not
// wait for recvLock while they hold stateLock). A first version of
// CloseRead did, and hung here within 3000 rounds.
func TestCloseReadWhileReading(t *testing.T) {
	conf := testConf()
	conf.StreamCloseTimeout = 0
	conf.ClosedStreamTimeout = time.Second
	cc, sc := testConnTLS(t)
	client, server := testClientServerConfig(t, cc, sc, conf, conf.Clone())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 2000; i++ {
			cs, err := client.OpenStream()
			if err != nil {
				t.Error(err)
				return
			}
			go func() {
				p := make([]byte, 4096)
				for {
					if _, err := cs.Write(p); err != nil {
						return
					}
				}
			}()
			ss, err := server.AcceptStream()
			if err != nil {
				t.Error(err)
				return
			}
			read := make(chan struct{})
			go func() {
				defer close(read)
				p := make([]byte, 1024)
				for {
					if _, err := ss.Read(p); err != nil {
						return
					}
				}
			}()
			ss.CloseRead()
			ss.Close()
			<-read
			cs.Close()
		}
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		// A deadlock would hold up the session's cleanup too: the
		// panic's goroutine dump shows it.
		panic("CloseRead and Close while reading: still not done after 60 s (deadlock?)")
	}
}
