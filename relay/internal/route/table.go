package route

import (
	"context"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
)

// Carrier is anything a stream to a tenant's service can be opened on: a
// connection of one of the tenant's agents, or a link to a peer relay that
// holds one.
type Carrier interface {
	// OpenStream opens a stream, sends hdr and waits for the answer. When
	// early is not nil, it is attached to the stream with hdr (see
	// Early). A refusal comes back as *protocol.Error; anything else is a failure of
	// the carrier, worth trying another. While it waits, the carrier may
	// give up early when it stops answering and elsewhere reports that
	// another carrier could take the stream (an error that Stalled then
	// explains). A stream it returns counts in Load until StreamDone.
	OpenStream(ctx context.Context, hdr protocol.StreamHeader, early Early, elsewhere func() bool) (transport.Stream, error)
	// StreamDone uncounts a stream OpenStream returned, once it ended.
	StreamDone()
	// Usable reports whether new streams may go to the carrier at now.
	Usable(now time.Time) bool
	// Load is how many streams are open or being opened on it.
	Load() int64
	// Stalled reports whether the carrier stopped answering: a failure of
	// its open is then a timeout of its agent.
	Stalled() bool
	// Agent names the agent behind the carrier, for records.
	Agent() string
	// Tenant is the tenant it carries streams to.
	Tenant() string
}

// Early is a client's first bytes for the service, which go with each
// stream opened for them rather than after the agent's answer: the agent
// reads exactly the header (or a peer relay exactly its request), so they
// wait in the stream until the agent has connected to the service and
// answers OK, and are then the service's first bytes; a refusal discards
// them. That saves the client's first message a trip through the tunnel.
type Early interface {
	// Attach writes opening (the stream's encoded header or request) and
	// the bytes so far to st in one write, then the bytes that arrive
	// later as they arrive, until another stream is attached or the
	// bytes are no longer gathered. A carrier calls it once per stream,
	// before waiting for the answer.
	Attach(st io.Writer, opening []byte) error
	// Sent reports whether any of the client's bytes went to the stream
	// attached last (its write may have failed part way). The agent may
	// have handed them to the service before that stream failed, so the
	// router does not try another connection: the service could get them
	// twice (a request run twice).
	Sent() bool
}

// Table holds the carriers by tenant. It never hands a carrier to a
// stream of another tenant.
type Table struct {
	mu       sync.RWMutex // guards byTenant and changed
	byTenant map[string][]Carrier
	changed  chan struct{} // closed and replaced when a carrier is added
	// fresh holds a token when a tenant has gained its first carrier since
	// the token was last taken (see NewTenants).
	fresh chan struct{}
}

// NewTable returns an empty table.
func NewTable() *Table {
	return &Table{byTenant: map[string][]Carrier{}, changed: make(chan struct{}), fresh: make(chan struct{}, 1)}
}

// Add adds c.
func (t *Table) Add(c Carrier) {
	t.mu.Lock()
	defer t.mu.Unlock()
	list := t.byTenant[c.Tenant()]
	t.byTenant[c.Tenant()] = append(list, c)
	close(t.changed)
	t.changed = make(chan struct{})
	if len(list) == 0 {
		select {
		case t.fresh <- struct{}{}:
		default:
		}
	}
}

// Remove removes c.
func (t *Table) Remove(c Carrier) {
	t.mu.Lock()
	defer t.mu.Unlock()
	list := t.byTenant[c.Tenant()]
	for i, x := range list {
		if x == c {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(t.byTenant, c.Tenant())
	} else {
		t.byTenant[c.Tenant()] = list
	}
}

// Changes returns a channel closed at the next Add.
func (t *Table) Changes() <-chan struct{} {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.changed
}

// NewTenants returns a channel that yields after a tenant without carriers
// gains one; many such tenants before the next receive yield once.
func (t *Table) NewTenants() <-chan struct{} { return t.fresh }

// Tenants lists the tenants with at least one carrier.
func (t *Table) Tenants() []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]string, 0, len(t.byTenant))
	for name := range t.byTenant {
		out = append(out, name)
	}
	return out
}

// Connected returns how many carriers tenant has, usable or not.
func (t *Table) Connected(tenant string) int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.byTenant[tenant])
}

// Draining reports whether a carrier of tenant drains (its agent or relay
// said GoAway: the agent is moving to another connection) and has not
// stopped answering.
func (t *Table) Draining(tenant string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, c := range t.byTenant[tenant] {
		if d, ok := c.(interface{ Draining() bool }); ok && d.Draining() && !c.Stalled() {
			return true
		}
	}
	return false
}

// Stalled reports whether tenant has carriers and every one of them
// stopped answering.
func (t *Table) Stalled(tenant string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	list := t.byTenant[tenant]
	for _, c := range list {
		if !c.Stalled() {
			return false
		}
	}
	return len(list) > 0
}

// Pick returns the usable carrier of tenant with the fewest open streams,
// skipping those in exclude; ties are broken at random so load spreads.
func (t *Table) Pick(tenant string, exclude map[Carrier]bool) Carrier {
	t.mu.RLock()
	defer t.mu.RUnlock()
	list := t.byTenant[tenant]
	if len(list) == 0 {
		return nil
	}
	var best Carrier
	var bestLoad int64
	// One clock reading for the whole scan: a tenant may have thousands of
	// carriers, and reading the clock for each cost more than the rest of
	// the scan together.
	now := time.Now()
	start := rand.IntN(len(list))
	for i := range list {
		c := list[(start+i)%len(list)]
		if exclude[c] || !c.Usable(now) {
			continue
		}
		if n := c.Load(); best == nil || n < bestLoad {
			best, bestLoad = c, n
		}
	}
	return best
}
