package peer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/tcp"
	"github.com/tetherhq/tether/relay/internal/route"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// LinksConfig configures the entry side of links.
type LinksConfig struct {
	TLS *trust.Peer
	// Holders returns the other live relays holding agents of a tenant
	// (cluster.Cluster.Holders).
	Holders func(ctx context.Context, tenant string, fresh bool) ([]store.Holding, error)
	// DialTimeout bounds a link's TCP connect and TLS handshake.
	DialTimeout time.Duration
	Logger      *slog.Logger
}

// failedPause is how long a relay whose link could not be opened is
// passed over before the next try.
const failedPause = 2 * time.Second

// Links opens and keeps links to peer relays, one per relay, and hands
// out carriers over them. It is the route.Elsewhere of a relay in a
// cluster.
type Links struct {
	cfg LinksConfig
	log *slog.Logger

	mu       sync.Mutex // guards links, carriers and closed
	links    map[string]*link
	carriers map[carrierKey]*Carrier
	closed   bool

	// Dials run on goroutines of their own (in dials), under ctx, which
	// Close cancels: no caller's context ends a dial others wait for.
	ctx    context.Context
	cancel context.CancelFunc
	dials  sync.WaitGroup
	// Replaced links are closed on goroutines of their own (in
	// closing, added to under mu while not closed), not on the request
	// that found them replaced: a session's close can wait seconds for
	// its TLS close_notify to be written.
	closing sync.WaitGroup
}

type carrierKey struct{ relay, tenant string }

// NewLinks returns the entry side of links.
func NewLinks(cfg LinksConfig) *Links {
	ctx, cancel := context.WithCancel(context.Background())
	return &Links{cfg: cfg, log: cfg.Logger, links: map[string]*link{}, carriers: map[carrierKey]*Carrier{},
		ctx: ctx, cancel: cancel}
}

// link is the link to one peer relay at one address, of one run of it
// (its epoch).
//
// Lock order: a link's mu, then Links.mu (startDial); never Links.mu
// while waiting for a link's mu, and neither while dialing or waiting: a
// dial runs on its own goroutine with dialing set, and whoever needs the
// link meanwhile waits for dialing to close or for its own context.
type link struct {
	id, addr string
	epoch    int64

	mu       sync.Mutex // guards the fields below
	sess     *tcp.Session
	dialing  chan struct{} // closed when the dial in progress ends; nil when none
	waiting  int           // callers waiting for that dial
	failedAt time.Time     // when the last dial failed (zero: it did not)
	failErr  error         // why
	closed   bool          // replaced or shut down: no more dials
}

// Carriers implements route.Elsewhere: a carrier per live relay holding
// agents of tenant and taking forwarded streams (with a peer address),
// relays that drain last.
func (l *Links) Carriers(ctx context.Context, tenant string, fresh bool) ([]route.Carrier, error) {
	hs, err := l.cfg.Holders(ctx, tenant, fresh)
	if err != nil {
		return nil, err
	}
	held := len(hs)
	hs = slices.DeleteFunc(slices.Clone(hs), func(h store.Holding) bool { return h.PeerAddr == "" })
	if held > 0 && len(hs) == 0 {
		return nil, protocol.Errorf(protocol.CodeNoAgent, "tenant %q's agents are connected to other relays of the cluster, none of which takes forwarded streams (they have no peer listener: --peer-listen)", tenant)
	}
	// Relays that do not drain first; among them the one with the most
	// of the tenant's agents, then by id (the store's order), so that a
	// tenant's forwarded streams go the same way and keep its links warm.
	slices.SortStableFunc(hs, func(a, b store.Holding) int {
		if a.Draining != b.Draining {
			if a.Draining {
				return 1
			}
			return -1
		}
		return b.Agents - a.Agents
	})
	var replaced []*link
	defer func() {
		// Closed once Links.mu is released: closing takes each link's
		// mu, which startDial holds while it takes Links.mu.
		for _, lk := range replaced {
			go func() {
				defer l.closing.Done()
				lk.close()
			}()
		}
	}()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("relay is shutting down")
	}
	out := make([]route.Carrier, 0, len(hs))
	for _, h := range hs {
		lk := l.links[h.RelayID]
		// A relay's address changes only with a new run, whose epoch is
		// higher. Tenants' holdings are remembered apart, so one read
		// before a relay restarted can name its old address after
		// another named the new: the older run's address never replaces
		// the newer's link (and its streams in flight).
		if lk == nil || lk.addr != h.PeerAddr && h.Epoch >= lk.epoch {
			if lk != nil {
				replaced = append(replaced, lk)
				l.closing.Add(1) // under mu, not closed: before Close waits
			}
			lk = &link{id: h.RelayID, addr: h.PeerAddr, epoch: h.Epoch}
			l.links[h.RelayID] = lk
		}
		k := carrierKey{h.RelayID, tenant}
		c := l.carriers[k]
		if c == nil || c.link != lk {
			if len(l.carriers) > 100000 {
				clear(l.carriers) // in use ones keep working: they hold their link
			}
			c = &Carrier{links: l, link: lk, tenant: tenant}
			l.carriers[k] = c
		}
		out = append(out, c)
	}
	return out, nil
}

