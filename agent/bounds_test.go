package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/tcp"
)

// TestYamuxClosedStreamsHoldNoData: over TLS+yamux, a stream the agent
// refused and closed keeps nothing of what the relay sent, even while the
// relay never closes its side, and is forgotten once the relay has not
// closed it within tcp.ClosedStreamTimeout. Before, each kept up to its
// 256 KiB window until the relay closed its side: 150 refused streams that
// each sent a header and 250 000 bytes pinned 73 MiB (the audit's case).
func TestYamuxClosedStreamsHoldNoData(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	a.cfg.AccessLog.Disabled = true
	a.alog = nil
	s, rs := relayPair(t, a)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapInuse
	const n = 150
	payload := make([]byte, 250_000)
	hdr, err := protocol.StreamHeader{Service: "nosuch", Backend: "backend:x", RequestID: "r"}.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var keep []transport.Stream
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := rs.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Write(append(hdr, payload...)); err != nil {
			t.Fatal(err)
		}
		ast, err := s.t.AcceptStream(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { a.handleStream(s, ast) })
		st.SetDeadline(time.Now().Add(10 * time.Second))
		if rep, err := protocol.ReadReply(st); err != nil || rep.Code != protocol.CodeUnknownService {
			t.Fatalf("reply %v %v, want unknown_service", rep, err)
		}
		keep = append(keep, st) // the relay never closes its side
	}
	wg.Wait() // every handler has returned, and closed its stream
	runtime.GC()
	runtime.ReadMemStats(&ms)
	grown := int64(ms.HeapInuse) - int64(before)
	t.Logf("heap in use grew by %d KiB for %d refused streams, each sent 250 000 bytes", grown>>10, n)
	if limit := int64(n) * 16 << 10; grown > limit {
		t.Errorf("%d refused, closed streams hold %d MiB of the agent's memory, want under %d KiB", n, grown>>20, limit>>10)
	}
	// The relay never closes them: they are reset and forgotten.
	ts := s.t.(*tcp.Session)
	waitFor(t, tcp.ClosedStreamTimeout+10*time.Second, "the refused streams forgotten", func() error {
		if k := ts.NumStreams(); k > 0 {
			return fmt.Errorf("%d streams held", k)
		}
		return nil
	})
	for _, st := range keep {
		if _, err := st.Write([]byte("x")); err == nil {
			t.Fatal("the relay's write on a stream the agent reset succeeded")
		}
	}
}

// TestYamuxStreamLimit: over TLS+yamux the relay may have at most
// maxStreamsPerSession streams open on a session, as over QUIC; one more
// is refused with limit_exceeded, and counted, until one ends.
func TestYamuxStreamLimit(t *testing.T) {
	defer func(n int) { maxStreamsPerSession = n }(maxStreamsPerSession)
	maxStreamsPerSession = 3
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	a.cfg.AccessLog.Disabled = true
	a.alog = nil
	svcs := map[string]Service{"echo": {Address: listen(t, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})}}
	a.services.Store(&svcs)
	s, rs := relayPair(t, a)
	s.wg.Go(s.acceptLoop)
	open := func() (transport.Stream, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := rs.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := protocol.WriteStreamHeader(st, protocol.StreamHeader{Service: "echo", Backend: "backend:x", RequestID: "r"}); err != nil {
			t.Fatal(err)
		}
		st.SetDeadline(time.Now().Add(10 * time.Second))
		rep, err := protocol.ReadReply(st)
		if err != nil {
			t.Fatal(err)
		}
		if err := rep.Err(); err != nil {
			st.Close()
			return nil, err
		}
		st.SetDeadline(time.Time{})
		return st, nil
	}
	var held []transport.Stream
	for i := range maxStreamsPerSession {
		st, err := open()
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		held = append(held, st)
	}
	_, err := open()
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.CodeLimitExceeded || !strings.Contains(pe.Message, "3 streams open on this connection") {
		t.Fatalf("stream over the limit: %v, want limit_exceeded", err)
	}
	if got := a.Status().StreamsOverLimit; got != 1 {
		t.Errorf("streams_over_limit %d, want 1", got)
	}
	// One ends (both sides close): a new stream is served.
	held[0].CloseWrite()
	io.Copy(io.Discard, held[0])
	held[0].Close()
	waitFor(t, 10*time.Second, "a stream slot free", func() error {
		if k := s.streams(); k >= maxStreamsPerSession {
			return fmt.Errorf("%d streams", k)
		}
		return nil
	})
	st, err := open()
	if err != nil {
		t.Fatalf("after one ended: %v", err)
	}
	if err := roundTrip(st, "hello"); err != nil {
		t.Fatal(err)
	}
	for _, st := range append(held[1:], st) {
		st.Close()
	}
}

// TestYamuxStreamLimitHostileRelay: a relay that keeps opening streams
// over the limit and never closes the refused ones gets overLimitReplies
// refusals, then resets, which cost the agent no goroutine.
func TestYamuxStreamLimitHostileRelay(t *testing.T) {
	defer func(n int) { maxStreamsPerSession = n }(maxStreamsPerSession)
	maxStreamsPerSession = 2
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	a.cfg.AccessLog.Disabled = true
	a.alog = nil
	svcs := map[string]Service{"echo": {Address: listen(t, func(c net.Conn) { io.Copy(c, c) })}}
	a.services.Store(&svcs)
	s, rs := relayPair(t, a)
	s.wg.Go(s.acceptLoop)
	hdr, err := protocol.StreamHeader{Service: "echo", Backend: "backend:x", RequestID: "r"}.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	var keep []transport.Stream
	const over = overLimitReplies + 20
	refused, reset := 0, 0
	for i := range maxStreamsPerSession + over {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := rs.OpenStream(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		keep = append(keep, st) // never closed
		st.SetDeadline(time.Now().Add(10 * time.Second))
		var rep protocol.Reply
		if _, err = st.Write(hdr); err == nil { // a stream reset at once fails here
			rep, err = protocol.ReadReply(st)
		}
		switch {
		case i < maxStreamsPerSession:
			if err != nil || rep.Code != protocol.CodeOK {
				t.Fatalf("stream %d: %v %v, want served", i, rep, err)
			}
		case err == nil && rep.Code == protocol.CodeLimitExceeded:
			refused++
		case err != nil && reset == 0 && refused < overLimitReplies:
			t.Fatalf("stream %d reset after %d refusals, want %d refusals first", i, refused, overLimitReplies)
		case err != nil:
			reset++
		default:
			t.Fatalf("stream %d: %v, want limit_exceeded or a reset", i, rep)
		}
	}
	if refused != overLimitReplies || reset != over-overLimitReplies {
		t.Errorf("%d refused and %d reset of %d over the limit, want %d and %d", refused, reset, over, overLimitReplies, over-overLimitReplies)
	}
	if got := a.Status().StreamsOverLimit; got != over {
		t.Errorf("streams_over_limit %d, want %d", got, over)
	}
	for _, st := range keep {
		st.Close()
	}
}
