package tcp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/transporttest"
)

// loopbackPair is a client and a server session over TLS on loopback TCP,
// the way the agent and the relay run them (RawConn, batching, the tap).
func loopbackPair(t *testing.T) (client, server *Session) {
	t.Helper()
	return loopbackPairTimeout(t, 0)
}

// loopbackPairTimeout is loopbackPair with ConnectionWriteTimeout
// writeTimeout at both ends (0: the default).
func loopbackPairTimeout(t *testing.T, writeTimeout time.Duration) (client, server *Session) {
	t.Helper()
	cfg := func(c *yamux.Config) *yamux.Config {
		if writeTimeout > 0 {
			c.ConnectionWriteTimeout = writeTimeout
		}
		return c
	}
	serverTLS, clientTLS := transporttest.TLSConfigs(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		s   *Session
		err error
	}
	accepted := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- res{err: err}
			return
		}
		tc := tls.Server(NewRawConn(c), serverTLS)
		if err := tc.Handshake(); err != nil {
			c.Close()
			accepted <- res{err: err}
			return
		}
		s, err := Server(tc, cfg(RelayConfig(nil)))
		accepted <- res{s, err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err = Dial(ctx, nil, ln.Addr().String(), clientTLS, cfg(Config(nil)))
	if err != nil {
		t.Fatal(err)
	}
	r := <-accepted
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() {
		client.Close()
		r.s.Close()
	})
	return client, r.s
}

// waitStreams waits until s has n streams open.
func waitStreams(t *testing.T, what string, s *Session, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.NumStreams() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d streams open 5s after the aborts, want %d", what, s.NumStreams(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An aborted stream is forgotten by both yamux sessions at once, data
// queued for it included, although neither side sends another frame: the
// reset's ping brings the local reset its turn.
func TestAbortForgetsStreamOnBothSides(t *testing.T) {
	client, server := loopbackPair(t)
	for _, aborter := range []string{"opener", "acceptor"} {
		t.Run(aborter, func(t *testing.T) {
			acc := make(chan transport.Stream, 1)
			go func() {
				st, err := client.AcceptStream(context.Background())
				if err == nil {
					acc <- st
				}
				close(acc)
			}()
			opened, err := server.OpenStream(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			// Data in both directions that nobody reads: each session
			// holds some for the stream.
			if _, err := opened.Write(make([]byte, 100<<10)); err != nil {
				t.Fatal(err)
			}
			accepted, ok := <-acc
			if !ok {
				t.Fatal("accept failed")
			}
			if _, err := accepted.Write(make([]byte, 100<<10)); err != nil {
				t.Fatal(err)
			}
			waitStreams(t, "server before", server, 1)
			waitStreams(t, "client before", client, 1)
			st := opened
			if aborter == "acceptor" {
				st = accepted
			}
			if err := st.(transport.Aborter).Abort(); err != nil {
				t.Fatal(err)
			}
			waitStreams(t, "server", server, 0)
			waitStreams(t, "client", client, 0)
			opened.Close()
			accepted.Close()
		})
	}
}

// Streams aborted while others move data in both directions: the frames
// a reset adds never land inside another frame (the sessions would fail
// or corrupt data), and the sessions end with no stream left.
// TestAbortAfterQuietSpellKeepsSession: a stream aborted on a session
// that wrote nothing for longer than its write timeout ends alone: the
// reset goes out with a write deadline of its own, not the one yamux set
// at its last write, long past; the session carries the next stream.
func TestAbortAfterQuietSpellKeepsSession(t *testing.T) {
	const writeTimeout = 300 * time.Millisecond
	client, server := loopbackPairTimeout(t, writeTimeout)
	roundTrip := func(what string) (opened, accepted transport.Stream) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := server.OpenStream(ctx)
		if err != nil {
			t.Fatalf("%s: open: %v", what, err)
		}
		if _, err := st.Write([]byte("hello")); err != nil {
			t.Fatalf("%s: write: %v", what, err)
		}
		a, err := client.AcceptStream(ctx)
		if err != nil {
			t.Fatalf("%s: accept: %v (session: %v)", what, err, client.Err())
		}
		a.SetDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, 5)
		if _, err := io.ReadFull(a, got); err != nil || string(got) != "hello" {
			t.Fatalf("%s: read %q, %v", what, got, err)
		}
		return st, a
	}
	st, a := roundTrip("first stream")
	// Quiet for three write timeouts: the deadline yamux set at its last
	// write has passed on both ends.
	time.Sleep(3 * writeTimeout)
	st.(transport.Aborter).Abort()
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, yamux.ErrConnectionReset) {
		t.Fatalf("the aborted stream's peer read %v, want a reset", err)
	}
	a.Close()
	roundTrip("second stream")
	for name, s := range map[string]*Session{"client": client, "server": server} {
		select {
		case <-s.Done():
			t.Fatalf("the %s session ended: %v", name, s.Err())
		default:
		}
	}
}