// Close closes every link: forwarded streams through them end. It
// returns once the dials in progress have given up.
func (l *Links) Close() {
	l.mu.Lock()
	l.closed = true
	links := l.links
	l.links = map[string]*link{}
	l.mu.Unlock()
	l.cancel()
	for _, lk := range links {
		lk.close()
	}
	l.dials.Wait()
	l.closing.Wait()
}

// close ends the link: its session, if up, is closed (its streams end),
// a dial in progress closes what it opens, and no dial follows.
func (lk *link) close() {
	lk.mu.Lock()
	lk.closed = true
	sess := lk.sess
	lk.sess = nil
	lk.mu.Unlock()
	if sess != nil {
		sess.Close()
	}
}

// usable reports whether the link is up, being dialed, or worth dialing.
func (lk *link) usable(now time.Time) bool {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.closed {
		return false
	}
	return lk.dialing != nil || lk.failedAt.IsZero() || now.Sub(lk.failedAt) > failedPause
}

// session returns the link's session, dialing it when it is down. One
// dial runs at a time, on a goroutine of its own; every caller that needs
// the link meanwhile, the one that started it included, waits for its
// outcome or until its own ctx ends. A failed dial is not repeated for
// each of them: they all get its error (and the link is passed over for
// failedPause).
func (l *Links) session(ctx context.Context, lk *link) (*tcp.Session, error) {
	waited := false
	for {
		lk.mu.Lock()
		if lk.sess != nil {
			select {
			case <-lk.sess.Done():
				lk.sess = nil
			default:
				sess := lk.sess
				lk.mu.Unlock()
				return sess, nil
			}
		}
		switch {
		case lk.closed:
			lk.mu.Unlock()
			return nil, fmt.Errorf("link to relay %s at %s: no longer wanted", lk.id, lk.addr)
		case lk.dialing == nil && waited && !lk.failedAt.IsZero():
			// The dial this caller waited for failed.
			err := lk.failErr
			lk.mu.Unlock()
			return nil, fmt.Errorf("link to relay %s at %s: %w", lk.id, lk.addr, err)
		case lk.dialing == nil:
			if err := l.startDial(lk); err != nil {
				lk.mu.Unlock()
				return nil, err
			}
		}
		wait := lk.dialing
		lk.waiting++
		lk.mu.Unlock()
		var err error
		select {
		case <-wait:
			waited = true
		case <-ctx.Done():
			err = fmt.Errorf("link to relay %s at %s: waiting for its dial: %w", lk.id, lk.addr, context.Cause(ctx))
		}
		lk.mu.Lock()
		lk.waiting--
		lk.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
}

// startDial starts dialing lk, whose mu is held: lk.dialing is closed
// when the dial has ended, with its outcome in lk.
func (l *Links) startDial(lk *link) error {
	l.mu.Lock() // after lk.mu, never the other way round
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("relay is shutting down")
	}
	done := make(chan struct{})
	lk.dialing = done
	l.dials.Go(func() {
		sess, err := l.dial(l.ctx, lk)
		lk.mu.Lock()
		closed := lk.closed
		if err != nil {
			lk.failedAt, lk.failErr = time.Now(), err
		} else if !closed {
			lk.failedAt, lk.failErr = time.Time{}, nil
			lk.sess = sess
		}
		lk.dialing = nil
		close(done)
		lk.mu.Unlock()
		switch {
		case err != nil:
		case closed:
			sess.Close()
		default:
			l.log.Info("relay-to-relay link up", "relay", lk.id, "addr", lk.addr)
		}
	})
	return nil
}

