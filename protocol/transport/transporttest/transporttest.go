// Package transporttest is the conformance suite every transport.Session
// implementation must pass, plus TLS fixtures for loopback tests.
package transporttest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
)

// Pair returns two connected sessions: client (the agent side) and server
// (the relay side). The suite closes both.
type Pair func(t *testing.T) (client, server transport.Session)

// Run runs every conformance test against sessions made by pair.
func Run(t *testing.T, pair Pair) {
	tests := []struct {
		name string
		fn   func(*testing.T, Pair)
	}{
		{"RoundTripClientOpens", testRoundTripClientOpens},
		{"RoundTripServerOpens", testRoundTripServerOpens},
		{"HalfClose", testHalfClose},
		{"CloseUnblocksPeer", testCloseUnblocksPeer},
		{"CloseUnblocksLocalRead", testCloseUnblocksLocalRead},
		{"ConcurrentStreams", testConcurrentStreams},
		{"LargeTransfer", testLargeTransfer},
		{"SessionCloseEndsEverything", testSessionClose},
		{"SessionCloseFailsStreams", testSessionCloseFailsStreams},
		{"StreamsAreAborters", testStreamsAreAborters},
		{"AbortFailsPeerRead", testAbortFailsPeerRead},
		{"AbortFailsBlockedPeerWrite", testAbortFailsBlockedPeerWrite},
		{"AbortAfterCloseWriteFailsPeerWrite", testAbortAfterCloseWriteFailsPeerWrite},
		{"AbortUnblocksLocalRead", testAbortUnblocksLocalRead},
		{"AcceptHonoursContext", testAcceptContext},
		{"Deadline", testDeadline},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, pair) })
	}
}

func mustPair(t *testing.T, pair Pair) (transport.Session, transport.Session) {
	t.Helper()
	c, s := pair(t)
	t.Cleanup(func() {
		c.Close()
		s.Close()
		waitDone(t, c)
		waitDone(t, s)
	})
	return c, s
}

func waitDone(t *testing.T, s transport.Session) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Errorf("session not done 10s after Close")
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// echoOnce accepts one stream, echoes everything until EOF, then closes its
// write side.
func echoOnce(t *testing.T, s transport.Session) <-chan error {
	errc := make(chan error, 1)
	go func() {
		st, err := s.AcceptStream(ctx(t))
		if err != nil {
			errc <- err
			return
		}
		defer st.Close()
		if _, err := io.Copy(st, st); err != nil {
			errc <- err
			return
		}
		errc <- st.CloseWrite()
	}()
	return errc
}

func roundTrip(t *testing.T, opener, acceptor transport.Session) {
	errc := echoOnce(t, acceptor)
	st, err := opener.OpenStream(ctx(t))
	if err != nil {
		t.Fatalf("OpenStream: %v", err)
	}
	defer st.Close()
	msg := []byte("hello through the tunnel")
	if _, err := st.Write(msg); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := st.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	got, err := io.ReadAll(st)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo: got %q, want %q", got, msg)
	}
	if err := <-errc; err != nil {
		t.Fatalf("echo side: %v", err)
	}
}

func testRoundTripClientOpens(t *testing.T, pair Pair) {
	c, s := mustPair(t, pair)
	roundTrip(t, c, s)
}

func testRoundTripServerOpens(t *testing.T, pair Pair) {
	c, s := mustPair(t, pair)
	roundTrip(t, s, c)
}

