// Package streammem is the relay's cap on the memory its open streams may
// make it hold (max_stream_memory): one Budget per relay, which charges
// the streams opened through its front doors and the streams it carries
// for other relays of the cluster (forwarded to its agents) alike, each
// at its worst case, while it is open.
package streammem

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
	// Yamux is a stream over TLS+yamux (agent connections over TCP and
	// the links between relays): yamux buffers up to the stream window
	// (tcp.Config's MaxStreamWindowSize, 1 MiB) in a bytes.Buffer, which
	// may have grown to twice what it holds.
	Yamux = yamuxBuffer + 2*transport.LargeCopyBuffer
	// QUIC is a stream over QUIC: quic-go's stream receive window grows
	// up to its MaxStreamReceiveWindow, 6 MiB by default, which
	// quic.Config leaves as it is.
	QUIC = quicStreamWindow + 2*transport.LargeCopyBuffer
	// Max is the larger of the two, what a front door's stream is
	// charged while its carrier is not yet known.
	Max = max(Yamux, QUIC)

	// A stream another relay forwarded to this one (the holder) crosses
	// two receive windows here, not one: the link's yamux stream from
	// the entry relay, and the stream to this relay's agent. Each fills
	// on its own (an agent that never reads fills the link stream's, a
	// backend that never reads, through the entry relay, the agent
	// stream's), so the worst case is both full at once, and the
	// splice's two large copy buffers.
	//
	// ForwardedYamux is a forwarded stream to an agent over TCP (4.5
	// MiB), ForwardedQUIC one to an agent over QUIC (8.5 MiB), and
	// MaxForwarded the larger, what a forwarded stream is charged while
	// its agent's stream is not yet open.
	ForwardedYamux = yamuxBuffer + Yamux
	ForwardedQUIC  = yamuxBuffer + QUIC
	MaxForwarded   = max(ForwardedYamux, ForwardedQUIC)

	yamuxBuffer      = 2 * tcpStreamWindow
	tcpStreamWindow  = 1 << 20
	quicStreamWindow = 6 << 20
)

// Of is what a stream s through a front door is charged: the worst case
// of its transport, or Max when s is of another kind. A stream that
// wraps another (Wrapper: a stream forwarded to another relay, over its
// link's yamux stream) is charged as the one it wraps.
func Of(s transport.Stream) int64 {
	if w, ok := s.(Wrapper); ok {
		s = w.Transport()
	}
	switch s.(type) {
	case *tcp.Stream:
		return Yamux
	case *quic.Stream:
		return QUIC
	}
	return Max
}

// Wrapper is a stream over another stream of a transport, whose memory
// is that one's: the relay holds no buffer of its own for it.
type Wrapper interface {
	Transport() transport.Stream
}

// Forwarded is what a forwarded stream is charged once agent, its stream
// to this relay's agent, is open: the link stream's buffer and the worst
// case of agent's transport (ForwardedYamux, ForwardedQUIC), or
// MaxForwarded when agent is of another kind.
func Forwarded(agent transport.Stream) int64 {
	switch agent.(type) {
	case *tcp.Stream:
		return ForwardedYamux
	case *quic.Stream:
		return ForwardedQUIC
	}
	return MaxForwarded
}

// Budget is the relay's cap on what its open tunnels may hold: each is
// charged its worst case (Of, Forwarded) while it is open, and a new
// stream that would take the total past the cap is refused. A nil
// *Budget, or one of cap 0, caps nothing.
//
// The cap is shared fairly between tenants once the relay is busy, the
// same idea as throttle.Sources.ShareWhenBusy for sources: while at most
// three quarters of the cap are held, any tenant's stream is charged up
// to that; past it, a tenant may hold at most a quarter of the cap (its
// share, and at least the charge of the stream it opens) and a stream
// that would take it past its share is refused, even with room left
// under the cap. One tenant alone, or one whose backends hold streams
// open (idle, or never reading), so gets three quarters of the cap at
// most, and the last quarter stays for the others: a tenant holding less
// than its share may open streams until the cap itself is reached. A
// relay serving one tenant so loses only that quarter (a busy threshold
// of a half cost it half the cap, and refused a single tenant's burst of
// new streams, each charged its largest until it opens, at half the
// cap). A tenant's streams through the front doors and those forwarded
// to this relay by others count together.
type Budget struct {
	cap     int64 // 0: no cap
	refused func(tenant, backend, reason string)

	mu   sync.Mutex       // guards used and held
	used int64            // charged in all
	held map[string]int64 // charged per tenant, for tenants with charges
}

