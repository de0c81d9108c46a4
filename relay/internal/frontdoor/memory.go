package frontdoor

import (
	"sync"
	"sync/atomic"

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
type memoryBudget struct {
	cap  int64 // 0: no cap
	used atomic.Int64
}

// charge reserves MaxStreamMemory for a stream about to open, or refuses
// with unavailable when that would pass the cap. Once the stream is open,
// settle lowers the charge to its transport's worst case.
func (b *memoryBudget) charge() (*streamCharge, error) {
	if err := b.reserve(MaxStreamMemory); err != nil {
		return nil, err
	}
	return &streamCharge{b: b, n: MaxStreamMemory}, nil
}

// streamCharge is what one stream holds of the budget.
type streamCharge struct {
	b    *memoryBudget
	n    int64
	once sync.Once
}

// settle charges s's own worst case instead of the largest; call it
// before release can run.
func (c *streamCharge) settle(s transport.Stream) {
	n := streamMemory(s)
	c.b.release(c.n - n)
	c.n = n
}

// release gives the charge back; later calls do nothing.
func (c *streamCharge) release() { c.once.Do(func() { c.b.release(c.n) }) }

// reserve charges n bytes, or refuses with unavailable when the cap
// would be passed.
func (b *memoryBudget) reserve(n int64) error {
	if b.cap <= 0 {
		return nil
	}
	if v := b.used.Add(n); v > b.cap {
		b.used.Add(-n)
		return protocol.Errorf(protocol.CodeUnavailable,
			"the relay is at its stream memory cap (max_stream_memory %d MiB, %d MiB held for open streams at their worst case): try again later or through another relay",
			b.cap>>20, (v-n)>>20)
	}
	return nil
}

func (b *memoryBudget) release(n int64) {
	if b.cap > 0 {
		b.used.Add(-n)
	}
}