// testHalfClose: the opener sends a request and closes its write side; the
// acceptor reads to EOF, then answers; the answer arrives intact.
func testHalfClose(t *testing.T, pair Pair) {
	c, s := mustPair(t, pair)
	errc := make(chan error, 1)
	go func() {
		st, err := c.AcceptStream(ctx(t))
		if err != nil {
			errc <- err
			return
		}
		defer st.Close()
		req, err := io.ReadAll(st) // returns only after the peer's CloseWrite
		if err != nil {
			errc <- err
			return
		}
		sum := sha256.Sum256(req)
		if _, err := st.Write(sum[:]); err != nil {
			errc <- err
			return
		}
		errc <- st.CloseWrite()
	}()
	st, err := s.OpenStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	req := bytes.Repeat([]byte("half-close "), 10000)
	if _, err := st.Write(req); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(st)
	if err != nil {
		t.Fatalf("read answer after CloseWrite: %v", err)
	}
	want := sha256.Sum256(req)
	if !bytes.Equal(got, want[:]) {
		t.Fatalf("answer: got %x, want %x", got, want)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// testCloseUnblocksPeer: a peer blocked reading a stream returns when the
// other side closes it.
func testCloseUnblocksPeer(t *testing.T, pair Pair) {
	c, s := mustPair(t, pair)
	readErr := make(chan error, 1)
	go func() {
		st, err := c.AcceptStream(ctx(t))
		if err != nil {
			readErr <- err
			return
		}
		defer st.Close()
		_, err = io.Copy(io.Discard, st)
		readErr <- err
	}()
	st, err := s.OpenStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the peer block in Read
	st.Close()
	select {
	case <-readErr: // EOF (yamux) or a reset error (QUIC): either way unblocked
	case <-time.After(5 * time.Second):
		t.Fatal("peer still blocked 5s after Close")
	}
}

// testCloseUnblocksLocalRead: Close unblocks a Read in progress on the same
// stream (Splice relies on this to abort).
func testCloseUnblocksLocalRead(t *testing.T, pair Pair) {
	c, s := mustPair(t, pair)
	accepted := make(chan transport.Stream, 1)
	go func() {
		st, err := c.AcceptStream(ctx(t))
		if err == nil {
			accepted <- st
		}
	}()
	st, err := s.OpenStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	defer peer.Close()
	done := make(chan error, 1)
	go func() {
		_, err := st.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	st.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Read after Close returned no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("local Read still blocked 5s after Close")
	}
}

func testConcurrentStreams(t *testing.T, pair Pair) {
	c, s := mustPair(t, pair)
	const n = 100
	var wg sync.WaitGroup
	acceptErr := make(chan error, n)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < n; i++ {
			st, err := c.AcceptStream(ctx(t))
			if err != nil {
				acceptErr <- err
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer st.Close()
				if _, err := io.Copy(st, st); err != nil {
					acceptErr <- err
					return
				}
				st.CloseWrite()
			}()
		}
	}()
	errs := make(chan error, n)
	var cw sync.WaitGroup
	for i := 0; i < n; i++ {
		cw.Add(1)
		go func(i int) {
			defer cw.Done()
			errs <- echoCheck(ctx(t), s, 64<<10, i)
		}(i)
	}
	cw.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	wg.Wait()
	close(acceptErr)
	for err := range acceptErr {
		t.Error(err)
	}
}

func echoCheck(ctx context.Context, s transport.Session, size, seed int) error {
	st, err := s.OpenStream(ctx)
	if err != nil {
		return fmt.Errorf("stream %d: open: %w", seed, err)
	}
	defer st.Close()
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + seed)
	}
	werr := make(chan error, 1)
	go func() {
		if _, err := st.Write(data); err != nil {
			werr <- err
			return
		}
		werr <- st.CloseWrite()
	}()
	got, err := io.ReadAll(st)
	if err != nil {
		return fmt.Errorf("stream %d: read: %w", seed, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("stream %d: write: %w", seed, err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("stream %d: echo mismatch (%d bytes back, %d sent)", seed, len(got), len(data))
	}
	return nil
}

func testLargeTransfer(t *testing.T, pair Pair) {
	c, s := mustPair(t, pair)
	errc := echoOnce(t, c)
	if err := echoCheck(ctx(t), s, 16<<20, 3); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func testSessionClose(t *testing.T, pair Pair) {
	c, s := mustPair(t, pair)
	accepted := make(chan transport.Stream, 1)
	go func() {
		st, err := c.AcceptStream(ctx(t))
		if err == nil {
			accepted <- st
		}
	}()
	st, err := s.OpenStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	readDone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, peer)
		close(readDone)
	}()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	waitDone(t, s)
	waitDone(t, c)
	select {
	case <-readDone:
	case <-time.After(10 * time.Second):
		t.Fatal("stream read on the peer still blocked after the session closed")
	}
	if _, err := s.OpenStream(ctx(t)); err == nil {
		t.Fatal("OpenStream on a closed session succeeded")
	}
	if _, err := c.AcceptStream(ctx(t)); err == nil {
		t.Fatal("AcceptStream on a closed session succeeded")
	}
}

