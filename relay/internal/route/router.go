package route

import (
	"context"
	"errors"
	"fmt"
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
	Dir *datadir.Dir
	// Elsewhere, when set, offers carriers to other relays of the
	// cluster holding agents of a tenant: Dial uses them when no carrier
	// of this relay can take the stream.
	Elsewhere Elsewhere
	// Admit, when set, is asked before each Dial (not DialLocal): an
	// error refuses the dial (a relay that cannot confirm it is current
	// answers unavailable).
	Admit  func() error
	Logger *slog.Logger
	Now    func() time.Time
}

// Elsewhere finds carriers on other relays.
type Elsewhere interface {
	// Carriers returns carriers to the other relays holding agents of
	// tenant, the preferred first; fresh asks for what the cluster says
	// now rather than what was read a moment ago.
	Carriers(ctx context.Context, tenant string, fresh bool) ([]Carrier, error)
}

// AgentNamer is a stream that knows which agent took it (a stream a peer
// relay opened names the peer's agent).
type AgentNamer interface {
	AgentID() string
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
	// moveWait is how long a dial waits for a tenant's agent that is
	// between connections: its connections here drain, or another relay
	// said to hold it could not take the stream. An agent asked to leave
	// a relay connects to another within a second (a jitter of up to
	// 0.5 s, a handshake), and other relays learn where it is when that
	// relay writes its presence (within presenceDelay and a write).
	moveWait = 2 * time.Second
	// moveRecheck is how often, while it waits, the dial asks the cluster
	// again where the tenant's agents are.
	moveRecheck = 100 * time.Millisecond
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
	return r.await(ctx, tenant, exclude, r.cfg.ReconnectGrace-time.Since(r.started), nil)
}

// awaitMoved waits, up to moveWait, for a carrier of tenant not in
// exclude: one of this relay's that becomes usable, or one to another
// relay that the cluster says now holds the tenant's agents (asked every
// moveRecheck). It returns nil when ctx or the wait ends first.
func (r *Router) awaitMoved(ctx context.Context, tenant string, exclude map[Carrier]bool, away *awayCarriers) Carrier {
	return r.await(ctx, tenant, exclude, moveWait, func() Carrier {
		away.again()
		return away.next(ctx, exclude, r.cfg.Logger)
	})
}

