//go:build linux && (amd64 || arm64)

package quic

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// Receive offload (UDP_GRO). A QUIC sender hands the kernel a run of
// equal-sized packets in one call (GSO, which quic-go uses); with UDP_GRO
// on the receiving socket the kernel keeps such a run together, on
// loopback and through software GRO on a network interface, and one
// receive returns up to 64 KiB of packets with their size in a control
// message. quic-go does not ask for it (quic-go/quic-go#3838), but reads
// through a connection's ReadBatch when it has one: groConn gives it one
// that receives runs and hands quic-go one packet per message, as if the
// kernel had delivered them one by one.

const (
	// groDatagrams is how many datagrams (each a run of packets, or
	// one) one receive call asks for: quic-go's own batch.
	groDatagrams = 8
	// groBuffer holds the largest run the kernel coalesces (a UDP
	// datagram's length field limits it to 64 KiB).
	groBuffer = 1 << 16
	// groControl holds a datagram's control messages: its traffic class
	// (ECN), its destination (packet info) and the run's packet size.
	groControl = 256
)

// mmsghdr is struct mmsghdr of recvmmsg(2) on 64-bit Linux.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}

// groBatch is the memory of one receive call: a buffer, a source address
// and room for control messages for each datagram, and the headers that
// point at them. Batches are pooled and held only while quic-go has
// packets of theirs to take, so that an idle connection holds none.
type groBatch struct {
	hdrs  [groDatagrams]mmsghdr
	iovs  [groDatagrams]unix.Iovec
	names [groDatagrams]unix.RawSockaddrInet6
	ctl   [groDatagrams][groControl]byte
	bufs  [groDatagrams][groBuffer]byte
}

var groBatches = sync.Pool{New: func() any {
	b := new(groBatch)
	for i := range b.hdrs {
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(groBuffer)
		h := &b.hdrs[i].hdr
		h.Iov = &b.iovs[i]
		h.SetIovlen(1)
	}
	return b
}}

// groHeld counts the batches taken from the pool and not given back.
var groHeld atomic.Int64

// takeBatch takes a batch from the pool, ready for a receive call.
func takeBatch() *groBatch {
	groHeld.Add(1)
	b := groBatches.Get().(*groBatch)
	b.reset()
	return b
}

// giveBatch gives b back to the pool.
func giveBatch(b *groBatch) {
	groHeld.Add(-1)
	groBatches.Put(b)
}

// reset readies b's headers for a receive call (which overwrites their
// lengths).
func (b *groBatch) reset() {
	for i := range b.hdrs {
		h := &b.hdrs[i].hdr
		b.names[i] = unix.RawSockaddrInet6{}
		h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Control = &b.ctl[i][0]
		h.SetControllen(groControl)
		h.Flags = 0
		b.hdrs[i].n = 0
	}
}

// groConn is a UDP socket with receive offload on, whose ReadBatch quic-go
// uses to receive.
type groConn struct {
	*net.UDPConn
	raw syscall.RawConn

	// What the last receive call returned and quic-go has not taken yet:
	// datagrams [next, n) of batch, the first of them from byte off.
	batch *groBatch
	n     int
	next  int
	off   int
	seg   int    // the packet size of datagram next
	ctl   []byte // its control messages but the packet size

	// The source of datagram next (and of the last one, between
	// batches), as the kernel wrote it and as an address: datagrams from
	// one peer share one *net.UDPAddr, which nobody modifies.
	name   unix.RawSockaddrInet6
	addr   net.Addr
	ctlBuf [groControl]byte
}

// PacketConn returns the connection quic-go should be given for c: on
// Linux, one that receives runs of packets with one system call (UDP_GRO);
// where the kernel refuses the option, or elsewhere, c itself.
func PacketConn(c *net.UDPConn) net.PacketConn {
	if os.Getenv("TETHER_QUIC_DISABLE_GRO") == "1" {
		return c
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return c
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	}); err != nil || serr != nil {
		return c
	}
	return &groConn{UDPConn: c, raw: raw}
}

