package frontdoor

import (
	"sync"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/quic"
	"github.com/tetherhq/tether/protocol/transport/tcp"
)

// What one tunnel may make the relay hold in memory at worst: a backend
// that never reads while the service sends, or an agent that sends and
// never reads, fills the stream's receive window at the relay, and the
// splice holds a large copy buffer in each direction.
const (
	// YamuxStreamMemory is a stream over TLS+yamux (agent connections
	// over TCP and the links between relays): yamux buffers up to the
	// stream window (tcp.Config's MaxStreamWindowSize, 1 MiB) in a
	// bytes.Buffer, which may have grown to twice what it holds.
	YamuxStreamMemory = 2*tcpStreamWindow + 2*transport.LargeCopyBuffer
	// QUICStreamMemory is a stream over QUIC: quic-go's stream receive
	// window grows up to its MaxStreamReceiveWindow, 6 MiB by default,
	// which quic.Config leaves as it is.
	QUICStreamMemory = quicStreamWindow + 2*transport.LargeCopyBuffer
	// MaxStreamMemory is the larger of the two, what a stream is charged
	// while its carrier is not yet known.
	MaxStreamMemory = max(YamuxStreamMemory, QUICStreamMemory)

	tcpStreamWindow  = 1 << 20
	quicStreamWindow = 6 << 20
)

// streamMemory is what s is charged: the worst case of its transport.
func streamMemory(s transport.Stream) int64 {
	switch s.(type) {
	case *tcp.Stream:
		return YamuxStreamMemory
	case *quic.Stream:
		return QUICStreamMemory
	}
	return MaxStreamMemory
}

// memoryBudget is the relay's cap on what its open tunnels may hold:
// each is charged its worst case (streamMemory) while it is open, and a
// new stream that would take the total past the cap is refused.
//
// The cap is shared fairly between tenants once the relay is busy, the
// same idea as throttle.Sources.ShareWhenBusy for sources: while at most
// three quarters of the cap are held, any tenant's stream is charged up
// to that; past it, a tenant may hold at most a quarter of the cap (its
// share, and at least one stream's largest charge) and a stream that
// would take it past its share is refused, even with room left under the
// cap. One tenant alone, or one whose backends hold streams open (idle,
// or never reading), so gets three quarters of the cap at most, and the
// last quarter stays for the others: a tenant holding less than its
// share may open streams until the cap itself is reached. A relay
// serving one tenant so loses only that quarter (a busy threshold of a
// half cost it half the cap, and refused a single tenant's burst of new
// streams, each charged its largest until it opens, at half the cap).
type memoryBudget struct {
	cap int64 // 0: no cap

	mu   sync.Mutex       // guards used and held
	used int64            // charged in all
	held map[string]int64 // charged per tenant, for tenants with charges
}

// Why a stream was refused memory, as counted in
// tether_stream_memory_refusals_total.
const (
	memoryReasonCap   = "cap"          // the relay's cap would be passed
	memoryReasonShare = "tenant_share" // the relay is busy and the tenant has its share
)

// memoryRefusal is a refused charge: the refusal answered (unavailable)
// and why (memoryReasonCap or memoryReasonShare). It unwraps to the
// *protocol.Error answered.
type memoryRefusal struct {
	err    *protocol.Error
	reason string
}

func (r *memoryRefusal) Error() string { return r.err.Error() }
func (r *memoryRefusal) Unwrap() error { return r.err }

// share is the most a tenant may hold while the relay is busy: a quarter
// of the cap, and never less than one stream's largest charge, so that a
// tenant holding nothing is not refused with room left under a small cap
// (one under four streams' worst case, which the settings allow).
func (b *memoryBudget) share() int64 { return max(b.cap/4, MaxStreamMemory) }

// charge reserves MaxStreamMemory for a stream of tenant about to open,
// or refuses with unavailable (a *memoryRefusal) when that would pass the
// cap, or the tenant's share while the relay is busy. Once the stream is
// open, settle lowers the charge to its transport's worst case.
func (b *memoryBudget) charge(tenant string) (*streamCharge, error) {
	if err := b.reserve(tenant, MaxStreamMemory); err != nil {
		return nil, err
	}
	return &streamCharge{b: b, tenant: tenant, n: MaxStreamMemory}, nil
}

// streamCharge is what one stream holds of the budget.
type streamCharge struct {
	b      *memoryBudget
	tenant string
	n      int64
	once   sync.Once
}

// settle charges s's own worst case instead of the largest; call it
// before release can run.
func (c *streamCharge) settle(s transport.Stream) {
	n := streamMemory(s)
	c.b.release(c.tenant, c.n-n)
	c.n = n
}

// release gives the charge back; later calls do nothing.
func (c *streamCharge) release() { c.once.Do(func() { c.b.release(c.tenant, c.n) }) }

// reserve charges n bytes to tenant, or refuses with unavailable when
// the cap would be passed, or when more than three quarters of the cap
// would be held and tenant would hold more than its share.
func (b *memoryBudget) reserve(tenant string, n int64) error {
	if b.cap <= 0 {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	used, held := b.used+n, b.held[tenant]+n
	if used > b.cap {
		return &memoryRefusal{reason: memoryReasonCap, err: protocol.Errorf(protocol.CodeUnavailable,
			"the relay is at its stream memory cap (max_stream_memory %d MiB, %d MiB held for open streams at their worst case): try again later or through another relay",
			b.cap>>20, b.used>>20)}
	}
	if 4*used > 3*b.cap && held > b.share() {
		return &memoryRefusal{reason: memoryReasonShare, err: protocol.Errorf(protocol.CodeUnavailable,
			"tenant %q holds %d MiB of the relay's stream memory, its share while the relay is busy (a quarter of max_stream_memory %d MiB, of which %d MiB is held for open streams at their worst case): close some of the tenant's streams, try again later or through another relay",
			tenant, b.held[tenant]>>20, b.cap>>20, b.used>>20)}
	}
	b.used = used
	if b.held == nil {
		b.held = make(map[string]int64)
	}
	b.held[tenant] = held
	return nil
}

func (b *memoryBudget) release(tenant string, n int64) {
	if b.cap <= 0 || n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	if b.held[tenant] -= n; b.held[tenant] <= 0 {
		delete(b.held, tenant)
	}
}
