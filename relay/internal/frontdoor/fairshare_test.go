package frontdoor

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/transport"
)

// TestCopySharesPerTenant: the streams of one tenant share one gate, two
// tenants have two, and a tenant's gate goes when its last stream ends.
func TestCopySharesPerTenant(t *testing.T) {
	s := newCopyShares()
	a1, doneA1 := s.take("a")
	a2, doneA2 := s.take("a")
	b1, doneB1 := s.take("b")
	if a1 != a2 {
		t.Errorf("two streams of tenant a got two gates, want one")
	}
	if a1 == b1 {
		t.Errorf("tenants a and b got the same gate, want one each")
	}
	doneA1()
	if a3, doneA3 := s.take("a"); a3 != a1 {
		t.Errorf("tenant a with a stream still open got a new gate")
	} else {
		doneA3()
	}
	doneA2()
	doneB1()
	if n := len(s.gates); n != 0 {
		t.Errorf("after every stream ended: got %d gates kept, want 0", n)
	}
}

// loopPair is the two ends of a loopback TCP connection. The dialed end
// is the test's and gets a deadline that turns a hang into a failure.
func loopPair(t *testing.T) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialed, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	accepted, err = ln.AcceptTCP()
	if err != nil {
		dialed.Close()
		t.Fatal(err)
	}
	_ = dialed.SetDeadline(time.Now().Add(20 * time.Second))
	return dialed, accepted
}

// TestCopySharesTenantFlood: tenant a's bulk streams, whose readers have
// stopped, take all of a's copy slots and more wait; tenant b's bulk copy
// and a's own interactive round trips still run. Real splices over
// loopback, as bridge runs them.
func TestCopySharesTenantFlood(t *testing.T) {
	shares := newCopyShares()
	// Stalled writes stand for writes in progress: they keep their slots.
	shares.hold = time.Minute
	var wg sync.WaitGroup
	var conns []*net.TCPConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()
	// splice starts a splice under tenant's gate; the test holds the
	// outer ends: in -> [front | splice | tunnel] -> out.
	splice := func(tenant string, stall bool) (in, out *net.TCPConn) {
		in, front := loopPair(t)
		out, tunnel := loopPair(t)
		conns = append(conns, in, front, tunnel, out)
		if stall {
			_ = tunnel.SetWriteBuffer(16 << 10) // a reader that stops blocks the copy toward it at once
			_ = out.SetReadBuffer(16 << 10)
		}
		gate, done := shares.take(tenant)
		wg.Go(func() {
			defer done()
			_, _ = transport.SpliceWith(front, tunnel, transport.SpliceOptions{Gate: gate})
		})
		return in, out
	}
	flood := bytes.Repeat([]byte("b"), 8<<20)
	n := shares.slots + 2
	for range n {
		in, _ := splice("a", true)
		wg.Go(func() { _, _ = in.Write(flood) })
	}
	gateA, doneA := shares.take("a")
	defer doneA()
	deadline := time.Now().Add(20 * time.Second)
	for gateA.InUse() != shares.slots || gateA.Waiting() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("tenant a's gate: in use %d, waiting %d; want %d and 2", gateA.InUse(), gateA.Waiting(), shares.slots)
		}
		time.Sleep(time.Millisecond)
	}

	in, out := splice("a", false)
	one := make([]byte, 1)
	for i := range 100 {
		if _, err := in.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(out, one); err != nil {
			t.Fatalf("tenant a's round trip %d: %v", i, err)
		}
	}

	in, out = splice("b", false)
	bulk := bytes.Repeat([]byte("x"), 4<<20)
	wg.Go(func() { _, _ = in.Write(bulk) })
	if _, err := io.ReadFull(out, make([]byte, len(bulk))); err != nil {
		t.Fatalf("tenant b's bulk copy while a's slots are taken: %v", err)
	}
	if in, w := gateA.InUse(), gateA.Waiting(); in != shares.slots || w != 2 {
		t.Errorf("tenant a's gate afterwards: in use %d, waiting %d; want %d and 2", in, w, shares.slots)
	}
}