func TestAbortAmidTraffic(t *testing.T) {
	client, server := loopbackPair(t)
	const streams = 24
	var wg sync.WaitGroup
	wg.Go(func() { // client side: echo every stream
		var ewg sync.WaitGroup
		defer ewg.Wait()
		for range streams + 1 {
			st, err := client.AcceptStream(context.Background())
			if err != nil {
				t.Errorf("accept: %v", err)
				return
			}
			ewg.Go(func() {
				defer st.Close()
				if _, err := io.Copy(st, st); err == nil {
					st.CloseWrite()
				}
			})
		}
	})
	errs := make(chan error, streams)
	var swg sync.WaitGroup
	for i := range streams {
		swg.Go(func() { errs <- echoOrAbort(server, i, i%3 == 0) })
	}
	swg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	waitStreams(t, "server", server, 0)
	waitStreams(t, "client", client, 0)
	// The sessions still carry new streams.
	if err := echoOrAbort(server, 99, false); err != nil {
		t.Fatalf("after the aborts: %v", err)
	}
	wg.Wait()
}

// echoOrAbort sends 2 MiB on a new stream and checks the echo; with abort,
// it aborts the stream half-way instead, while data moves both ways.
func echoOrAbort(s *Session, seed int, abort bool) error {
	st, err := s.OpenStream(context.Background())
	if err != nil {
		return fmt.Errorf("stream %d: open: %w", seed, err)
	}
	defer st.Close()
	data := make([]byte, 2<<20)
	for i := range data {
		data[i] = byte(i*31 + seed)
	}
	werr := make(chan error, 1)
	go func() {
		if abort {
			_, err := st.Write(data[:len(data)/2])
			if err == nil {
				err = st.(transport.Aborter).Abort()
			}
			werr <- err
			return
		}
		if _, err := st.Write(data); err != nil {
			werr <- err
			return
		}
		werr <- st.CloseWrite()
	}()
	got, rerr := io.ReadAll(st)
	if err := <-werr; err != nil {
		return fmt.Errorf("stream %d: write: %w", seed, err)
	}
	if abort {
		return nil // whatever was echoed before the abort
	}
	if rerr != nil {
		return fmt.Errorf("stream %d: read: %w", seed, rerr)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		return fmt.Errorf("stream %d: echo differs (%d bytes back, %d sent)", seed, len(got), len(data))
	}
	return nil
}

// A stream of a session that ended reads an error wrapping
// transport.ErrClosed, where yamux alone gives io.EOF.
func TestStreamOfClosedSessionReadsErrClosed(t *testing.T) {
	client, server := loopbackPair(t)
	acc := make(chan transport.Stream, 1)
	go func() {
		st, err := client.AcceptStream(context.Background())
		if err == nil {
			acc <- st
		}
		close(acc)
	}()
	opened, err := server.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer opened.Close()
	opened.Write([]byte("x"))
	accepted, ok := <-acc
	if !ok {
		t.Fatal("accept failed")
	}
	defer accepted.Close()
	server.Close()
	for what, st := range map[string]transport.Stream{"closed side": opened, "peer": accepted} {
		buf := make([]byte, 8)
		var err error
		for err == nil {
			_, err = st.Read(buf)
		}
		if !errors.Is(err, transport.ErrClosed) || errors.Is(err, io.EOF) {
			t.Errorf("%s: read got %v, want an error wrapping transport.ErrClosed and not io.EOF", what, err)
		}
	}
	// A stream the peer finished before is still read to its clean end
	// while the session is up: see the conformance suite's HalfClose.
}

