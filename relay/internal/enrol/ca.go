package enrol

import (
	"context"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/session"
)

// CA rotation. `tether-relay ca rotate` (admin.RotateCA) adds a new root
// and tells running relays through the change feed; each relay reloads
// the roots (trust.Authority.Reload) and brings its sessions in line
// (CAChanged): from then on it issues agent certificates from the new root
// and accepts certificates from both. Agents move to the new root at their
// next renewal, or at once when the operator asks (RenewNow). `ca retire`
// drops the old root once no agent depends on it; the relay then serves a
// certificate from the new root, refuses certificates from the old one
// and closes the sessions that still stand on it.

// renewSpreadPerAgent is how much the window over which asked agents renew
// grows per agent, between 1 s and 5 min: a renewal costs the relay a
// signature and a store write, so ten thousand agents renew over 5 minutes.
const renewSpreadPerAgent = 30 * time.Millisecond

// Rotation brings a relay's sessions in line with the CA's roots. Run
// waits for the requests it sends in the background.
type Rotation struct {
	cfg      Config
	sessions *session.Set

	mu      sync.Mutex // guards applied and stopped, and orders bg.Go before bg.Wait
	applied *ca.CA     // the CA whose roots the sessions were last brought in line with
	stopped bool       // Run has returned: no more background sends

	bg sync.WaitGroup // renewal requests being sent
}

// NewRotation starts from the CA as the relay read it at start.
func NewRotation(cfg Config, sessions *session.Set) *Rotation {
	return &Rotation{cfg: cfg, sessions: sessions, applied: cfg.Authority.CA()}
}

// Run returns when ctx ends, once the renewal requests it sent are out.
func (r *Rotation) Run(ctx context.Context) error {
	<-ctx.Done()
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	r.bg.Wait()
	return nil
}

// Apply reloads the CA's roots and, when they changed since they were last
// applied, closes the sessions standing on a root no longer trusted and
// asks the agents to renew when the operator asked for it at once. It
// returns the error of a reload that failed (the roots in force stay).
func (r *Rotation) Apply(ctx context.Context) error {
	if _, _, err := r.cfg.Authority.Reload(ctx); err != nil {
		return err // the change feed's follower reports it
	}
	r.mu.Lock()
	// Against the CA whose change was last applied here: the Authority
	// may have been replaced in this process already.
	prev, next := r.applied, r.cfg.Authority.CA()
	r.applied = next
	r.mu.Unlock()
	if next == prev {
		return nil
	}
	var ids []string
	active := map[string]bool{}
	for _, root := range next.Roots() {
		ids = append(ids, root.ID())
		active[root.ID()] = true
	}
	r.cfg.Logger.Info("CA roots changed", "roots", ids, "signing_root", next.Signer().ID(), "serving_root", next.Serving().ID(), "renew_now", next.RenewNow())

	// Sessions that stand on a root no longer trusted (retired with
	// --force while its agents were still on it) end now, as revoked ones
	// do. They are closed side by side (each close waits for its Reject's
	// deadline), and each one's record is committed before it closes, or
	// waited for at most a second (session.Conn.CloseRetired), since this
	// runs on the change feed, which every stream of the relay waits on,
	// and a stalled store must not hold it. A session admitted after this looked is
	// closed by its admission (session.Server), which looks again once
	// the session is in the set.
	stranded := r.sessions.Select("", false, func(c *session.Conn) bool { return !active[c.RootID()] })
	sideBySide(stranded, func(c *session.Conn) { c.CloseRetired(next.Root(c.RootID())) })
	if next.RenewNow() && (!prev.RenewNow() || prev.Signer().ID() != next.Signer().ID()) {
		r.askRenewals(next.Signer().ID())
	}
	return nil
}

// Connected asks an agent that connects during a rotation the operator
// wants done at once to renew: it was offline when the others were asked.
func (r *Rotation) Connected(c *session.Conn) {
	authority := r.cfg.Authority.CA()
	if authority.RenewNow() && c.RootID() != authority.Signer().ID() {
		askRenewal(c, authority.Signer().ID(), time.Second)
	}
}

// askRenewals asks every connected agent whose certificate is not from
// root to renew now, spread over a window that grows with their number.
func (r *Rotation) askRenewals(root string) {
	conns := r.sessions.Select("", true, func(c *session.Conn) bool { return c.RootID() != root })
	if len(conns) == 0 {
		return
	}
	spread := min(max(time.Duration(len(conns))*renewSpreadPerAgent, time.Second), 5*time.Minute)
	r.cfg.Logger.Info("asking agents to renew their certificates now", "agents", len(conns), "ca_root", root, "spread", spread)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return
	}
	r.bg.Go(func() {
		// Side by side: a write to an agent that reads nothing waits
		// until its session ends (three heartbeats), and would hold up
		// every agent after it.
		sideBySide(conns, func(c *session.Conn) { askRenewal(c, root, spread) })
	})
}

// sideBySide calls fn for each of conns, at most 64 at a time, and
// returns once every call has: how a rotation writes to, or closes,
// sessions, where one agent that reads nothing must not hold up the rest.
func sideBySide(conns []*session.Conn, fn func(*session.Conn)) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range conns {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			fn(c)
		})
	}
	wg.Wait()
}

// askRenewal sends c a RenewNow for root.
func askRenewal(c *session.Conn, root string, spread time.Duration) {
	if err := c.Send(&protocol.RenewNow{Root: root, SpreadMillis: spread.Milliseconds()}); err != nil {
		c.Logger().Debug("send renewal request", "err", err)
		return
	}
	c.Logger().Debug("asked the agent to renew its certificate now", "ca_root", root)
}