// dial opens a session to lk's relay, within DialTimeout.
func (l *Links) dial(ctx context.Context, lk *link) (*tcp.Session, error) {
	dctx, cancel := context.WithTimeout(ctx, l.cfg.DialTimeout)
	defer cancel()
	d := &net.Dialer{KeepAlive: 15 * time.Second}
	return tcp.Dial(dctx, d.DialContext, lk.addr, l.cfg.TLS.Dialer(lk.id), linkConfig(l.log))
}

// Carrier carries streams of one tenant to one peer relay.
type Carrier struct {
	links  *Links
	link   *link
	tenant string
	open   atomic.Int64
}

var _ route.RelayCarrier = (*Carrier)(nil)

// OpenStream opens a stream on the link, asks the peer relay for tenant's
// service, and returns once it answered. A refusal the peer's agent
// answered (an unknown service, an unreachable target) is a
// *protocol.Error; that the peer had no agent to take it, or failed, is
// a plain error, so that the router tries another carrier (marked
// route.ErrStalled when the peer's agents stopped answering).
func (c *Carrier) OpenStream(ctx context.Context, hdr protocol.StreamHeader, early route.Early, _ func() bool) (transport.Stream, error) {
	sess, err := c.links.session(ctx, c.link)
	if err != nil {
		return nil, err
	}
	st, err := sess.OpenStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("relay %s: open stream: %w", c.link.id, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		st.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Now()) })
	rep, agent, err := c.ask(st, hdr, early)
	stop()
	if err == nil {
		err = rep.Err()
	}
	if err != nil {
		transport.Abort(st)
		var pe *protocol.Error
		if errors.As(err, &pe) {
			switch pe.Code {
			case protocol.CodeNoAgent, protocol.CodeUnavailable, protocol.CodeInternal, protocol.CodeBadRequest, protocol.CodeTimeout:
				// The peer could not take it: another relay may.
				refused := fmt.Sprintf("relay %s: %s: %s", c.link.id, pe.Code, pe.Message)
				if pe.Code == protocol.CodeTimeout {
					// Its agents of the tenant stopped answering: the
					// dial need not wait for them to move.
					return nil, stalledError(refused)
				}
				return nil, errors.New(refused)
			}
			return nil, err
		}
		return nil, fmt.Errorf("relay %s: %w", c.link.id, err)
	}
	st.SetDeadline(time.Time{})
	c.open.Add(1)
	return &stream{Stream: st, agent: agent}, nil
}

// stalledError is a peer's refusal because its agents of the tenant
// stopped answering (route.ErrStalled).
type stalledError string

func (e stalledError) Error() string        { return string(e) }
func (e stalledError) Is(target error) bool { return target == route.ErrStalled }

func (c *Carrier) ask(st transport.Stream, hdr protocol.StreamHeader, early route.Early) (protocol.Reply, string, error) {
	if err := writeRequest(st, request{Tenant: c.tenant, Header: hdr}, early); err != nil {
		return protocol.Reply{}, "", fmt.Errorf("send request: %w", err)
	}
	return readAnswer(st)
}

// StreamDone implements route.Carrier.
func (c *Carrier) StreamDone() { c.open.Add(-1) }

// Usable implements route.Carrier: false for a while after the link
// could not be opened.
func (c *Carrier) Usable(now time.Time) bool { return c.link.usable(now) }

// Load implements route.Carrier.
func (c *Carrier) Load() int64 { return c.open.Load() }

// Stalled implements route.Carrier.
func (c *Carrier) Stalled() bool { return false }

// Agent implements route.Carrier: the peer names the agent per stream.
func (c *Carrier) Agent() string { return "" }

// Tenant implements route.Carrier.
func (c *Carrier) Tenant() string { return c.tenant }

// Relay implements route.RelayCarrier.
func (c *Carrier) Relay() string { return c.link.id }

// stream is a forwarded stream; it names the agent that took it.
type stream struct {
	transport.Stream
	agent string
}

func (s *stream) AgentID() string { return s.agent }

// Abort passes a reset on to the peer relay.
func (s *stream) Abort() error {
	if a, ok := s.Stream.(transport.Aborter); ok {
		return a.Abort()
	}
	return s.Stream.Close()
}
