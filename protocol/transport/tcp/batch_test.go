package tcp

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/transport/transporttest"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes int
	bytes  int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes++
	c.bytes += len(p)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *countingConn) written() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

func (c *countingConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

func yamuxHeader(typ byte, length uint32) []byte {
	h := make([]byte, yamuxHeaderSize)
	h[1] = typ
	binary.BigEndian.PutUint32(h[4:8], 1)
	binary.BigEndian.PutUint32(h[8:12], length)
	return h
}

// A data frame's header and body, however many TLS records the body takes,
// reach the socket in one write; a frame without a body in one more.
func TestFrameConnBatchesHeaderAndBody(t *testing.T) {
	serverTLS, clientTLS := transporttest.TLSConfigs(t)
	a, b := transporttest.TCPPair(t)
	counted := &countingConn{Conn: a}
	client := tls.Client(NewRawConn(counted), clientTLS)
	server := tls.Server(NewRawConn(b), serverTLS)

	body := make([]byte, 200<<10) // 13 TLS records
	for i := range body {
		body[i] = byte(i * 31)
	}
	var want bytes.Buffer
	want.Write(yamuxHeader(yamuxTypeData, uint32(len(body))))
	want.Write(body)
	want.Write(yamuxHeader(1, 4096)) // a window update: no body

	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, want.Len())
		if _, err := io.ReadFull(server, buf); err != nil {
			t.Error(err)
		}
		got <- buf
	}()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	fc, ok := batching(client).(*frameConn)
	if !ok {
		t.Fatal("a TLS connection over a RawConn did not get batching")
	}
	before := counted.count()
	for _, p := range [][]byte{yamuxHeader(yamuxTypeData, uint32(len(body))), body, yamuxHeader(1, 4096)} {
		if n, err := fc.Write(p); err != nil || n != len(p) {
			t.Fatalf("write %d bytes: n=%d err=%v", len(p), n, err)
		}
	}
	if n := counted.count() - before; n != 2 {
		t.Errorf("two frames took %d socket writes, want 2", n)
	}
	if !bytes.Equal(<-got, want.Bytes()) {
		t.Fatal("the peer received different bytes")
	}
}

// Whatever mix of write and read sizes, RawConn's read-ahead delivers the
// exact byte stream.
func TestRawConnReadAhead(t *testing.T) {
	a, b := transporttest.TCPPair(t)
	r := NewRawConn(b)
	const total = 32 << 20
	src := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, total)
	for i := range data {
		data[i] = byte(src.Uint32())
	}
	go func() {
		sizes := rand.New(rand.NewPCG(3, 4))
		for off := 0; off < total; {
			n := min(total-off, 1+sizes.IntN(300<<10))
			if _, err := a.Write(data[off : off+n]); err != nil {
				t.Error(err)
				return
			}
			off += n
		}
		a.(*net.TCPConn).CloseWrite()
	}()
	sizes := rand.New(rand.NewPCG(5, 6))
	var got bytes.Buffer
	for {
		// Mostly record-sized reads like crypto/tls makes, some tiny, some
		// larger than the read-ahead chunk.
		var n int
		switch sizes.IntN(10) {
		case 0:
			n = 1 + sizes.IntN(16)
		case 1:
			n = readChunk + sizes.IntN(readChunk)
		default:
			n = 5 + sizes.IntN(17<<10)
		}
		p := make([]byte, n)
		m, err := r.Read(p)
		got.Write(p[:m])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("read %d bytes that differ from the %d written", got.Len(), len(data))
	}
	if r.rbuf != nil {
		t.Error("a read buffer is still held after the stream ended")
	}
}

