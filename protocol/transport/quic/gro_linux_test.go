//go:build linux && (amd64 || arm64)

package quic

import (
	"bytes"
	"errors"
	"net"
	"os"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// gsoControl is the control message that has the kernel cut a write into
// packets of size bytes (UDP_SEGMENT), as quic-go's sends do.
func gsoControl(size uint16) []byte {
	b := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = unix.IPPROTO_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&b[unix.CmsgLen(0)])) = size
	return b
}

func messages(n int) []ipv4.Message {
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 1452)}
		ms[i].OOB = make([]byte, 128)
	}
	return ms
}

// TestGROReceivesRunsAsPackets sends a run of packets in one write, as a
// QUIC sender with GSO does, and a single datagram after it, and checks
// that ReadBatch hands over every packet, whole and in order, with its
// source and its traffic class, and that the run came in one receive.
func TestGROReceivesRunsAsPackets(t *testing.T) {
	rc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	pc := PacketConn(rc)
	gc, ok := pc.(*groConn)
	if !ok {
		t.Fatalf("PacketConn returned a %T: the kernel refused UDP_GRO", pc)
	}
	// As quic-go does: the traffic class of every packet (for ECN).
	raw, _ := rc.SyscallConn()
	if err := raw.Control(func(fd uintptr) {
		if err := unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1); err != nil {
			t.Error(err)
		}
	}); err != nil {
		t.Fatal(err)
	}
	sc, err := net.DialUDP("udp4", nil, rc.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	sraw, _ := sc.SyscallConn()
	if err := sraw.Control(func(fd uintptr) {
		if err := unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, 0x02); err != nil { // ECT(0)
			t.Error(err)
		}
	}); err != nil {
		t.Fatal(err)
	}

	// Eleven packets of 1 200 bytes and a last one of 500, then a
	// lone datagram of 300.
	const size, run = 1200, 12
	var want [][]byte
	var runBytes []byte
	for i := range run {
		n := size
		if i == run-1 {
			n = 500
		}
		p := bytes.Repeat([]byte{byte('a' + i)}, n)
		want = append(want, p)
		runBytes = append(runBytes, p...)
	}
	if _, _, err := sc.WriteMsgUDP(runBytes, gsoControl(size), nil); err != nil {
		t.Skipf("this kernel does not segment UDP writes (GSO): %v", err)
	}
	lone := bytes.Repeat([]byte{'z'}, 300)
	want = append(want, lone)
	if _, err := sc.Write(lone); err != nil {
		t.Fatal(err)
	}

	rc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got [][]byte
	first := -1
	for len(got) < len(want) {
		ms := messages(8)
		n, err := gc.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("after %d packets: %v", len(got), err)
		}
		if first < 0 {
			first = n
		}
		for _, m := range ms[:n] {
			got = append(got, bytes.Clone(m.Buffers[0][:m.N]))
			if a, ok := m.Addr.(*net.UDPAddr); !ok || a.AddrPort() != sc.LocalAddr().(*net.UDPAddr).AddrPort() {
				t.Errorf("packet %d from %v, want %v", len(got)-1, m.Addr, sc.LocalAddr())
			}
			if tos, ok := trafficClass(t, m.OOB[:m.NN]); !ok || tos != 0x02 {
				t.Errorf("packet %d: traffic class %#x (found %v), want 0x02", len(got)-1, tos, ok)
			}
		}
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("packet %d: %d bytes of %q, want %d of %q", i, len(got[i]), got[i][:1], len(want[i]), want[i][:1])
		}
	}
	if first != 8 {
		t.Errorf("the first receive handed over %d packets; want 8 of the run's %d (the kernel kept the run together)", first, run)
	}
	if gc.batch != nil || groHeld.Load() != 0 {
		t.Errorf("%d batches held after the last packet", groHeld.Load())
	}
}

