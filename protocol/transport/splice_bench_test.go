package transport_test

// Microbenchmarks of the copy loop. scripts/bench/micro runs them and
// compares two revisions with benchstat.
//
//   - mem: Splice between two in-memory streams, a fresh Splice per op; the
//     copy loop's own cost (goroutine, buffers, idle timer) without sockets.
//   - tcp: one SpliceCounting between two loopback TCP connections, as the agent
//     bridges a tunnel stream to a tenant service.
//   - yamux, quic: one Splice between a loopback TCP connection (a backend
//     at the relay's front door) and a stream of a real TLS+yamux or QUIC
//     session, as the relay bridges a backend to an agent.
//
// pingpong-64B is one 64-byte request and its 64-byte echo per op (SetBytes
// counts both); upload-1MiB and download-1MiB move 1 MiB per op towards or
// from the far end.

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/quic"
	"github.com/tetherhq/tether/protocol/transport/tcp"
	"github.com/tetherhq/tether/protocol/transport/transporttest"
)

const (
	pingSize = 64
	bulkSize = 1 << 20
	// benchIdle is the idle timeout the relay and agent pass by default,
	// so every Splice here runs its idle watch as in production.
	benchIdle = time.Hour
)

// memStream is an in-memory transport.Stream: reads serve src once, then
// io.EOF, each read as large as the caller's buffer; writes are discarded.
type memStream struct {
	src []byte
	off int
}

func (m *memStream) Read(p []byte) (int, error) {
	if m.off == len(m.src) {
		return 0, io.EOF
	}
	n := copy(p, m.src[m.off:])
	m.off += n
	return n, nil
}

func (m *memStream) Write(p []byte) (int, error)   { return len(p), nil }
func (m *memStream) CloseWrite() error             { return nil }
func (m *memStream) Close() error                  { return nil }
func (m *memStream) SetDeadline(_ time.Time) error { return nil }
func (m *memStream) rewind()                       { m.off = 0 }

// BenchmarkSpliceMem measures one whole Splice per op between in-memory
// streams: 64 bytes each way (an interactive stream's lifetime), or 1 MiB
// one way (a bulk transfer, which switches to the large buffer).
func BenchmarkSpliceMem(b *testing.B) {
	for _, tc := range []struct {
		name       string
		aToB, bToA int
		counted    bool // SpliceCounting, as the agent copies
	}{
		{"64B-each-way", pingSize, pingSize, false},
		{"1MiB-one-way", bulkSize, 0, false},
		{"64B-each-way-counted", pingSize, pingSize, true},
		{"1MiB-one-way-counted", bulkSize, 0, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			a := &memStream{src: make([]byte, tc.aToB)}
			c := &memStream{src: make([]byte, tc.bToA)}
			b.ReportAllocs()
			b.SetBytes(int64(tc.aToB + tc.bToA))
			for b.Loop() {
				a.rewind()
				c.rewind()
				var res transport.SpliceResult
				var err error
				if tc.counted {
					var ctr transport.SpliceCounter
					res, err = transport.SpliceCounting(a, c, benchIdle, &ctr)
				} else {
					res, err = transport.Splice(a, c, benchIdle)
				}
				if err != nil || res.AToB != int64(tc.aToB) || res.BToA != int64(tc.bToA) {
					b.Fatalf("Splice = %+v, %v", res, err)
				}
			}
		})
	}
}

// topology is one running Splice between two streams and the two far ends
// the benchmark drives:
//
//	near <-> [a  Splice  b] <-> far
type topology struct {
	near, far io.ReadWriter
	done      chan error
	teardown  func()
	once      sync.Once
}

// close ends the Splice and everything under it; it may be called again.
func (tp *topology) close(b *testing.B) {
	tp.once.Do(func() {
		tp.teardown()
		select {
		case <-tp.done:
		case <-time.After(hangGuard):
			b.Error("Splice did not return after teardown")
		}
	})
}

// startTopology splices a and c; with a counter, as the agent does
// (SpliceCounting), otherwise as the relay does.
func startTopology(a, c transport.Stream, counter *transport.SpliceCounter, near, far io.ReadWriter, closers ...io.Closer) *topology {
	tp := &topology{near: near, far: far, done: make(chan error, 1)}
	go func() {
		var err error
		if counter != nil {
			_, err = transport.SpliceCounting(a, c, benchIdle, counter)
		} else {
			_, err = transport.Splice(a, c, benchIdle)
		}
		tp.done <- err
	}()
	tp.teardown = func() {
		for _, cl := range closers {
			cl.Close()
		}
	}
	return tp
}

// tcpTopology splices two loopback TCP connections.
func tcpTopology(b *testing.B) *topology {
	nearPeer, a := tcpPair(b)
	c, farPeer := tcpPair(b)
	return startTopology(a, c, new(transport.SpliceCounter), nearPeer, farPeer, nearPeer, farPeer, a, c)
}