// A window update that opens or accepts a stream waits for the frame after
// it and shares its socket write; alone, it still reaches the peer.
func TestFrameConnHoldsOpeningFrame(t *testing.T) {
	serverTLS, clientTLS := transporttest.TLSConfigs(t)
	a, b := transporttest.TCPPair(t)
	counted := &countingConn{Conn: a}
	raw := NewRawConn(counted)
	// Held far longer than the test takes, so that a slow machine cannot
	// fire the timer between the SYN and its data frame.
	raw.holdFor = time.Hour
	client := tls.Client(raw, clientTLS)
	server := tls.Server(NewRawConn(b), serverTLS)
	opening := func(flags uint16) []byte {
		h := yamuxHeader(yamuxTypeWindowUpdate, 256<<10)
		binary.BigEndian.PutUint16(h[2:4], flags)
		return h
	}
	body := []byte("stream header")
	frames := [][]byte{opening(yamuxFlagSYN), yamuxHeader(yamuxTypeData, uint32(len(body))), body}
	var want bytes.Buffer
	for _, p := range frames {
		want.Write(p)
	}
	lone := opening(yamuxFlagACK)
	want.Write(lone)

	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, want.Len())
		server.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(server, buf); err != nil {
			t.Error(err)
		}
		got <- buf
	}()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	fc := batching(client).(*frameConn)
	before := counted.count()
	for _, p := range frames {
		if n, err := fc.Write(p); err != nil || n != len(p) {
			t.Fatalf("write %d bytes: n=%d err=%v", len(p), n, err)
		}
	}
	if n := counted.count() - before; n != 1 {
		t.Errorf("a SYN and the data frame after it took %d socket writes, want 1", n)
	}
	raw.holdFor = time.Millisecond
	if _, err := fc.Write(lone); err != nil {
		t.Fatal(err)
	}
	// Nothing follows the ACK: the hold timer sends it.
	if !bytes.Equal(<-got, want.Bytes()) {
		t.Fatal("the peer received different bytes")
	}
	if n := counted.count() - before; n != 2 {
		t.Errorf("%d socket writes in all, want 2", n)
	}
}

// A small data frame travels as one TLS record with its header: the socket
// carries one record's overhead, not two.
func TestFrameConnOneRecordPerSmallFrame(t *testing.T) {
	serverTLS, clientTLS := transporttest.TLSConfigs(t)
	a, b := transporttest.TCPPair(t)
	counted := &countingConn{Conn: a}
	client := tls.Client(NewRawConn(counted), clientTLS)
	server := tls.Server(NewRawConn(b), serverTLS)
	go io.Copy(io.Discard, server)
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	fc := batching(client).(*frameConn)
	// TLS 1.3 adds a 5-byte record header, a content-type byte and a
	// 16-byte AEAD tag to every record.
	const recordOverhead = 5 + 1 + 16
	// (crypto/tls starts a connection with records of about one TCP
	// segment, so a fresh connection is tested with frames below that.)
	for _, size := range []int{1, 64, 1024} {
		body := make([]byte, size)
		before := counted.written()
		for _, p := range [][]byte{yamuxHeader(yamuxTypeData, uint32(size)), body} {
			if _, err := fc.Write(p); err != nil {
				t.Fatal(err)
			}
		}
		if got, want := counted.written()-before, yamuxHeaderSize+size+recordOverhead; got != want {
			t.Errorf("a %d-byte frame put %d bytes on the wire, want %d (one record)", size, got, want)
		}
	}
}

// A batch that fails to go out is the last: its TLS records' sequence
// numbers are spent, so no later batch or write reaches the socket (the
// peer would read it out of sequence), and each fails with the first
// error.
func TestRawConnFailedBatchIsFinal(t *testing.T) {
	a, b := transporttest.TCPPair(t)
	cc := &countingConn{Conn: a}
	raw := &RawConn{Conn: cc}
	raw.SetWriteDeadline(time.Now().Add(-time.Second)) // a deadline long past
	raw.begin()
	raw.Write([]byte("first"))
	first := raw.flush()
	if first == nil {
		t.Fatal("a batch written past its deadline did not fail")
	}
	tried := cc.written() // the failed write's, which the deadline kept off the wire
	raw.SetWriteDeadline(time.Time{})
	raw.begin()
	raw.Write([]byte("second"))
	if err := raw.flush(); err != first {
		t.Fatalf("the next batch: %v, want the first failure %v", err, first)
	}
	if _, err := raw.Write([]byte("third")); err != first {
		t.Fatalf("a write outside a batch: %v, want the first failure %v", err, first)
	}
	if n := cc.written() - tried; n != 0 {
		t.Fatalf("%d bytes went to the socket after the failure", n)
	}
	b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, _ := b.Read(make([]byte, 64)); n != 0 {
		t.Fatalf("the peer read %d bytes", n)
	}
}