// The reset frames a tap adds are what yamux itself sends for a reset.
func TestResetFrames(t *testing.T) {
	got := appendFrame(nil, yamuxTypeWindowUpdate, yamuxFlagRST, 7, 0)
	want := []byte{0, 1, 0, 8, 0, 0, 0, 7, 0, 0, 0, 0}
	if !bytes.Equal(got, want) {
		t.Errorf("RST frame: got % x, want % x", got, want)
	}
	got = appendFrame(nil, yamuxTypePing, yamuxFlagSYN, 0, resetPingID)
	want = []byte{0, 2, 0, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}
	if !bytes.Equal(got, want) {
		t.Errorf("ping frame: got % x, want % x", got, want)
	}
}

// scanWhole returns, for each prefix length of data, whether the prefix
// ends between frames: the reference for frameScanner.
func scanWhole(data []byte) []bool {
	between := make([]bool, len(data)+1)
	between[0] = true
	for i := 0; i < len(data); {
		if len(data)-i < yamuxHeaderSize {
			break
		}
		h := data[i : i+yamuxHeaderSize]
		end := uint64(i + yamuxHeaderSize)
		if h[1] == yamuxTypeData {
			end += uint64(binary.BigEndian.Uint32(h[8:12]))
		}
		if end > uint64(len(data)) {
			break
		}
		between[end] = true
		i = int(end)
	}
	return between
}

// FuzzFrameScanner: bytes from the network, cut into reads anywhere;
// after every read the scanner knows whether a frame just ended, as a scan
// of the whole stream does, and it never panics.
func FuzzFrameScanner(f *testing.F) {
	var stream []byte
	stream = appendFrame(stream, yamuxTypeWindowUpdate, yamuxFlagSYN, 1, 0)
	stream = appendFrame(stream, yamuxTypeData, 0, 1, 5)
	stream = append(stream, "hello"...)
	stream = appendFrame(stream, yamuxTypePing, yamuxFlagSYN, 0, 9)
	stream = appendFrame(stream, yamuxTypeData, 0, 3, 0)
	stream = appendFrame(stream, yamuxTypeWindowUpdate, yamuxFlagRST, 1, 0)
	f.Add(stream, []byte{1, 12, 3})
	f.Add(stream, []byte{})
	f.Add(appendFrame(nil, yamuxTypeData, 0, 1, 0xffffffff), []byte{5})
	f.Add([]byte{0, 9, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 1, 2}, []byte{7, 0})
	f.Fuzz(func(t *testing.T, data, cuts []byte) {
		want := scanWhole(data)
		var fs frameScanner
		pos := 0
		for i := 0; pos < len(data); i++ {
			n := len(data) - pos
			if i < len(cuts) {
				n = min(n, int(cuts[i])+1)
			}
			fs.advance(data[pos : pos+n])
			pos += n
			if got := fs.between(); got != want[pos] {
				t.Fatalf("after %d of %d bytes: between() = %v, want %v", pos, len(data), got, want[pos])
			}
		}
	})
}

// yamux's own error for a reset stream is what the peer of an aborted
// stream reads over this transport.
func TestPeerOfAbortedStreamReadsConnectionReset(t *testing.T) {
	client, server := loopbackPair(t)
	acc := make(chan transport.Stream, 1)
	go func() {
		st, err := client.AcceptStream(context.Background())
		if err == nil {
			acc <- st
		}
		close(acc)
	}()
	opened, err := server.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	opened.Write([]byte("x"))
	accepted, ok := <-acc
	if !ok {
		t.Fatal("accept failed")
	}
	defer accepted.Close()
	accepted.SetDeadline(time.Now().Add(5 * time.Second))
	io.ReadFull(accepted, make([]byte, 1))
	opened.(transport.Aborter).Abort()
	if _, err := accepted.Read(make([]byte, 1)); !errors.Is(err, yamux.ErrConnectionReset) {
		t.Fatalf("read on the peer of an aborted stream: got %v, want yamux.ErrConnectionReset", err)
	}
}