// streamPair opens a stream from s, writes one byte so that c learns of
// it, and returns both ends with the byte read.
func streamPair(t *testing.T, c, s transport.Session) (opened, accepted transport.Stream) {
	t.Helper()
	acc := make(chan transport.Stream, 1)
	go func() {
		st, err := c.AcceptStream(ctx(t))
		if err != nil {
			close(acc)
			return
		}
		acc <- st
	}()
	opened, err := s.OpenStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { opened.Close() })
	if _, err := opened.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	accepted, ok := <-acc
	if !ok {
		t.Fatal("AcceptStream failed")
	}
	t.Cleanup(func() { accepted.Close() })
	if _, err := io.ReadFull(accepted, make([]byte, 1)); err != nil {
		t.Fatalf("read the first byte: %v", err)
	}
	return opened, accepted
}

// readFails reads st until an error and fails the test unless it comes
// within 5 s and is not a clean end (io.EOF).
func readFails(t *testing.T, what string, st transport.Stream) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, st)
		if err == nil {
			err = io.EOF // io.Copy reports a clean end as nil
		}
		done <- err
	}()
	select {
	case err := <-done:
		if errors.Is(err, io.EOF) {
			t.Fatalf("%s: read a clean end (%v), want an error", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: read still blocked after 5s", what)
	}
}

// writeFails writes to st until a write fails and fails the test unless
// that happens within 5 s.
func writeFails(t *testing.T, what string, st transport.Stream) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 32<<10)
		for {
			if _, err := st.Write(buf); err != nil {
				done <- err
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		st.Close() // ends the writer
		t.Fatalf("%s: writes still succeeding or blocked 5s after the abort", what)
	}
}

// testSessionCloseFailsStreams: when a session is closed, its open streams
// fail on both sides — an error, not the clean end a finished stream
// reads — so that a tunnel cut short is not taken for a complete one.
func testSessionCloseFailsStreams(t *testing.T, pair Pair) {
	c, s := mustPair(t, pair)
	opened, accepted := streamPair(t, c, s)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	readFails(t, "stream of the closed session", opened)
	readFails(t, "peer's stream of the closed session", accepted)
}

func testStreamsAreAborters(t *testing.T, pair Pair) {
	c, s := mustPair(t, pair)
	opened, accepted := streamPair(t, c, s)
	for what, st := range map[string]transport.Stream{"opened": opened, "accepted": accepted} {
		if _, ok := st.(transport.Aborter); !ok {
			t.Errorf("%s stream %T does not implement transport.Aborter", what, st)
		}
	}
}

func abort(t *testing.T, st transport.Stream) {
	t.Helper()
	a, ok := st.(transport.Aborter)
	if !ok {
		t.Fatalf("stream %T does not implement transport.Aborter", st)
	}
	if err := a.Abort(); err != nil {
		t.Fatalf("Abort: %v", err)
	}
}

// testAbortFailsPeerRead: a peer reading a stream that the other side
// aborts gets an error, not a clean end.
func testAbortFailsPeerRead(t *testing.T, pair Pair) {
	c, s := mustPair(t, pair)
	for _, dir := range []struct {
		name   string
		opener bool
	}{{"opener aborts", true}, {"acceptor aborts", false}} {
		t.Run(dir.name, func(t *testing.T) {
			opened, accepted := streamPair(t, c, s)
			aborting, peer := opened, accepted
			if !dir.opener {
				aborting, peer = accepted, opened
			}
			abort(t, aborting)
			readFails(t, "peer of an aborted stream", peer)
			writeFails(t, "peer of an aborted stream", peer)
		})
	}
}