// New returns a budget of capacity bytes (0: no cap). refused, when not
// nil, is told of every refusal: the tenant, the backend the stream was
// for, and why (ReasonCap, ReasonShare).
func New(capacity int64, refused func(tenant, backend, reason string)) *Budget {
	return &Budget{cap: capacity, refused: refused}
}

// Why a stream was refused memory, as counted in
// tether_stream_memory_refusals_total.
const (
	ReasonCap   = "cap"          // the relay's cap would be passed
	ReasonShare = "tenant_share" // the relay is busy and the tenant has its share
)

// Refusal is a refused charge: the refusal answered (unavailable) and
// why (ReasonCap or ReasonShare). It unwraps to the *protocol.Error
// answered.
type Refusal struct {
	Err    *protocol.Error
	Reason string
}

func (r *Refusal) Error() string { return r.Err.Error() }
func (r *Refusal) Unwrap() error { return r.Err }

// Cap is the budget's capacity in bytes (0: no cap).
func (b *Budget) Cap() int64 {
	if b == nil {
		return 0
	}
	return b.cap
}

// Held is what the open streams are charged now, in bytes.
func (b *Budget) Held() int64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// HeldBy is what tenant's open streams are charged now, in bytes.
func (b *Budget) HeldBy(tenant string) int64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.held[tenant]
}

// Charge reserves Max for a stream of tenant for backend about to open
// through a front door, or refuses with unavailable (a *Refusal) when
// that would pass the cap, or the tenant's share while the relay is
// busy. Once the stream is open, Settle lowers the charge to its
// transport's worst case (Of).
func (b *Budget) Charge(tenant, backend string) (*Charge, error) {
	return b.charge(tenant, backend, Max, Of)
}

// ChargeForwarded is Charge for a stream another relay forwarded to this
// one: it reserves MaxForwarded, and Settle lowers it to Forwarded of
// the stream to the agent.
func (b *Budget) ChargeForwarded(tenant, backend string) (*Charge, error) {
	return b.charge(tenant, backend, MaxForwarded, Forwarded)
}

func (b *Budget) charge(tenant, backend string, n int64, settled func(transport.Stream) int64) (*Charge, error) {
	if err := b.reserve(tenant, n); err != nil {
		if b.refused != nil {
			b.refused(tenant, backend, err.Reason)
		}
		return nil, err
	}
	return &Charge{b: b, tenant: tenant, n: n, settled: settled}, nil
}

// Charge is what one stream holds of the budget.
type Charge struct {
	b       *Budget
	tenant  string
	n       int64
	settled func(transport.Stream) int64
	once    sync.Once
}

// Settle charges the worst case of s, the stream opened (Of, or
// Forwarded of the stream to the agent), instead of the largest; call it
// before Release can run.
func (c *Charge) Settle(s transport.Stream) {
	n := c.settled(s)
	c.b.release(c.tenant, c.n-n)
	c.n = n
}

// Release gives the charge back; later calls do nothing.
func (c *Charge) Release() { c.once.Do(func() { c.b.release(c.tenant, c.n) }) }

// share is the most a tenant may hold while the relay is busy, when it
// asks for n more: a quarter of the cap, and never less than n, so that
// a tenant holding nothing is not refused with room left under a small
// cap (one under four streams' worst case, which the settings allow).
func (b *Budget) share(n int64) int64 { return max(b.cap/4, n) }

// reserve charges n bytes to tenant, or refuses with unavailable when
// the cap would be passed, or when more than three quarters of the cap
// would be held and tenant would hold more than its share.
func (b *Budget) reserve(tenant string, n int64) *Refusal {
	if b == nil || b.cap <= 0 {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	used, held := b.used+n, b.held[tenant]+n
	if used > b.cap {
		return &Refusal{Reason: ReasonCap, Err: protocol.Errorf(protocol.CodeUnavailable,
			"the relay is at its stream memory cap (max_stream_memory %d MiB, %d MiB held for open streams at their worst case): try again later or through another relay",
			b.cap>>20, b.used>>20)}
	}
	if 4*used > 3*b.cap && held > b.share(n) {
		return &Refusal{Reason: ReasonShare, Err: protocol.Errorf(protocol.CodeUnavailable,
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

func (b *Budget) release(tenant string, n int64) {
	if b == nil || b.cap <= 0 || n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	if b.held[tenant] -= n; b.held[tenant] <= 0 {
		delete(b.held, tenant)
	}
}