// sessionTopology splices a loopback TCP connection (the backend's, at the
// relay) and a stream the relay session opened to the agent session.
func sessionTopology(b *testing.B, agent, relay transport.Session, closeSessions func()) *topology {
	nearPeer, front := tcpPair(b)
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	tunnel, err := relay.OpenStream(ctx)
	if err != nil {
		b.Fatal(err)
	}
	// A QUIC peer learns of a stream with its first byte, as an agent
	// learns of a real one with its stream header.
	if _, err := tunnel.Write([]byte{0}); err != nil {
		b.Fatal(err)
	}
	far, err := agent.AcceptStream(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(far, make([]byte, 1)); err != nil {
		b.Fatal(err)
	}
	return startTopology(front, tunnel, nil, nearPeer, far, nearPeer, far, front, tunnel, closerFunc(closeSessions))
}

type closerFunc func()

func (f closerFunc) Close() error { f(); return nil }

// yamuxTopology runs over a real TLS+yamux session on loopback.
func yamuxTopology(b *testing.B) *topology {
	agent, relay, closeSessions := yamuxSessions(b)
	return sessionTopology(b, agent, relay, closeSessions)
}

// yamuxSessions connects an agent session to a relay session over
// TLS+yamux on loopback; closeSessions closes both and waits for them.
func yamuxSessions(b testing.TB) (agent, relay transport.Session, closeSessions func()) {
	serverTLS, clientTLS := transporttest.TLSConfigs(b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		s   *tcp.Session
		err error
	}
	accepted := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- res{err: err}
			return
		}
		tc := tls.Server(tcp.NewRawConn(c), serverTLS)
		if err := tc.Handshake(); err != nil {
			c.Close()
			accepted <- res{err: err}
			return
		}
		s, err := tcp.Server(tc, tcp.Config(nil))
		accepted <- res{s, err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	a, err := tcp.Dial(ctx, nil, ln.Addr().String(), clientTLS, tcp.Config(nil))
	if err != nil {
		b.Fatal(err)
	}
	r := <-accepted
	if r.err != nil {
		a.Close()
		b.Fatal(r.err)
	}
	return a, r.s, func() {
		a.Close()
		r.s.Close()
		<-a.Done()
		<-r.s.Done()
	}
}

// quicTopology runs over a real QUIC connection on loopback.
func quicTopology(b *testing.B) *topology {
	serverTLS, clientTLS := transporttest.TLSConfigs(b)
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	tr := &quicgo.Transport{Conn: quic.PacketConn(udp)}
	ln, err := tr.Listen(serverTLS, quic.Config(16))
	if err != nil {
		udp.Close()
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	accepted := make(chan *quicgo.Conn, 1)
	go func() {
		c, _ := ln.Accept(ctx)
		accepted <- c
	}()
	agent, err := quic.Dial(ctx, udp.LocalAddr().String(), clientTLS, quic.Config(1000))
	sc := <-accepted
	if err != nil || sc == nil {
		ln.Close()
		tr.Close()
		udp.Close()
		b.Fatalf("QUIC handshake: %v", err)
	}
	relay := quic.NewSession(sc)
	return sessionTopology(b, agent, relay, func() {
		agent.Close()
		relay.Close()
		<-agent.Done()
		<-relay.Done()
		ln.Close()
		tr.Close()
		udp.Close()
	})
}

// BenchmarkSplice measures round trips and bulk transfers through one
// long-lived Splice over each transport.
func BenchmarkSplice(b *testing.B) {
	for _, tr := range []struct {
		name  string
		start func(*testing.B) *topology
	}{
		{"tcp", tcpTopology},
		{"yamux", yamuxTopology},
		{"quic", quicTopology},
	} {
		b.Run(tr.name+"/pingpong-64B", func(b *testing.B) {
			tp := tr.start(b)
			defer tp.close(b)
			echoDone := make(chan error, 1)
			go func() {
				_, err := io.Copy(tp.far, tp.far)
				echoDone <- err
			}()
			req, resp := make([]byte, pingSize), make([]byte, pingSize)
			b.ReportAllocs()
			b.SetBytes(2 * pingSize)
			for b.Loop() {
				if _, err := tp.near.Write(req); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(tp.near, resp); err != nil {
					b.Fatal(err)
				}
			}
			tp.close(b)
			<-echoDone
		})
		b.Run(tr.name+"/upload-1MiB", func(b *testing.B) {
			tp := tr.start(b)
			defer tp.close(b)
			bulk(b, tp.near, tp.far, tp)
		})
		b.Run(tr.name+"/download-1MiB", func(b *testing.B) {
			tp := tr.start(b)
			defer tp.close(b)
			bulk(b, tp.far, tp.near, tp)
		})
	}
}

// bulk writes 1 MiB to w per op and waits until all of it came out of r.
func bulk(b *testing.B, w io.Writer, r io.Reader, tp *topology) {
	got := make(chan error, 2)
	go func() {
		buf := make([]byte, bulkSize)
		for {
			_, err := io.ReadFull(r, buf)
			got <- err
			if err != nil {
				return
			}
		}
	}()
	buf := make([]byte, bulkSize)
	b.ReportAllocs()
	b.SetBytes(bulkSize)
	for b.Loop() {
		if _, err := w.Write(buf); err != nil {
			b.Fatal(err)
		}
		if err := <-got; err != nil {
			b.Fatal(err)
		}
	}
	tp.close(b)
	<-got // the reader's error once everything is closed
}