// testAbortFailsBlockedPeerWrite: a peer writing into a stream that the
// other side no longer reads (its flow-control window full) learns of the
// abort: its write fails instead of blocking for good. This is a tunnel
// whose far end failed while the near end was uploading.
func testAbortFailsBlockedPeerWrite(t *testing.T, pair Pair) {
	c, s := mustPair(t, pair)
	opened, accepted := streamPair(t, c, s)
	blocked := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := accepted.Write(buf); err != nil {
				blocked <- err
				return
			}
		}
	}()
	// Nothing reads opened: the writer fills the flow-control windows and
	// blocks, before or after the abort.
	abort(t, opened)
	select {
	case err := <-blocked:
		if err == nil {
			t.Fatal("write after the abort returned no error")
		}
	case <-time.After(5 * time.Second):
		accepted.Close() // ends the writer
		<-blocked
		t.Fatal("peer's write still blocked 5s after the stream was aborted")
	}
}

// testAbortAfterCloseWriteFailsPeerWrite: an abort after CloseWrite still
// reaches the peer: its writes fail.
func testAbortAfterCloseWriteFailsPeerWrite(t *testing.T, pair Pair) {
	c, s := mustPair(t, pair)
	opened, accepted := streamPair(t, c, s)
	if err := opened.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	abort(t, opened)
	writeFails(t, "peer of a stream aborted after CloseWrite", accepted)
}

// testAbortUnblocksLocalRead: Abort, like Close, unblocks a Read in
// progress on the same stream (Splice aborts one direction from the
// other's goroutine).
func testAbortUnblocksLocalRead(t *testing.T, pair Pair) {
	c, s := mustPair(t, pair)
	opened, _ := streamPair(t, c, s)
	done := make(chan error, 1)
	go func() {
		_, err := opened.Read(make([]byte, 10))
		done <- err
	}()
	abort(t, opened) // while the Read blocks, or before it starts
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Read after Abort returned no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("local Read still blocked 5s after Abort")
	}
	// Abort after Abort, and Close after it, do nothing.
	abort(t, opened)
	if err := opened.Close(); err != nil {
		t.Fatalf("Close after Abort: %v", err)
	}
}

func testAcceptContext(t *testing.T, pair Pair) {
	c, _ := mustPair(t, pair)
	cctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.AcceptStream(cctx)
	if err == nil {
		t.Fatal("AcceptStream returned a stream nobody opened")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("AcceptStream error = %v, want context.DeadlineExceeded", err)
	}
}

func testDeadline(t *testing.T, pair Pair) {
	c, s := mustPair(t, pair)
	accepted := make(chan transport.Stream, 1)
	go func() {
		st, err := c.AcceptStream(ctx(t))
		if err == nil {
			accepted <- st
		}
	}()
	st, err := s.OpenStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.Write([]byte("x"))
	peer := <-accepted
	defer peer.Close()
	peer.SetDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 1)
	if _, err := io.ReadFull(peer, buf); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = peer.Read(buf)
	if err == nil {
		t.Fatal("Read past the deadline returned no error")
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("Read returned %v after the deadline", el)
	}
}

// TLSConfigs returns a server and a client TLS configuration for loopback
// tests: a fresh CA, a server and a client certificate, mutual TLS, ALPN
// tether/1. Keys live only in memory.
func TLSConfigs(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	leaf := func(serial int64, usage x509.ExtKeyUsage) tls.Certificate {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: "test"},
			DNSNames:     []string{"localhost"},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			KeyUsage:     x509.KeyUsageDigitalSignature,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
	}
	server = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{leaf(2, x509.ExtKeyUsageServerAuth)},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		NextProtos:   []string{protocol.ALPN},
	}
	client = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{leaf(3, x509.ExtKeyUsageClientAuth)},
		RootCAs:      pool,
		ServerName:   "localhost",
		NextProtos:   []string{protocol.ALPN},
	}
	return server, client
}
