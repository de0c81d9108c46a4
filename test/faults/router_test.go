//go:build linux

package faults

import (
	"container/heap"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// This kernel has no tc netem, so the suite emulates it: the impairing
// router reads every packet between agent and relay from a TUN device
// (tunIn) in the router namespace, drops, corrupts and delays it as its
// settings say, and writes it, when due, into a second TUN device
// (tunOut), from which the kernel forwards it. It runs in the test
// process: the TUN devices are created from a thread switched into the
// router namespace (inNetns) and are used from any goroutine after that,
// so the settings are method calls, and the devices disappear with the
// process whatever happens to it.

// impairment is what the router does to every packet, in both directions
// (like netem on both interfaces). The zero value forwards every packet
// at once.
type impairment struct {
	Loss    float64       // probability that a packet is dropped
	Delay   time.Duration // added to every packet ...
	Jitter  time.Duration // ... give or take up to this, uniformly
	Reorder float64       // probability that a packet skips the delay, overtaking those before it
	Corrupt float64       // probability that one bit of a packet's payload (past the IP header) is flipped
}

func (m impairment) String() string {
	return fmt.Sprintf("loss %.3g%%, delay %v ± %v, reorder %.3g%%, corrupt %.3g%%", 100*m.Loss, m.Delay, m.Jitter, 100*m.Reorder, 100*m.Corrupt)
}

// fate is what happens to one packet.
type fate struct {
	drop    bool
	delay   time.Duration
	reorder bool // sent at once, ahead of delayed packets
	flipBit int  // bit of the packet to flip, or -1
}

// decide draws one packet's fate. A packet too short to hold an IPv4
// header and a byte of payload is never corrupted.
func (m impairment) decide(rng *rand.Rand, pkt []byte) fate {
	f := fate{flipBit: -1}
	if m.Loss > 0 && rng.Float64() < m.Loss {
		f.drop = true
		return f
	}
	if m.Corrupt > 0 && rng.Float64() < m.Corrupt {
		if hl, ok := ipv4HeaderLen(pkt); ok && len(pkt) > hl {
			f.flipBit = 8*hl + rng.IntN(8*(len(pkt)-hl))
		}
	}
	if m.Reorder > 0 && rng.Float64() < m.Reorder {
		f.reorder = true
		return f
	}
	f.delay = m.Delay
	if m.Jitter > 0 {
		f.delay += time.Duration(rng.Int64N(int64(2*m.Jitter)+1)) - m.Jitter
	}
	f.delay = max(f.delay, 0)
	return f
}

// ipv4HeaderLen is the length of pkt's IPv4 header, if pkt starts with
// a well-formed one.
func ipv4HeaderLen(pkt []byte) (int, bool) {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return 0, false
	}
	hl := int(pkt[0]&0x0f) * 4
	if hl < 20 || hl > len(pkt) {
		return 0, false
	}
	return hl, true
}

// routerStats count packets.
type routerStats struct {
	Read, Dropped, Corrupted, Reordered, Written, OutOfOrder, WriteErrors atomic.Int64
}

func (s *routerStats) String() string {
	return fmt.Sprintf("%d packets read, %d dropped, %d corrupted, %d sent ahead, %d written (%d out of order), %d write errors",
		s.Read.Load(), s.Dropped.Load(), s.Corrupted.Load(), s.Reordered.Load(), s.Written.Load(), s.OutOfOrder.Load(), s.WriteErrors.Load())
}

// router is the impairing router of one topology.
type router struct {
	in, out *os.File
	setting atomic.Pointer[impairment]
	stats   routerStats
	queue   chan queued
	wg      sync.WaitGroup // the reader and the scheduler

	mu      sync.Mutex // guards sources
	sources map[netip.Addr]int64

	once sync.Once
}

// queued is a packet waiting to be written.
type queued struct {
	due time.Time
	seq int64 // order of arrival
	pkt []byte
}