// await waits up to wait for a usable carrier of this relay's for tenant,
// not in exclude, and every moveRecheck asks elsewhere (when not nil) for
// one. It returns nil when ctx or the wait ends first.
func (r *Router) await(ctx context.Context, tenant string, exclude map[Carrier]bool, wait time.Duration, elsewhere func() Carrier) Carrier {
	waited := time.NewTimer(wait)
	defer waited.Stop()
	var recheck <-chan time.Time
	if elsewhere != nil {
		tick := time.NewTicker(moveRecheck)
		defer tick.Stop()
		recheck = tick.C
	}
	for {
		changed := r.cfg.Table.Changes()
		if c := r.cfg.Table.Pick(tenant, exclude); c != nil {
			return c
		}
		select {
		case <-changed:
		case <-recheck:
			if c := elsewhere(); c != nil {
				return c
			}
		case <-waited.C:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// Tunnel is an open stream to a service, after its agent answered OK.
type Tunnel struct {
	Stream  transport.Stream
	Carrier Carrier
	// Agent is the agent that took the stream; Relay the peer relay that
	// carried it ("" when the agent is connected to this relay).
	Agent, Relay string
	Opened       time.Time
	// Tries are the attempts on other carriers that failed before this
	// one opened the stream, in order; nil when the first one did.
	Tries []Try

	once sync.Once
}

// Session is the id of the agent's connection to this relay that carried
// the stream: "" for a peer relay's, or a carrier that names none
// (SessionNamer).
func (t *Tunnel) Session() string {
	if n, ok := t.Carrier.(SessionNamer); ok && t.Relay == "" {
		return n.SessionID()
	}
	return ""
}

// End uncounts the tunnel from its carrier; call it once the stream ended.
func (t *Tunnel) End() { t.once.Do(t.Carrier.StreamDone) }

// Abandon closes a tunnel that will not be used and ends it.
func (t *Tunnel) Abandon() {
	t.Stream.Close()
	t.End()
}

// SessionNamer is a carrier that is one connection of an agent to this
// relay, with an id that names it in logs and records.
type SessionNamer interface {
	SessionID() string
}

// maxTryErr bounds the text of a failed attempt's error (Try.Err).
const maxTryErr = 256

// Try is an attempt of a dial on a carrier that did not open the stream:
// the carrier failed underneath it (the agent stopped answering, its
// connection or a link to another relay failed, that relay could not
// take it), or the dial's time ran out while it waited for the answer. A
// refusal a carrier answered (the agent's allowlist, the other relay's
// policy) is not an attempt that failed: it is the dial's outcome.
type Try struct {
	// Agent and Session name a connection of an agent to this relay
	// (Session "" for a carrier that names none); Relay the other relay
	// of the cluster a forward went to.
	Agent, Session, Relay string
	// Took is how long the attempt lasted.
	Took time.Duration
	// Err is why it failed, clipped to maxTryErr bytes of valid UTF-8.
	Err string
}

// tryOn describes a failed attempt on c (relay its relay id, "" for a
// carrier of this relay's).
func tryOn(c Carrier, relay string, took time.Duration, err error) Try {
	t := Try{Relay: relay, Took: took, Err: protocol.Clip(err.Error(), maxTryErr)}
	t.Agent, t.Session = agentSession(c, relay)
	return t
}

// agentSession names the agent and session of c, a carrier of this
// relay's (relay ""); none for a carrier to another relay.
func agentSession(c Carrier, relay string) (agent, session string) {
	if relay != "" {
		return "", ""
	}
	if n, ok := c.(SessionNamer); ok {
		session = n.SessionID()
	}
	return c.Agent(), session
}

// RefusedError is a Dial's refusal that a carrier answered: the agent's
// (the service is not in its allowlist, its config does not allow the
// backend, it could not dial the service), or, for a stream forwarded
// to another relay of the cluster, that relay's answer. It holds the
// refusal (Err, a *protocol.Error) and who answered it, and reads as
// its refusal: Error is Err's, and errors.Is and errors.As see Err and
// what it wraps. A refusal no carrier answered (no_agent, timeout,
// Admit's) is not one.
type RefusedError struct {
	Err error
	// Agent and Session name the connection of an agent to this relay
	// that answered (Session "" for a carrier that names none); Relay
	// the other relay of the cluster that answered for a forward (the
	// relay-to-relay answer names an agent only for a stream it opened).
	Agent, Session, Relay string
}

func (e *RefusedError) Error() string { return e.Err.Error() }
func (e *RefusedError) Unwrap() error { return e.Err }

// refusedOn is err, c's answer, as a RefusedError (relay the relay id
// of c, "" for a carrier of this relay's).
func refusedOn(c Carrier, relay string, err error) *RefusedError {
	e := &RefusedError{Err: err, Relay: relay}
	e.Agent, e.Session = agentSession(c, relay)
	return e
}

// RefusedBy returns who answered a Dial's refusal (nil when err is not
// a refusal a carrier answered).
func RefusedBy(err error) *RefusedError {
	var re *RefusedError
	if errors.As(err, &re) {
		return re
	}
	return nil
}

// TriedError is a Dial's refusal after attempts that failed (Try): the
// refusal (Err, a *protocol.Error), and where the stream was tried. It
// reads as its refusal: Error is Err's, and errors.Is and errors.As see
// Err and what it wraps.
type TriedError struct {
	Err   error
	Tries []Try
}

func (e *TriedError) Error() string { return e.Err.Error() }
func (e *TriedError) Unwrap() error { return e.Err }

// TriesOf returns the failed attempts a Dial's error carries (nil when
// none failed before the refusal, or err is not a Dial's).
func TriesOf(err error) []Try {
	var te *TriedError
	if errors.As(err, &te) {
		return te.Tries
	}
	return nil
}

// ErrStalled marks a carrier's failure to open a stream because the
// agents behind it stopped answering: a peer relay whose connections of
// the tenant no longer answer heartbeats. A dial does not wait for such
// an agent to move (awaitMoved), as it does not for one here.
var ErrStalled = errors.New("agents stopped answering")

// ErrUnreachable marks a carrier's failure to open a stream because the
// relay it leads to could not be reached: its link could not be opened,
// or answered nothing to the stream's opening within the attempt's
// bound. The relay's agents are not moving (it still heartbeats): a dial
// does not wait for them to (awaitMoved).
var ErrUnreachable = errors.New("relay not reachable")

// ErrUnread marks a carrier's failure after which the client's first
// bytes sent with the attempt (Early) are known to have reached no agent:
// a peer relay refused the stream, which it answers before it reads
// anything past its request. A dial tries another carrier after it, with
// those bytes, as after a failure before any of them went.
var ErrUnread = errors.New("the client's first bytes were not read")

// ErrBusy marks a carrier's failure because the relay it leads to could
// not take more streams now (it answered unavailable: its stream memory
// cap, or the tenant's share of it). Its agents are not moving: a dial
// does not wait for them to (awaitMoved), it tries another relay holding
// the tenant's agents, and when none takes the stream its client is told
// unavailable, with that relay's reason, rather than no_agent.
var ErrBusy = errors.New("relay cannot take more streams now")

// RelayCarrier is a carrier to another relay.
type RelayCarrier interface {
	Carrier
	// Relay is the id of the relay it leads to.
	Relay() string
}

// Suspecter is a carrier that can be in doubt: usable, but the last
// time it was tried it did not answer (a link to a relay that answered
// nothing to a stream's opening, or could not be opened). Of the
// carriers to other relays a dial tries those in doubt last.
type Suspecter interface {
	Suspect() bool
}

func suspect(c Carrier) bool {
	s, ok := c.(Suspecter)
	return ok && s.Suspect()
}

// Dial opens a stream with hdr to a carrier of tenant: the usable one of
// this relay with the fewest streams or, when none can take it, one to
// another relay of the cluster holding the tenant's agents (Elsewhere).
// When carriers fail underneath it, it tries up to maxAttempts of this
// relay's and as many of other relays', all within StreamOpenTimeout.
// Just after a start it waits for a carrier of a tenant expected back.
// early, when not nil, is attached to every attempt (Early). Its errors
// are typed (*protocol.Error): a refusal a carrier answered (which
// RefusedBy names), no_agent, timeout, or Admit's. An attempt that
// fails after early's bytes went with it is not followed by another
// (Early.Sent), unless the failure says they were not read (ErrUnread).
func (r *Router) Dial(ctx context.Context, tenant string, hdr protocol.StreamHeader, early Early) (*Tunnel, error) {
	if r.cfg.Admit != nil {
		if err := r.cfg.Admit(); err != nil {
			return nil, err
		}
	}
	return r.dial(ctx, tenant, hdr, early, false)
}

// DialLocal is Dial on this relay's own carriers only, and without
// waiting for an agent that is between connections (the relay that
// forwarded the stream waits, and may find the agent elsewhere): for a
// stream another relay forwarded, which is never forwarded again.
//
// Its refusal when every connection of the tenant here stopped answering
// heartbeats is a timeout, not no_agent, so that the relay that forwarded
// the stream tells its client at once rather than waiting for the agent
// to move.
func (r *Router) DialLocal(ctx context.Context, tenant string, hdr protocol.StreamHeader) (*Tunnel, error) {
	return r.dial(ctx, tenant, hdr, nil, true)
}

// dial is Dial, or DialLocal when forwarded: a forwarded dial asks no
// other relay and does not wait for agents found only between
// connections; Dial waits for them once (awaitMoved).
func (r *Router) dial(ctx context.Context, tenant string, hdr protocol.StreamHeader, early Early, forwarded bool) (*Tunnel, error) {
	t, tries, err := r.dialTries(ctx, tenant, hdr, early, forwarded)
	if err != nil && len(tries) > 0 {
		return nil, &TriedError{Err: err, Tries: tries}
	}
	return t, err
}

// dialTries is dial; it also returns the attempts that failed, which the
// tunnel it returns holds (Tunnel.Tries).
func (r *Router) dialTries(ctx context.Context, tenant string, hdr protocol.StreamHeader, early Early, forwarded bool) (*Tunnel, []Try, error) {
	elsewhere, wait := r.cfg.Elsewhere, true
	if forwarded {
		elsewhere, wait = nil, false
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.StreamOpenTimeout)
	defer cancel()
	tried := map[Carrier]bool{}
	var tries []Try // the attempts that failed, in order
	var lastErr error
	lastStalled := false // lastErr came from a carrier that stopped answering
	var busy error       // the last refusal of a relay that could not take more streams (ErrBusy)
	moving := false      // a relay said to hold the agents could not take the stream, and not because they stalled
	away := awayCarriers{tenant: tenant, from: elsewhere}
	for local, remote := 0, 0; local < maxAttempts && remote < maxAttempts; {
		c := r.cfg.Table.Pick(tenant, tried)
		if c == nil {
			c = away.next(ctx, tried, r.cfg.Logger)
		}
		if c == nil && local+remote == 0 {
			// Just restarted: the tenant's agent may be on its way back.
			c = r.awaitCarrier(ctx, tenant, tried)
		}
		if c == nil && wait && (moving || r.cfg.Table.Draining(tenant)) {
			// The tenant has agents, but none could take the stream: its
			// connections here drain, or a relay said to hold its agents
			// could not take it (that relay is leaving, its agents
			// moving). The agent is on its way to another connection:
			// wait for it, once. An agent that stopped answering, here or
			// at another relay, is not waited for: the client is told at
			// once.
			wait = false
			c = r.awaitMoved(ctx, tenant, tried, &away)
		}
		if c == nil {
			break
		}
		tried[c] = true
		relay := ""
		if rc, ok := c.(RelayCarrier); ok {
			relay = rc.Relay()
			remote++
		} else {
			local++
		}
		others := func() bool { return r.cfg.Table.Pick(tenant, tried) != nil }
		if relay != "" {
			// A carrier to another relay asks, on the dial's goroutine,
			// before it waits for its link: another relay's carrier
			// counts too.
			others = func() bool { return r.cfg.Table.Pick(tenant, tried) != nil || away.usable(tried) }
		}
		began := time.Now()
		st, err := c.OpenStream(ctx, hdr, early, others)
		if err == nil {
			agent := c.Agent()
			if n, ok := st.(AgentNamer); ok {
				agent = n.AgentID()
			}
			return &Tunnel{Stream: st, Carrier: c, Agent: agent, Relay: relay, Opened: time.Now(), Tries: tries}, tries, nil
		}
		var pe *protocol.Error
		if errors.As(err, &pe) {
			if dl, _ := ctx.Deadline(); ctx.Err() != nil || !time.Now().Before(dl) {
				// Not an answer: the carrier gave up as the dial's time
				// ran out (an agent that did not answer in time).
				tries = append(tries, tryOn(c, relay, time.Since(began), err))
				return nil, tries, err
			}
			// The agent answered: do not ask another. The refusal names
			// who answered it, for the stream's record.
			return nil, tries, refusedOn(c, relay, err)
		}
		if ctx.Err() != nil {
			tries = append(tries, tryOn(c, relay, time.Since(began), err))
			return nil, tries, protocol.Errorf(protocol.CodeTimeout, "no answer from tenant %q's agent within %v", tenant, r.cfg.StreamOpenTimeout)
		}
		where := "agent " + c.Agent()
		if relay != "" {
			where = "relay " + relay
		}
		tries = append(tries, tryOn(c, relay, time.Since(began), err))
		lastErr, lastStalled = err, c.Stalled()
		if errors.Is(err, ErrBusy) {
			busy = err
		} else if relay != "" && !errors.Is(err, ErrStalled) && !errors.Is(err, ErrUnreachable) {
			moving = true
		}
		if early != nil && early.Sent() && !errors.Is(err, ErrUnread) {
			// The agent may have passed the client's first bytes to the
			// service before the failure: another attempt could run a
			// request twice. The client is told, and may retry itself.
			r.cfg.Logger.Warn("open stream failed after the client's first bytes went with it; not trying another connection", "tenant", tenant, "via", where, "request", hdr.RequestID, "err", err)
			lastErr = fmt.Errorf("%w (not tried on another connection: the client's first bytes had gone with it, and the service may have them)", err)
			break
		}
		r.cfg.Logger.Warn("open stream failed; trying another connection", "tenant", tenant, "via", where, "request", hdr.RequestID, "err", err)
	}
	if lastStalled {
		// The transport gave up on the connection (yamux aborts a stream
		// open the agent does not acknowledge) after the agent had
		// stopped answering: the agent did not answer in time.
		return nil, tries, protocol.Errorf(protocol.CodeTimeout, "tenant %q's agent stopped answering: %v", tenant, lastErr)
	}
	if busy != nil {
		// A relay holding the tenant's agents is at its capacity, and no
		// other took the stream: the client may try again later.
		return nil, tries, protocol.Errorf(protocol.CodeUnavailable, "tenant %q's agents are connected to relays that cannot take more streams now: %v", tenant, busy)
	}
	if lastErr != nil {
		return nil, tries, protocol.Errorf(protocol.CodeNoAgent, "tenant %q's agent connections failed: %v", tenant, lastErr)
	}
	if pe := (*protocol.Error)(nil); errors.As(away.err, &pe) {
		return nil, tries, pe
	}
	if away.err != nil {
		return nil, tries, protocol.Errorf(protocol.CodeUnavailable, "tenant %q has no agent connected to this relay, and the cluster's other relays could not be looked up: %v", tenant, away.err)
	}
	if away.unreachable != "" && r.cfg.Table.Connected(tenant) == 0 {
		return nil, tries, protocol.Errorf(protocol.CodeNoAgent, "tenant %q's agents are connected to relay %s, which this relay cannot reach now (its link failed lately and is tried again after a pause)", tenant, away.unreachable)
	}
	if r.cfg.Table.Connected(tenant) > 0 {
		if forwarded && r.cfg.Table.Stalled(tenant) {
			// DialLocal (a forwarded stream): every connection here
			// stopped answering. Told so, the relay that forwarded it
			// does not wait for the agent to move.
			return nil, tries, protocol.Errorf(protocol.CodeTimeout, "tenant %q's agents connected to this relay stopped answering heartbeats", tenant)
		}
		return nil, tries, protocol.Errorf(protocol.CodeNoAgent, "tenant %q's agents are connected but none is healthy (draining, or not answering heartbeats)", tenant)
	}
	return nil, tries, protocol.Errorf(protocol.CodeNoAgent, "tenant %q has no agent connected", tenant)
}

// awayCarriers hands out, one dial's worth, the carriers to other relays:
// first those the cluster said a moment ago, then, once those are tried,
// what it says now (an agent may have moved meanwhile).
type awayCarriers struct {
	tenant string
	from   Elsewhere
	list   []Carrier
	read   int   // reads of from: 0, 1 (cached), 2 (fresh)
	err    error // the last read's error
	// unreachable names a relay of the list that was passed over, not
	// usable (its link failed lately), when no carrier was handed out.
	unreachable string
}

// usable reports whether a carrier of the list read last, not in tried,
// is usable now. It does not read the cluster.
func (a *awayCarriers) usable(tried map[Carrier]bool) bool {
	now := time.Now()
	for _, c := range a.list {
		if !tried[c] && c.Usable(now) {
			return true
		}
	}
	return false
}

// again has the next call of next ask the cluster afresh once more.
func (a *awayCarriers) again() {
	if a.read == 2 {
		a.read = 1
	}
}

func (a *awayCarriers) next(ctx context.Context, tried map[Carrier]bool, log *slog.Logger) Carrier {
	if a.from == nil {
		return nil
	}
	for {
		// Carriers in doubt (Suspecter) last: the list's order otherwise.
		var doubted Carrier
		now := time.Now()
		for _, c := range a.list {
			if tried[c] {
				continue
			}
			if !c.Usable(now) {
				if rc, ok := c.(RelayCarrier); ok && a.unreachable == "" {
					a.unreachable = rc.Relay()
				}
				continue
			}
			if !suspect(c) {
				return c
			}
			if doubted == nil {
				doubted = c
			}
		}
		if doubted != nil {
			return doubted
		}
		if a.read == 2 {
			return nil
		}
		a.read++
		a.list, a.err = a.from.Carriers(ctx, a.tenant, a.read == 2)
		if pe := (*protocol.Error)(nil); a.err != nil && !errors.As(a.err, &pe) {
			log.Warn("look up the relays holding a tenant's agents", "tenant", a.tenant, "err", a.err)
		}
	}
}
