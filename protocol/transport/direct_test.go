package transport_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/transport"
)

// directIO: transport.Direct does raw-system-call I/O here (Linux but
// linux/386; direct_linux.go).
const directIO = runtime.GOOS == "linux" && runtime.GOARCH != "386"

// directPair returns a loopback TCP connection whose first end does its I/O
// through transport.Direct, and the plain other end.
func directPair(t *testing.T) (net.Conn, *net.TCPConn) {
	t.Helper()
	a, b := tcpPair(t)
	d := transport.Direct(a)
	t.Cleanup(func() { d.Close(); b.Close() })
	if directIO {
		if _, plain := d.(*net.TCPConn); plain {
			t.Fatal("Direct returned the plain connection on Linux")
		}
	}
	return d, b
}

func TestDirectLeavesOtherConnectionsAlone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := transport.Direct(a); got != a {
		t.Fatalf("Direct(net.Pipe end) = %T, want the connection itself", got)
	}
}

// Megabytes each way at once, through socket buffers far smaller, so both
// ends wait for the poller many times: every byte arrives, in order.
func TestDirectMovesBulkBothWays(t *testing.T) {
	d, p := directPair(t)
	for _, c := range []*net.TCPConn{p} {
		c.SetReadBuffer(16 << 10)
		c.SetWriteBuffer(16 << 10)
	}
	out := make([]byte, 8<<20)
	back := make([]byte, 8<<20)
	for i := range out {
		out[i] = byte(rand.Uint32())
		back[i] = byte(rand.Uint32())
	}
	errs := make(chan error, 3)
	go func() { // d → p: one big Write, which must write all of it
		n, err := d.Write(out)
		if err == nil && n != len(out) {
			err = io.ErrShortWrite
		}
		errs <- err
	}()
	go func() { // p → d
		_, err := p.Write(back)
		errs <- err
	}()
	gotOut := make([]byte, len(out))
	gotBack := make([]byte, len(back))
	go func() {
		_, err := io.ReadFull(p, gotOut)
		errs <- err
	}()
	if _, err := io.ReadFull(d, gotBack); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(gotOut, out) || !bytes.Equal(gotBack, back) {
		t.Fatal("data differs after the round trip")
	}
}

func TestDirectReadsEOFAfterCloseWrite(t *testing.T) {
	d, p := directPair(t)
	if _, err := p.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	p.CloseWrite()
	got, err := io.ReadAll(d)
	if err != nil || string(got) != "last words" {
		t.Fatalf("ReadAll = %q, %v", got, err)
	}
	if n, err := d.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Fatalf("Read after EOF = %d, %v; want 0, io.EOF", n, err)
	}
	// Half-close the other way too: the plain end reads EOF.
	if err := d.(transport.Stream).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(p); err != nil {
		t.Fatal(err)
	}
}

func TestDirectZeroLengthRead(t *testing.T) {
	d, _ := directPair(t)
	if n, err := d.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) = %d, %v; want 0, nil", n, err)
	}
}

func TestDirectHonoursDeadlines(t *testing.T) {
	d, _ := directPair(t)
	d.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := d.Read(make([]byte, 8))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past its deadline: %v is not a net.Error timeout", err)
	}
	// Nobody reads the other end: writes fill the buffers, then time out.
	// (A second, not less: the write must start before the deadline on a
	// loaded machine.)
	d.SetWriteDeadline(time.Now().Add(time.Second))
	n, err := d.Write(make([]byte, 64<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) || n <= 0 || n >= 64<<20 {
		t.Fatalf("Write past its deadline = %d, %v; want some bytes and os.ErrDeadlineExceeded", n, err)
	}
}

func TestDirectCloseUnblocksRead(t *testing.T) {
	d, _ := directPair(t)
	done := make(chan error, 1)
	go func() {
		_, err := d.Read(make([]byte, 8))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let Read reach the poller; the test passes either way
	d.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) || !transport.IsClosedErr(err) {
			t.Fatalf("Read on a closed connection: %v, want net.ErrClosed", err)
		}
	case <-time.After(hangGuard):
		t.Fatal("Close did not unblock Read")
	}
}

// A write to a peer that reset the connection fails with the error
// net.TCPConn would return.
func TestDirectWriteToResetPeer(t *testing.T) {
	d, p := directPair(t)
	p.SetLinger(0)
	p.Close()
	deadline := time.Now().Add(hangGuard)
	var err error
	for err == nil && time.Now().Before(deadline) {
		_, err = d.Write(make([]byte, 4096))
	}
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("Write to a reset peer: %v, want ECONNRESET or EPIPE", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "write" || oe.Addr == nil {
		t.Fatalf("Write error %v is not a *net.OpError naming the write and the peer", err)
	}
}

func TestDirectListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dl := transport.DirectListener(ln)
	defer dl.Close()
	var dialer sync.WaitGroup
	defer dialer.Wait()
	dialer.Go(func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	})
	c, err := dl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, plain := c.(*net.TCPConn); plain && directIO {
		t.Fatal("DirectListener accepted a plain connection on Linux")
	}
	if got, err := io.ReadAll(c); err != nil || string(got) != "hi" {
		t.Fatalf("read %q, %v", got, err)
	}
	dl.Close()
	if _, err := dl.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
}
