package metrics

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/transport"
)

// A stream's bytes are in the totals while it still moves them, through
// a real splice over loopback TCP; once it ends they stay, counted once;
// a scrape never sees a total go down.
func TestBytesCountedWhileStreamsAreOpen(t *testing.T) {
	b := newBytes()
	pair := func() (net.Conn, net.Conn) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c, s
	}
	backend, front := pair()  // the backend's connection and the relay's end of it
	tunnel, service := pair() // the relay's end towards the agent and the service's
	defer backend.Close()
	defer service.Close()
	flow := b.Open("acme", "a1")
	var wg sync.WaitGroup
	wg.Go(func() {
		transport.SpliceCounting(front.(*net.TCPConn), tunnel.(*net.TCPConn), 0, &flow.Counter)
		b.Close(flow)
	})
	wg.Go(func() { // the service echoes
		io.Copy(service, service)
		service.(*net.TCPConn).CloseWrite()
	})

	const n = 100 << 10
	if _, err := backend.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(backend, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	// The splice counts a write once it returned, which may be just after
	// its bytes came back through the echo: wait for the count, with a
	// deadline, while the stream is still open.
	var got Moved
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		got = b.Totals()[AgentKey{"acme", "a1"}]
		if got.ToService == n && got.FromService == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("while the stream is open: %+v, want %d each way", got, n)
		}
	}

	backend.Close()
	wg.Wait()
	after := b.Totals()[AgentKey{"acme", "a1"}]
	if after != got {
		t.Errorf("after the stream ended: %+v, want %+v", after, got)
	}
	b.Close(flow) // a second close counts nothing
	if again := b.Totals()[AgentKey{"acme", "a1"}]; again != got {
		t.Errorf("after closing the flow twice: %+v, want %+v", again, got)
	}
}

// Totals taken while flows move and end never go down.
func TestBytesTotalsNeverGoDown(t *testing.T) {
	b := newBytes()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				f := b.Open("acme", "a1")
				for i := range 10 {
					f.Counter.AToB.Store(int64(i + 1))
					f.Counter.BToA.Store(int64(2 * (i + 1)))
				}
				b.Close(f)
			}
		})
	}
	var last Moved
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for {
		m := b.Totals()[AgentKey{"acme", "a1"}]
		if m.ToService < last.ToService || m.FromService < last.FromService {
			t.Fatalf("totals went down: %+v after %+v", m, last)
		}
		last = m
		select {
		case <-done:
			if m := b.Totals()[AgentKey{"acme", "a1"}]; m.ToService != 8*200*10 || m.FromService != 8*200*20 {
				t.Errorf("final totals %+v, want %d and %d", m, 8*200*10, 8*200*20)
			}
			return
		default:
		}
	}
}

// BenchmarkBytesFlow measures what counting costs a stream besides the
// copy loop's atomic stores (transport's BenchmarkSpliceMem …-counted):
// opening and closing its flow, from many streams at once.
func BenchmarkBytesFlow(b *testing.B) {
	by := newBytes()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			f := by.Open("acme", "a1")
			f.Counter.AToB.Store(64)
			f.Counter.BToA.Store(64)
			by.Close(f)
		}
	})
}