// ReadBatch fills ms with received packets, one per message, and says how
// many it filled. It blocks until there is at least one. Only one
// goroutine may call it at a time (quic-go's receive loop).
func (c *groConn) ReadBatch(ms []ipv4.Message, _ int) (int, error) {
	for i := range ms {
		if len(ms[i].Buffers) == 0 {
			return 0, errors.New("quic: ReadBatch given a message without a buffer")
		}
	}
	if len(ms) == 0 {
		return 0, nil
	}
	// A receive can return only datagrams not worth handing over (empty,
	// or from an address of no known family): then receive again, since
	// quic-go takes a batch of none for a batch of stale messages.
	for c.batch == nil {
		if err := c.receive(); err != nil {
			return 0, err
		}
	}
	filled := 0
	for filled < len(ms) && c.batch != nil {
		h := &c.batch.hdrs[c.next]
		end := min(c.off+c.seg, int(h.n))
		m := &ms[filled]
		m.N = copy(m.Buffers[0], c.batch.bufs[c.next][c.off:end])
		m.NN = copy(m.OOB, c.ctl)
		m.Flags = 0
		m.Addr = c.addr
		filled++
		c.off = end
		if c.off >= int(h.n) {
			c.advance(c.next + 1)
		}
	}
	return filled, nil
}

// receive waits for datagrams and receives as many as are there, up to
// groDatagrams, into a batch of their own.
func (c *groConn) receive() error {
	var b *groBatch
	var n int
	var errno syscall.Errno
	err := c.raw.Read(func(fd uintptr) bool {
		// A batch is taken for each attempt and given back when there
		// was nothing to receive, so that a connection waiting for
		// packets holds none (an agent's socket waits most of the time).
		b = takeBatch()
		for {
			r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), groDatagrams, unix.MSG_DONTWAIT, 0, 0)
			n, errno = int(r), e
			if errno != unix.EINTR {
				break
			}
		}
		if errno == unix.EAGAIN {
			giveBatch(b)
			b = nil
			return false
		}
		return true
	})
	if err == nil && errno != 0 {
		err = os.NewSyscallError("recvmmsg", errno)
	}
	if err != nil {
		if b != nil {
			giveBatch(b)
		}
		return &net.OpError{Op: "read", Net: "udp", Source: c.LocalAddr(), Err: err}
	}
	c.batch, c.n = b, n
	c.advance(0)
	return nil
}

// advance moves to datagram i of the batch, skipping empty ones, and
// returns the batch to the pool after its last.
func (c *groConn) advance(i int) {
	for ; i < c.n; i++ {
		h := &c.batch.hdrs[i]
		if h.n == 0 {
			continue
		}
		if name := &c.batch.names[i]; c.addr == nil || *name != c.name {
			c.name, c.addr = *name, sockaddr(name, h.hdr.Namelen)
		}
		if c.addr == nil {
			continue
		}
		c.next, c.off = i, 0
		c.seg, c.ctl = splitControl(c.batch.ctl[i][:h.hdr.Controllen], c.ctlBuf[:0])
		if c.seg <= 0 {
			c.seg = int(h.n)
		}
		return
	}
	giveBatch(c.batch)
	c.batch, c.n, c.next, c.off, c.ctl = nil, 0, 0, 0, nil
}

// splitControl finds the packet size (UDP_GRO) among a datagram's control
// messages, and returns it (0 when absent: one packet) and the other
// messages, which hold for every packet of the run, appended to rest.
func splitControl(ctl, rest []byte) (seg int, _ []byte) {
	for b := ctl; len(b) > 0; {
		h, body, remainder, err := unix.ParseOneSocketControlMessage(b)
		if err != nil {
			break
		}
		whole := b[:len(b)-len(remainder)]
		b = remainder
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO && len(body) >= 4 {
			seg = int(int32(binary.NativeEndian.Uint32(body)))
			continue
		}
		rest = append(rest, whole...)
	}
	return seg, rest
}

// sockaddr is the UDP address the kernel wrote into sa, or nil.
func sockaddr(sa *unix.RawSockaddrInet6, n uint32) net.Addr {
	switch sa.Family {
	case unix.AF_INET:
		if n < unix.SizeofSockaddrInet4 {
			return nil
		}
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&s4.Port))[:])
		return net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), port))
	case unix.AF_INET6:
		if n < unix.SizeofSockaddrInet6 {
			return nil
		}
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		ip := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			// The interface's index: the net package takes it as a
			// zone, without a lookup of its name per datagram.
			ip = ip.WithZone(strconv.FormatUint(uint64(sa.Scope_id), 10))
		}
		return net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, port))
	}
	return nil
}
