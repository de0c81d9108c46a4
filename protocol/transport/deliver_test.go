package transport_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/tetherhq/tether/protocol/transport"
)

// countedConn is a backend's connection at the relay as Splice sees it,
// with raw-system-call I/O (transport.Direct), counting the writes the
// stream's transport made to it itself (TryWrite).
type countedConn struct {
	net.Conn // a transport.Direct connection
	tries    atomic.Int64
	tried    atomic.Int64 // bytes those writes took
}

func (c *countedConn) TryWrite(p []byte) (int, error) {
	c.tries.Add(1)
	n, err := c.Conn.(transport.TryWriter).TryWrite(p)
	c.tried.Add(int64(n))
	return n, err
}

func (c *countedConn) CloseWrite() error { return c.Conn.(transport.Stream).CloseWrite() }

// TestSpliceDeliversSmallMessagesDirectly: a splice from a stream of a
// TCP session (TLS+yamux) to a TCP connection has the session's receive
// loop write small messages to the connection itself (a request and its
// answer cost no goroutine hand-off), and bulk goes through the copy loop;
// either way every byte arrives once and in order, and the splice counts
// all of them.
func TestSpliceDeliversSmallMessagesDirectly(t *testing.T) {
	if !directIO {
		t.Skip("no raw-system-call I/O (transport.Direct) on this platform")
	}
	agent, relay, closeSessions := yamuxSessions(t)
	defer closeSessions()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	accepted := make(chan transport.Stream, 1)
	go func() {
		st, err := agent.AcceptStream(ctx)
		if err != nil {
			t.Error(err)
		}
		accepted <- st
	}()
	relaySide, err := relay.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	relaySide.Write([]byte{0}) // the agent accepts a stream when it hears of it
	agentSide := <-accepted
	if agentSide == nil {
		t.FailNow()
	}
	io.ReadFull(agentSide, make([]byte, 1))

	backend, front := tcpPair(t)
	defer backend.Close()
	dst := &countedConn{Conn: transport.Direct(front)}
	var ctr transport.SpliceCounter
	done := make(chan spliceReturn, 1)
	go func() {
		res, err := transport.SpliceCounting(dst, relaySide, 0, &ctr)
		done <- spliceReturn{res, err}
	}()

	// Requests and answers, one at a time, of 1 byte to 16 KiB, then 4 MiB
	// of bulk, then small ones again.
	var want bytes.Buffer
	send := func(msg []byte) {
		t.Helper()
		want.Write(msg)
		if _, err := agentSide.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(backend, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("the backend read %d bytes that differ from the %d sent", len(got), len(msg))
		}
	}
	for i := range 300 {
		send(randomBytes(1+(i*97)%(16<<10), byte(i)))
	}
	bulkDone := make(chan error, 1)
	bulk := randomBytes(4<<20, 7)
	go func() {
		_, err := agentSide.Write(bulk)
		bulkDone <- err
	}()
	got := make([]byte, len(bulk))
	if _, err := io.ReadFull(backend, got); err != nil {
		t.Fatal(err)
	}
	if err := <-bulkDone; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bulk) {
		t.Fatal("the bulk transfer arrived changed")
	}
	want.Write(bulk)
	for i := range 300 {
		send(randomBytes(1+i%200, byte(i)))
	}
	if dst.tries.Load() < 100 || dst.tried.Load() == 0 {
		t.Errorf("the session's receive loop wrote to the backend %d times (%d bytes) over 600 small messages, want most of them", dst.tries.Load(), dst.tried.Load())
	}
	// The counter shows every byte while the stream is open. The writer
	// adds to it just after its write returns, which may be a moment after
	// the backend read the bytes: wait for it.
	waitFor(t, "the counter while open to reach every byte written", func() bool {
		n := ctr.BToA.Load()
		if n > int64(want.Len()) {
			t.Fatalf("counter while open: %d bytes to the backend, more than the %d sent", n, want.Len())
		}
		return n == int64(want.Len())
	})

	agentSide.CloseWrite()
	if n, err := backend.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the agent's end: read %d, %v; want EOF", n, err)
	}
	backend.CloseWrite()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.res.BToA != int64(want.Len()) || r.res.AToB != 0 {
		t.Errorf("splice result %+v, want %d bytes to the backend and none back", r.res, want.Len())
	}
	agentSide.Close()
	t.Logf("%d bytes, %d written by the receive loop in %d writes", want.Len(), dst.tried.Load(), dst.tries.Load())
}
