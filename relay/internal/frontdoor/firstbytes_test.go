package frontdoor

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/transport"
)

// lockedBuffer is a stream stand-in that keeps what is written to it;
// after failAfter writes (when > 0) its writes fail.
type lockedBuffer struct {
	mu        sync.Mutex
	b         bytes.Buffer
	writes    int
	failAfter int
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	if w.failAfter > 0 && w.writes > w.failAfter {
		return 0, errors.New("stream reset")
	}
	return w.b.Write(p)
}

func (w *lockedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// waitFor waits until w holds want.
func waitFor(t *testing.T, w *lockedBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for w.String() != want {
		if time.Now().After(deadline) {
			t.Fatalf("stream got %q, want %q", w.String(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// frontPair returns a forward's side of a loopback connection, as its
// listener makes it (transport.Direct), and the client's side.
func frontPair(t *testing.T) (front net.Conn, client *net.TCPConn) {
	t.Helper()
	client, c := loopPair(t)
	front = transport.Direct(c)
	t.Cleanup(func() { front.Close(); client.Close() })
	return front, client
}

// TestFirstBytes: the bytes a client sends while its stream opens go to
// the stream attached last, after its opening, as they arrive (and Sent
// says so from the first); a stream attached later gets them all;
// after stop the connection's next bytes are the splice's to read.
func TestFirstBytes(t *testing.T) {
	front, client := frontPair(t)
	f := gatherFirstBytes(front)
	first := &lockedBuffer{}
	if err := f.Attach(first, []byte("H1|")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, first, "H1|")
	if f.Sent() {
		t.Error("Sent before the client sent anything")
	}
	client.Write([]byte("hello"))
	waitFor(t, first, "H1|hello")
	if !f.Sent() {
		t.Error("not Sent after the client's bytes went to the stream")
	}

	second := &lockedBuffer{}
	if err := f.Attach(second, []byte("H2|")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, second, "H2|hello")
	if !f.Sent() {
		t.Error("not Sent after a stream was attached with the bytes so far")
	}
	client.Write([]byte(" world"))
	waitFor(t, second, "H2|hello world")
	if got := first.String(); got != "H1|hello" {
		t.Errorf("the stream attached first got %q after another was attached, want H1|hello", got)
	}
	n, err := f.stop()
	if n != len("hello world") || err != nil {
		t.Fatalf("stop = %d, %v; want 11, nil", n, err)
	}
	client.Write([]byte("after"))
	front.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 5)
	if _, err := io.ReadFull(front, got); err != nil || string(got) != "after" {
		t.Fatalf("after stop the connection reads %q, %v; want after", got, err)
	}
	if got := second.String(); got != "H2|hello world" {
		t.Errorf("the stream got %q after stop, want H2|hello world", got)
	}
}

// TestFirstBytesBounded: at most maxEarly bytes are gathered; the rest
// waits in the connection, in order.
func TestFirstBytesBounded(t *testing.T) {
	front, client := frontPair(t)
	f := gatherFirstBytes(front)
	st := &lockedBuffer{}
	f.Attach(st, nil)
	msg := strings.Repeat("0123456789abcdef", (maxEarly+4096)/16)
	go client.Write([]byte(msg))
	waitFor(t, st, msg[:maxEarly])
	if n, err := f.stop(); n != maxEarly || err != nil {
		t.Fatalf("stop = %d, %v; want %d, nil", n, err, maxEarly)
	}
	front.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest := make([]byte, len(msg)-maxEarly)
	if _, err := io.ReadFull(front, rest); err != nil || string(rest) != msg[maxEarly:] {
		t.Fatalf("the bytes past the bound: %v (match %v)", err, string(rest) == msg[maxEarly:])
	}
}

// TestFirstBytesFailures: a client that ends its side early leaves the
// end for the splice; a failed write to the stream attached last, or a
// client's reset, is reported by stop, so the stream is not bridged.
func TestFirstBytesFailures(t *testing.T) {
	t.Run("client ends", func(t *testing.T) {
		front, client := frontPair(t)
		f := gatherFirstBytes(front)
		st := &lockedBuffer{}
		f.Attach(st, nil)
		client.Write([]byte("bye"))
		client.CloseWrite()
		waitFor(t, st, "bye")
		<-f.done // the gathering ends at the client's end
		if n, err := f.stop(); n != 3 || err != nil {
			t.Fatalf("stop = %d, %v; want 3, nil", n, err)
		}
		front.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := front.Read(make([]byte, 8)); n != 0 || err != io.EOF {
			t.Fatalf("after stop the connection reads %d, %v; want the end", n, err)
		}
	})
	t.Run("stream write fails", func(t *testing.T) {
		front, client := frontPair(t)
		f := gatherFirstBytes(front)
		st := &lockedBuffer{failAfter: 1}
		f.Attach(st, []byte("H|"))
		client.Write([]byte("x"))
		client.CloseWrite()
		<-f.done
		if _, err := f.stop(); err == nil {
			t.Fatal("stop after a failed write to the stream: nil error")
		}
	})
	t.Run("client resets", func(t *testing.T) {
		front, client := frontPair(t)
		f := gatherFirstBytes(front)
		client.SetLinger(0)
		client.Close()
		<-f.done
		if _, err := f.stop(); err == nil {
			t.Fatal("stop after the client's reset: nil error")
		}
	})
}