func trafficClass(t *testing.T, oob []byte) (byte, bool) {
	t.Helper()
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		t.Fatalf("control messages handed over do not parse: %v", err)
	}
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_UDP && m.Header.Type == unix.UDP_GRO {
			t.Error("the packet size message was handed over")
		}
		if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TOS && len(m.Data) == 1 {
			return m.Data[0], true
		}
	}
	return 0, false
}

// TestGRODeadlineAndClose checks that a ReadBatch waiting for packets
// ends at the connection's read deadline with a timeout (how quic-go
// stops its receive loop) and at Close with an error.
func TestGRODeadlineAndClose(t *testing.T) {
	rc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	gc, ok := PacketConn(rc).(*groConn)
	if !ok {
		t.Fatal("the kernel refused UDP_GRO")
	}
	rc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err = gc.ReadBatch(messages(8), 0)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("ReadBatch past the deadline: %v, want a timeout", err)
	}
	rc.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := gc.ReadBatch(messages(8), 0)
		done <- err
	}()
	rc.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ReadBatch on a closed connection: %v, want net.ErrClosed", err)
	}
}

// TestGROWaitHoldsNoBatch checks that a ReadBatch waiting for packets
// holds no batch of buffers (half a MiB each): an agent's socket waits
// most of the time, and a process may hold thousands of them. It looks
// once the reading goroutine is parked in the network poller.
func TestGROWaitHoldsNoBatch(t *testing.T) {
	rc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	gc, ok := PacketConn(rc).(*groConn)
	if !ok {
		t.Fatal("the kernel refused UDP_GRO")
	}
	done := make(chan error, 1)
	go func() {
		_, err := gc.ReadBatch(messages(8), 0)
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !parked("(*groConn).receive") {
		if time.Now().After(deadline) {
			t.Fatal("ReadBatch never waited in the poller")
		}
		time.Sleep(time.Millisecond)
	}
	if n := groHeld.Load(); n != 0 {
		t.Errorf("a waiting ReadBatch holds %d batches", n)
	}
	rc.Close()
	<-done
	if n := groHeld.Load(); n != 0 {
		t.Errorf("%d batches held after the read ended", n)
	}
}

// parked reports whether a goroutine with fn on its stack waits in the
// network poller.
func parked(fn string) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte(fn)) && bytes.Contains(g, []byte("runtime_pollWait")) {
			return true
		}
	}
	return false
}

// TestGROSplitControl checks the parse of a datagram's control messages,
// which must neither fail nor hand over the packet size on odd input.
func TestGROSplitControl(t *testing.T) {
	gro := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&gro[0]))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_GRO
	h.SetLen(unix.CmsgLen(4))
	*(*int32)(unsafe.Pointer(&gro[unix.CmsgLen(0)])) = 1350
	tos := make([]byte, unix.CmsgSpace(1))
	h = (*unix.Cmsghdr)(unsafe.Pointer(&tos[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_TOS
	h.SetLen(unix.CmsgLen(1))
	tos[unix.CmsgLen(0)] = 3

	seg, rest := splitControl(append(append([]byte{}, tos...), gro...), nil)
	if seg != 1350 || !bytes.Equal(rest, tos) {
		t.Errorf("tos+gro: size %d, rest %x; want 1350 and %x", seg, rest, tos)
	}
	seg, rest = splitControl(append(append([]byte{}, gro...), tos...), nil)
	if seg != 1350 || !bytes.Equal(rest, tos) {
		t.Errorf("gro+tos: size %d, rest %x; want 1350 and %x", seg, rest, tos)
	}
	if seg, rest = splitControl(nil, nil); seg != 0 || len(rest) != 0 {
		t.Errorf("none: %d, %x", seg, rest)
	}
	// Truncated: a header claiming more than there is.
	if seg, rest = splitControl(gro[:unix.CmsgLen(0)+2], nil); seg != 0 || len(rest) != 0 {
		t.Errorf("truncated: %d, %x", seg, rest)
	}
}