// startRouter creates the TUN devices in tp's router namespace, routes
// table routingTable into tunIn and starts forwarding with no impairment.
// A cleanup stops it.
func startRouter(t *testing.T, tp *topology) *router {
	t.Helper()
	r := &router{queue: make(chan queued, 1024), sources: make(map[netip.Addr]int64)}
	r.setting.Store(&impairment{})
	must(t, inNetns(tp.router, func() error {
		var err error
		if r.in, err = openTUN("tunIn"); err != nil {
			return err
		}
		if r.out, err = openTUN("tunOut"); err != nil {
			r.in.Close()
			return err
		}
		return nil
	}))
	t.Cleanup(r.close)
	for _, dev := range []string{"tunIn", "tunOut"} {
		mustIP(t, "-n", tp.router, "link", "set", "dev", dev, "up")
	}
	mustIP(t, "-n", tp.router, "route", "add", "default", "dev", "tunIn", "table", routingTable)
	r.wg.Go(r.read)
	r.wg.Go(r.schedule)
	return r
}

// openTUN creates TUN device name (IPv4 packets without a header of
// TUN's own) in the calling thread's namespace; it lives until the file
// is closed. The file is non-blocking, so Close interrupts a Read.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUN device %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("create TUN device %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tun:"+name), nil
}

// from is how many packets the router has read from source address a.
func (r *router) from(a netip.Addr) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sources[a]
}

// set replaces the impairment; packets already queued keep their fate.
func (r *router) set(m impairment) { r.setting.Store(&m) }

// close stops the router and removes its devices; it waits for its
// goroutines.
func (r *router) close() {
	r.once.Do(func() {
		r.in.Close() // ends read, which closes the queue and so ends schedule
		r.wg.Wait()
		r.out.Close()
	})
}

// read takes packets from tunIn, draws their fate and queues the
// survivors.
func (r *router) read() {
	defer close(r.queue)
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	buf := make([]byte, 1<<16)
	var seq int64
	for {
		n, err := r.in.Read(buf)
		if err != nil {
			return // closed
		}
		r.stats.Read.Add(1)
		pkt := buf[:n]
		if _, ok := ipv4HeaderLen(pkt); ok {
			r.mu.Lock()
			r.sources[netip.AddrFrom4([4]byte(pkt[12:16]))]++
			r.mu.Unlock()
		}
		f := r.setting.Load().decide(rng, pkt)
		if f.drop {
			r.stats.Dropped.Add(1)
			continue
		}
		pkt = append([]byte(nil), pkt...)
		if f.flipBit >= 0 {
			pkt[f.flipBit/8] ^= 1 << (f.flipBit % 8)
			r.stats.Corrupted.Add(1)
		}
		if f.reorder {
			r.stats.Reordered.Add(1)
		}
		seq++
		r.queue <- queued{due: time.Now().Add(f.delay), seq: seq, pkt: pkt}
	}
}

// schedule writes queued packets into tunOut when due, earliest first.
func (r *router) schedule() {
	var pending packetHeap
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var lastSeq int64
	for {
		now := time.Now()
		for len(pending) > 0 && !pending[0].due.After(now) {
			q := heap.Pop(&pending).(queued)
			if q.seq < lastSeq {
				r.stats.OutOfOrder.Add(1)
			}
			lastSeq = max(lastSeq, q.seq)
			if _, err := r.out.Write(q.pkt); err != nil && !errors.Is(err, os.ErrClosed) {
				// The kernel refuses a packet it cannot route: count it
				// as lost.
				r.stats.WriteErrors.Add(1)
				continue
			}
			r.stats.Written.Add(1)
		}
		if len(pending) > 0 {
			timer.Reset(time.Until(pending[0].due))
		}
		select {
		case q, ok := <-r.queue:
			if !ok {
				return
			}
			heap.Push(&pending, q)
		case <-timer.C:
		}
	}
}

// packetHeap orders queued packets by due time, then arrival.
type packetHeap []queued

func (h packetHeap) Len() int { return len(h) }
func (h packetHeap) Less(i, j int) bool {
	if !h[i].due.Equal(h[j].due) {
		return h[i].due.Before(h[j].due)
	}
	return h[i].seq < h[j].seq
}
func (h packetHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *packetHeap) Push(x any)   { *h = append(*h, x.(queued)) }
func (h *packetHeap) Pop() any {
	old := *h
	q := old[len(old)-1]
	*h = old[:len(old)-1]
	return q
}
