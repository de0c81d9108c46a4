package transport_test

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/transport"
)

// startGatedSplice runs a splice whose copies use gate. When stall is
// set, the b side's socket buffers are made small, so that a bulk copy
// toward b blocks in its write as soon as the test stops reading bPeer.
func startGatedSplice(t *testing.T, gate *transport.CopyGate, stall bool, counter *transport.SpliceCounter) *splice {
	t.Helper()
	var prepare func(*splice)
	if stall {
		prepare = func(s *splice) {
			_ = s.b.SetWriteBuffer(16 << 10)
			_ = s.bPeer.SetReadBuffer(16 << 10)
		}
	}
	return startSpliceFunc(t, prepare, func(a, b transport.Stream) (transport.SpliceResult, error) {
		return transport.SpliceWith(a, b, transport.SpliceOptions{Counter: counter, Gate: gate})
	})
}

// feed writes n bytes to c from a goroutine the returned wait function
// waits for. The write ends early, with an error, when c is closed.
func feed(c net.Conn, data []byte) (wait func()) {
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = c.Write(data) })
	return wg.Wait
}

// readPast reads n bytes from c: a copy toward c that has delivered
// more than two small buffers' worth has used its large buffer.
func readPast(t *testing.T, c net.Conn, n int) {
	t.Helper()
	if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
		t.Fatalf("reading %d bytes: %v", n, err)
	}
}

// waitFor polls cond until it holds, failing the test after hangGuard.
// The gate's counters are the observable state here; nothing signals a
// change of them.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCopyGateBoundsBulkCopies runs four bulk splices of one gate of two
// slots (one tenant's) whose readers have stopped reading: two copies
// hold the slots, blocked in their writes, and two wait. Meanwhile an
// interactive splice of the same gate makes round trips without waiting,
// and a bulk splice of another gate (another tenant's) moves its data.
func TestCopyGateBoundsBulkCopies(t *testing.T) {
	gate := transport.NewCopyGate(2, 0) // no hold limit: a blocked write keeps its slot
	data := randomBytes(8<<20, 1)
	var stalled []*splice
	var waits []func()
	for range 4 {
		s := startGatedSplice(t, gate, true, nil)
		stalled = append(stalled, s)
		waits = append(waits, feed(s.aPeer, data))
	}
	defer func() {
		for _, s := range stalled {
			s.aPeer.Close()
			s.bPeer.Close()
		}
		for _, w := range waits {
			w()
		}
	}()
	waitFor(t, "two bulk copies holding the slots and two waiting", func() bool {
		return gate.InUse() == 2 && gate.Waiting() == 2
	})

	// An interactive direction of the saturated gate: 1-byte round trips.
	ia := startGatedSplice(t, gate, false, nil)
	one := make([]byte, 1)
	for i := range 200 {
		if _, err := ia.aPeer.Write([]byte{byte(i)}); err != nil {
			t.Fatalf("round trip %d: %v", i, err)
		}
		if _, err := io.ReadFull(ia.bPeer, one); err != nil || one[0] != byte(i) {
			t.Fatalf("round trip %d toward b: got %v, %v", i, one, err)
		}
		if _, err := ia.bPeer.Write(one); err != nil {
			t.Fatalf("round trip %d: %v", i, err)
		}
		if _, err := io.ReadFull(ia.aPeer, one); err != nil || one[0] != byte(i) {
			t.Fatalf("round trip %d toward a: got %v, %v", i, one, err)
		}
	}

	// Another tenant's gate gives its bulk copies slots of their own.
	other := transport.NewCopyGate(2, 0)
	ob := startGatedSplice(t, other, false, nil)
	bulk := randomBytes(4<<20, 2)
	wait := feed(ob.aPeer, bulk)
	got := make([]byte, len(bulk))
	_, err := io.ReadFull(ob.bPeer, got)
	wait()
	if err != nil || !bytes.Equal(got, bulk) {
		t.Fatalf("other tenant's bulk copy: read %v, equal %v", err, bytes.Equal(got, bulk))
	}

	if in, w := gate.InUse(), gate.Waiting(); in != 2 || w != 2 {
		t.Errorf("after the other splices: gate in use %d, waiting %d; want 2 and 2", in, w)
	}
	if in, w := other.InUse(), other.Waiting(); in != 0 || w != 0 {
		t.Errorf("other tenant's gate in use %d, waiting %d; want 0 and 0", in, w)
	}
}

// TestCopyGateSlowReaderGivesSlotBack: a bulk copy blocked in its write
// (its reader stopped) gives its slot back after the hold time, so
// another bulk copy of the same gate, with only one slot, still runs.
func TestCopyGateSlowReaderGivesSlotBack(t *testing.T) {
	gate := transport.NewCopyGate(1, 5*time.Millisecond)
	var slowCount transport.SpliceCounter
	slow := startGatedSplice(t, gate, true, &slowCount)
	waitSlow := feed(slow.aPeer, randomBytes(8<<20, 3))
	defer func() {
		slow.aPeer.Close()
		slow.bPeer.Close()
		waitSlow()
	}()
	// Once the slow direction has copied through its large buffer it is
	// bulk; when the test stops reading, its write blocks, holding the
	// slot.
	readPast(t, slow.bPeer, 2*transport.SmallCopyBuffer)

	fast := startGatedSplice(t, gate, false, nil)
	bulk := randomBytes(4<<20, 4)
	wait := feed(fast.aPeer, bulk)
	got := make([]byte, len(bulk))
	_, err := io.ReadFull(fast.bPeer, got)
	wait()
	if err != nil || !bytes.Equal(got, bulk) {
		t.Fatalf("bulk copy beside a stalled one: read %v, equal %v", err, bytes.Equal(got, bulk))
	}
	// The slow direction still copies once its reader reads again.
	before := slowCount.AToB.Load()
	if _, err := io.ReadFull(slow.bPeer, make([]byte, 1<<20)); err != nil {
		t.Fatalf("reading the slow splice again: %v", err)
	}
	waitFor(t, "the slow splice to move again", func() bool { return slowCount.AToB.Load() > before })
}

// TestSpliceWithoutGate: without a gate nothing waits (Splice's behaviour, the
// agent's): a stalled bulk copy does not stop another.
func TestSpliceWithoutGate(t *testing.T) {
	slow := startGatedSplice(t, nil, true, nil)
	waitSlow := feed(slow.aPeer, randomBytes(8<<20, 5))
	defer func() {
		slow.aPeer.Close()
		slow.bPeer.Close()
		waitSlow()
	}()
	readPast(t, slow.bPeer, 2*transport.SmallCopyBuffer)
	fast := startGatedSplice(t, nil, false, nil)
	bulk := randomBytes(1<<20, 6)
	wait := feed(fast.aPeer, bulk)
	got := make([]byte, len(bulk))
	_, err := io.ReadFull(fast.bPeer, got)
	wait()
	if err != nil || !bytes.Equal(got, bulk) {
		t.Fatalf("bulk copy: read %v, equal %v", err, bytes.Equal(got, bulk))
	}
}
