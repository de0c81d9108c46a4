package route

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/relay/internal/datadir"
)

// Config configures a Router.
type Config struct {
	Table *Table
	// StreamOpenTimeout bounds a whole Dial, retries included.
	StreamOpenTimeout time.Duration
	// ReconnectGrace is how long after the start a stream to a tenant on
	// the roster waits for one of its agents to come back.
	ReconnectGrace time.Duration
	// Dir keeps the roster of tenants with agents connected.
	Dir    *datadir.Dir
	Logger *slog.Logger
	Now    func() time.Time
}

// Router dials streams over the carriers of a Table.
//
// After a restart, a relay knows no agent until each reconnects, which
// takes a fleet seconds (agents notice the restart at their next heartbeat
// and back off with jitter). A backend stream opened in that window to a
// tenant whose agent is on its way back should wait for it rather than
// fail. The roster is how the router tells those tenants from tenants
// with no agent at all: the set of tenants with a connected agent,
// written to the data directory when a tenant gains its first agent (at
// most once per rosterMinGap), every rosterInterval (which also drops
// tenants whose agents left) and at shutdown, and read at start. A relay
// that crashes thus expects back every tenant whose agent had been
// connected for rosterMinGap.
type Router struct {
	cfg      Config
	started  time.Time
	expected map[string]bool // tenants with agents connected before the last stop
}

const (
	rosterInterval = 10 * time.Second
	rosterMinGap   = time.Second
	// maxAttempts is how many carriers a stream open tries when carriers
	// fail underneath it (a relay restart, a dying agent).
	maxAttempts = 3
)

// NewRouter returns a router that expects back the tenants of the roster
// in cfg.Dir; its reconnect grace starts now.
func NewRouter(cfg Config) *Router {
	expected, err := cfg.Dir.LoadRoster()
	if err != nil {
		cfg.Logger.Warn("ignoring the roster of connected tenants", "err", err)
	}
	return &Router{cfg: cfg, started: time.Now(), expected: expected}
}

// Run keeps the roster until ctx ends. At shutdown, the relay writes it a
// last time (SaveRoster) before its agents leave: they are expected back.
func (r *Router) Run(ctx context.Context) error {
	t := time.NewTicker(rosterInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			r.SaveRoster()
		case <-r.cfg.Table.NewTenants():
			r.SaveRoster()
			gap := time.NewTimer(rosterMinGap)
			select {
			case <-ctx.Done():
				gap.Stop()
				return nil
			case <-gap.C:
			}
		}
	}
}

// SaveRoster writes the tenants with carriers. Tenants expected back from
// the previous run stay on it until the reconnect grace is over, so a
// second restart inside the grace forgets nobody.
func (r *Router) SaveRoster() {
	tenants := r.cfg.Table.Tenants()
	if r.inGrace() {
		for t := range r.expected {
			if !slices.Contains(tenants, t) {
				tenants = append(tenants, t)
			}
		}
	}
	if err := r.cfg.Dir.SaveRoster(tenants, r.cfg.Now()); err != nil {
		r.cfg.Logger.Warn("save roster of connected tenants", "err", err)
	}
}

// inGrace reports whether the router started less than ReconnectGrace ago.
func (r *Router) inGrace() bool { return time.Since(r.started) < r.cfg.ReconnectGrace }

// awaitCarrier waits, during the reconnect grace, for a carrier of a tenant
// expected back. It returns nil at once for other tenants, and when ctx or
// the grace ends first.
func (r *Router) awaitCarrier(ctx context.Context, tenant string, exclude map[Carrier]bool) Carrier {
	if !r.expected[tenant] || !r.inGrace() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.ReconnectGrace-time.Since(r.started))
	defer cancel()
	for {
		changed := r.cfg.Table.Changes()
		if c := r.cfg.Table.Pick(tenant, exclude); c != nil {
			return c
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}

// Tunnel is an open stream to a service, after its agent answered OK.
type Tunnel struct {
	Stream  transport.Stream
	Carrier Carrier
	Opened  time.Time

	once sync.Once
}

// End uncounts the tunnel from its carrier; call it once the stream ended.
func (t *Tunnel) End() { t.once.Do(t.Carrier.StreamDone) }

// Abandon closes a tunnel that will not be used and ends it.
func (t *Tunnel) Abandon() {
	t.Stream.Close()
	t.End()
}

// Dial opens a stream with hdr to a carrier of tenant: the usable one with
// the fewest streams, and, when carriers fail underneath it, up to
// maxAttempts of them, all within StreamOpenTimeout. Just after a start it
// waits for a carrier of a tenant expected back. Its errors are typed
// (*protocol.Error): a refusal a carrier answered, no_agent or timeout.
func (r *Router) Dial(ctx context.Context, tenant string, hdr protocol.StreamHeader) (*Tunnel, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.StreamOpenTimeout)
	defer cancel()
	tried := map[Carrier]bool{}
	var lastErr error
	lastStalled := false // lastErr came from a carrier that stopped answering
	for attempt := 0; attempt < maxAttempts; attempt++ {
		c := r.cfg.Table.Pick(tenant, tried)
		if c == nil && attempt == 0 {
			// Just restarted: the tenant's agent may be on its way back.
			c = r.awaitCarrier(ctx, tenant, tried)
		}
		if c == nil {
			break
		}
		tried[c] = true
		st, err := c.OpenStream(ctx, hdr, func() bool { return r.cfg.Table.Pick(tenant, tried) != nil })
		if err == nil {
			return &Tunnel{Stream: st, Carrier: c, Opened: time.Now()}, nil
		}
		var pe *protocol.Error
		if errors.As(err, &pe) {
			return nil, err // the agent answered: do not ask another
		}
		if ctx.Err() != nil {
			return nil, protocol.Errorf(protocol.CodeTimeout, "no answer from tenant %q's agent within %v", tenant, r.cfg.StreamOpenTimeout)
		}
		r.cfg.Logger.Warn("open stream failed; trying another connection", "tenant", tenant, "agent", c.Agent(), "request", hdr.RequestID, "err", err)
		lastErr, lastStalled = err, c.Stalled()
	}
	if lastStalled {
		// The transport gave up on the connection (yamux aborts a stream
		// open the agent does not acknowledge) after the agent had
		// stopped answering: the agent did not answer in time.
		return nil, protocol.Errorf(protocol.CodeTimeout, "tenant %q's agent stopped answering: %v", tenant, lastErr)
	}
	if lastErr != nil {
		return nil, protocol.Errorf(protocol.CodeNoAgent, "tenant %q's agent connections failed: %v", tenant, lastErr)
	}
	if r.cfg.Table.Connected(tenant) > 0 {
		return nil, protocol.Errorf(protocol.CodeNoAgent, "tenant %q's agents are connected but none is healthy (draining, or not answering heartbeats)", tenant)
	}
	return nil, protocol.Errorf(protocol.CodeNoAgent, "tenant %q has no agent connected", tenant)
}
