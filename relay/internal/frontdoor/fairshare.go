package frontdoor

import (
	"runtime"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol/transport"
)

// Fair scheduling of the copy work between tenants. Every bridged stream
// of a tenant copies under the tenant's transport.CopyGate: at most
// copySlotsPerCPU × GOMAXPROCS of its bulk writes run at once, however many
// bulk streams it has, so a tenant that floods the relay with downloads
// has a few goroutines runnable at a time instead of hundreds, and the
// small reads and writes of other tenants (and its own) do not queue for
// the CPU behind them. A bulk write blocked on a slow reader gives its
// slot back after copyHold.
const (
	copySlotsPerCPU = 2
	copyHold        = 5 * time.Millisecond
)

// copyShares holds the gates of the tenants with streams bridged here.
type copyShares struct {
	slots int
	hold  time.Duration
	mu    sync.Mutex // guards gates
	gates map[string]*tenantGate
}

type tenantGate struct {
	gate    *transport.CopyGate
	streams int // bridged streams using gate
}

func newCopyShares() *copyShares {
	return &copyShares{slots: copySlotsPerCPU * runtime.GOMAXPROCS(0), hold: copyHold, gates: make(map[string]*tenantGate)}
}

// take returns tenant's gate for one stream; done gives it back when the
// stream ends. A tenant's gate lives while it has streams.
func (s *copyShares) take(tenant string) (gate *transport.CopyGate, done func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tg := s.gates[tenant]
	if tg == nil {
		tg = &tenantGate{gate: transport.NewCopyGate(s.slots, s.hold)}
		s.gates[tenant] = tg
	}
	tg.streams++
	return tg.gate, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if tg.streams--; tg.streams == 0 {
			delete(s.gates, tenant)
		}
	}
}
