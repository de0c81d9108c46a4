package peer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
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
	// DialTimeout bounds a link's TCP connect and TLS handshake; 0 means
	// defaultDialTimeout.
	DialTimeout time.Duration
	Logger      *slog.Logger
}

// A relay cut off from the others but not from the store (a partition,
// a firewall rule, a hung network path) keeps heartbeating: the cluster
// goes on naming it as the holder of its agents, and entry relays go on
// choosing it. What a link to it costs a stream is bounded here, so that
// the router has time left for another relay within the stream-open
// budget (--stream-open-timeout, 15 s by default):
//
//   - a dial gives up after defaultDialTimeout (relays reach each other
//     on a private network: a connect and a TLS 1.3 handshake take
//     milliseconds there), and a link whose dial failed is passed over
//     for firstPause, doubling with each failure that follows up to
//     maxPause, until a dial succeeds;
//   - a stream waits for its link to be dialed, or for the peer to
//     acknowledge the stream's opening (frames of other streams do not
//     count), at most answerBound: answerMax, or a third of what is
//     left of its budget when that is less. A link that answered
//     nothing to the opening in that time is
//     suspect (tried after the other relays), and it is closed unless it
//     answers a ping within probeWait: yamux would otherwise close it
//     only when its stream open timeout (10 s) passed;
//   - a stream does not wait for the dial of a link in doubt (suspect,
//     or whose last dial failed) while the router has another carrier
//     to try: the dial goes on, and the stream is told the link is not
//     usable now.
//
// A healthy link answers a stream's opening (yamux's acknowledgement of
// it) within a round trip, long before its agent's answer, so a stream
// whose agent takes long to answer (a slow service) still waits for it
// for its whole budget.
const (
	defaultDialTimeout = 2 * time.Second
	firstPause         = 2 * time.Second
	maxPause           = 30 * time.Second
	answerMax          = 3 * time.Second
	answerMin          = 250 * time.Millisecond
	quietWait          = 250 * time.Millisecond
	probeWait          = 2 * time.Second
)

// pause is how long a link is passed over after failures failed dials
// in a row.
func pause(failures int) time.Duration {
	d := firstPause
	for i := 1; i < failures && d < maxPause; i++ {
		d *= 2
	}
	return min(d, maxPause)
}

// answerBound is how long a stream whose budget ends at ctx's deadline
// waits, at now, for its link to be up or to answer its opening: answerMax,
// or a third of the budget left when that is less, but no less than
// answerMin.
func answerBound(ctx context.Context, now time.Time) time.Duration {
	b := answerMax
	if dl, ok := ctx.Deadline(); ok {
		b = min(b, dl.Sub(now)/3)
	}
	return max(b, answerMin)
}

// Links opens and keeps links to peer relays, one per relay, and hands
// out carriers over them. It is the route.Elsewhere of a relay in a
// cluster.
type Links struct {
	cfg LinksConfig
	log *slog.Logger

	mu       sync.Mutex // guards links, carriers, failures, missing and closed
	links    map[string]*link
	carriers map[carrierKey]*Carrier
	failures map[string]*failureCounts // by relay id, over its links
	// missing holds, by relay id, when Tidy first found a relay with a
	// link or failure counts missing from the cluster's live relays.
	missing map[string]time.Time
	closed  bool

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
	// Probes of suspect links (probe) run on goroutines of their own.
	probes sync.WaitGroup
}

type carrierKey struct{ relay, tenant string }

// failureCounts counts what went wrong with the links to one relay.
type failureCounts struct {
	dial       atomic.Int64 // dials that failed or timed out
	unanswered atomic.Int64 // streams whose opening the link answered nothing to in time
	closed     atomic.Int64 // links closed for answering no ping after that
}

// LinkFailures is what went wrong with the links to one relay since this
// relay started (tether_peer_link_failures_total).
type LinkFailures struct {
	Relay string
	// Dial counts the dials that failed or timed out; Unanswered the
	// streams that gave up on a link that answered nothing to their
	// opening in time; Closed the links closed when they answered no
	// ping after that.
	Dial, Unanswered, Closed int64
}

// Failures returns the failures of the links to each relay a link was
// made to, by relay id.
func (l *Links) Failures() []LinkFailures {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []LinkFailures
	for id, f := range l.failures {
		out = append(out, LinkFailures{Relay: id, Dial: f.dial.Load(), Unanswered: f.unanswered.Load(), Closed: f.closed.Load()})
	}
	slices.SortFunc(out, func(a, b LinkFailures) int { return strings.Compare(a.Relay, b.Relay) })
	return out
}

// NewLinks returns the entry side of links.
func NewLinks(cfg LinksConfig) *Links {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = defaultDialTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Links{cfg: cfg, log: cfg.Logger, links: map[string]*link{}, carriers: map[carrierKey]*Carrier{},
		failures: map[string]*failureCounts{}, ctx: ctx, cancel: cancel}
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
	failed   *failureCounts // the relay's, shared with its other links

	mu       sync.Mutex // guards the fields below
	sess     *tcp.Session
	dialing  chan struct{} // closed when the dial in progress ends; nil when none
	waiting  int           // callers waiting for that dial
	failedAt time.Time     // when the last dial failed (zero: it did not)
	failErr  error         // why
	failures int           // dials failed in a row (0: the last succeeded)
	suspect  bool          // sess answered nothing to a stream's opening in time; cleared by a dial or a ping answered
	probing  bool          // a ping of sess is under way (probe)
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
	defer func() { l.closeReplaced(replaced) }()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("relay is shutting down")
	}
	out := make([]route.Carrier, 0, len(hs))
	for _, h := range hs {
		lk := l.linkLocked(h.RelayID, h.PeerAddr, h.Epoch, &replaced)
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

// linkLocked returns the link to relay id at addr of run epoch, made
// when there is none, or when the one there is to an earlier run's
// address; a link so replaced is added to replaced (and to closing), to
// be closed once mu is released. l.mu is held, and l is not closed.
func (l *Links) linkLocked(id, addr string, epoch int64, replaced *[]*link) *link {
	lk := l.links[id]
	// A relay's address changes only with a new run, whose epoch is
	// higher. Tenants' holdings are remembered apart, so one read before
	// a relay restarted can name its old address after another named the
	// new: the older run's address never replaces the newer's link (and
	// its streams in flight).
	if lk == nil || lk.addr != addr && epoch >= lk.epoch {
		if lk != nil {
			*replaced = append(*replaced, lk)
			l.closing.Add(1) // under mu, not closed: before Close waits
		}
		f := l.failures[id]
		if f == nil {
			f = &failureCounts{}
			l.failures[id] = f
		}
		lk = &link{id: id, addr: addr, epoch: epoch, failed: f}
		l.links[id] = lk
	}
	return lk
}

// closeReplaced closes links replaced by linkLocked, on goroutines of
// their own (in closing), once Links.mu is released: closing takes each
// link's mu, which startDial holds while it takes Links.mu.
func (l *Links) closeReplaced(replaced []*link) {
	for _, lk := range replaced {
		go func() {
			defer l.closing.Done()
			lk.close()
		}()
	}
}

// StoreStatus is a peer relay's answer to whether it reaches the store.
type StoreStatus struct {
	Relay string
	// Known is false when the relay did not say: it could not be asked
	// (Err says why), or it is of an earlier version that does not know
	// the question.
	Known bool
	// Beat is whether it has written its heartbeat since it started, and
	// Age how long ago it last did, as it saw it when it answered.
	Beat bool
	Age  time.Duration
	Err  error
}

// StoreStatus asks each relay of relays (their ids, peer addresses and
// epochs, as the cluster last listed them; those without a peer address
// are passed over) whether it reaches the store, all at once, each
// within ctx, over the links to them (dialed when down).
func (l *Links) StoreStatus(ctx context.Context, relays []store.Relay) []StoreStatus {
	var replaced []*link
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	var lks []*link
	for _, r := range relays {
		if r.PeerAddr != "" {
			lks = append(lks, l.linkLocked(r.ID, r.PeerAddr, r.Epoch, &replaced))
		}
	}
	l.mu.Unlock()
	l.closeReplaced(replaced)
	out := make([]StoreStatus, len(lks))
	var wg sync.WaitGroup
	for i, lk := range lks {
		wg.Go(func() { out[i] = l.askStatus(ctx, lk) })
	}
	wg.Wait()
	return out
}

// askStatus asks lk's relay whether it reaches the store.
func (l *Links) askStatus(ctx context.Context, lk *link) StoreStatus {
	st := StoreStatus{Relay: lk.id}
	sess, err := l.session(ctx, lk, nil)
	if err != nil {
		st.Err = err
		return st
	}
	s, err := sess.OpenStream(ctx)
	if err != nil {
		st.Err = fmt.Errorf("relay %s: open stream: %w", lk.id, err)
		return st
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		s.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { s.SetDeadline(time.Now()) })
	defer stop()
	if err := writeStatusRequest(s); err != nil {
		st.Err = fmt.Errorf("relay %s: send status request: %w", lk.id, err)
		return st
	}
	st.Age, st.Beat, st.Known, err = readStatusAnswer(s)
	if err != nil {
		st.Known, st.Err = false, fmt.Errorf("relay %s: %w", lk.id, err)
	}
	return st
}

// ForgetAfter is how long a relay may be missing from the cluster's live
// relays before Tidy forgets its link and failure counts.
const ForgetAfter = time.Hour

// Tidy forgets what l keeps of each relay that has been missing from live
// (the ids of the cluster's live relays) since a Tidy at least ForgetAfter
// before now: its link, unless the link is up or being dialed (streams
// still go through it), its carriers, and its failure counts (Failures,
// and with them its tether_peer_link_failures_total series). Relays that
// leave for good — replaced by relays of other ids, as deployments with
// fresh data directories do — would otherwise each be kept for as long as
// this relay runs. The owner calls Tidy now and then.
func (l *Links) Tidy(live []string, now time.Time) {
	isLive := make(map[string]bool, len(live))
	for _, id := range live {
		isLive[id] = true
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	if l.missing == nil {
		l.missing = map[string]time.Time{}
	}
	for id := range l.missing {
		if _, ok := l.failures[id]; !ok || isLive[id] {
			delete(l.missing, id)
		}
	}
	type gone struct {
		id string
		lk *link
	}
	var due []gone
	for id := range l.failures { // every relay with a link has failure counts
		if isLive[id] {
			continue
		}
		since, ok := l.missing[id]
		if !ok {
			l.missing[id] = now
			continue
		}
		if now.Sub(since) >= ForgetAfter {
			due = append(due, gone{id, l.links[id]})
		}
	}
	l.mu.Unlock()
	// A link's mu is not taken under l.mu (the lock order): each link is
	// retired first, and only then forgotten, if still the relay's.
	for _, g := range due {
		if g.lk != nil && !g.lk.retireIfDown() {
			continue
		}
		l.mu.Lock()
		if l.links[g.id] == g.lk {
			delete(l.links, g.id)
			delete(l.failures, g.id)
			delete(l.missing, g.id)
			for k := range l.carriers {
				if k.relay == g.id {
					delete(l.carriers, k)
				}
			}
		}
		l.mu.Unlock()
	}
}

// retireIfDown closes the link when it has no session up and no dial in
// progress, so that no dial follows (a carrier still holding it gets an
// error); it reports whether it did.
func (lk *link) retireIfDown() bool {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.dialing != nil {
		return false
	}
	if lk.sess != nil {
		select {
		case <-lk.sess.Done():
			lk.sess = nil
		default:
			return false
		}
	}
	lk.closed = true
	return true
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
	l.probes.Wait()
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

// usable reports whether the link is up, being dialed, or worth dialing:
// not while it is passed over after failed dials (pause).
func (lk *link) usable(now time.Time) bool {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.closed {
		return false
	}
	return lk.dialing != nil || lk.failures == 0 || now.Sub(lk.failedAt) > pause(lk.failures)
}

// doubtful reports whether the link is in doubt: it answered nothing to
// a stream's opening in time, or its last dial failed.
func (lk *link) doubtful() bool {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	return lk.suspect || lk.failures > 0
}

// inDoubt reports whether streams should go to other relays first: the
// link is in doubt (doubtful) and being dialed again, or up but being
// probed after a stream's opening went unanswered. A link in doubt that
// is down and past its pause is not: the next stream that picks it
// starts its dial, and goes to another relay meanwhile when it has one
// (session).
func (lk *link) inDoubt() bool {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	switch {
	case !lk.suspect && lk.failures == 0:
		return false
	case lk.dialing != nil:
		return true
	case lk.sess == nil || !lk.suspect:
		return false
	}
	select {
	case <-lk.sess.Done():
		return false
	default:
		return true
	}
}

// notUsableNow is a link's answer to a stream that has another carrier to
// try, while the link is in doubt and being dialed (route.ErrUnreachable).
type notUsableNow string

func (e notUsableNow) Error() string        { return string(e) }
func (e notUsableNow) Is(target error) bool { return target == route.ErrUnreachable }

// unreachableError is a link's failure to be dialed or to answer in
// time (route.ErrUnreachable).
type unreachableError struct{ err error }

func (e unreachableError) Error() string        { return e.err.Error() }
func (e unreachableError) Unwrap() error        { return e.err }
func (e unreachableError) Is(target error) bool { return target == route.ErrUnreachable }

// session returns the link's session, dialing it when it is down. One
// dial runs at a time, on a goroutine of its own; every caller that needs
// the link meanwhile, the one that started it included, waits for its
// outcome or until its own ctx ends. A failed dial is not repeated for
// each of them: they all get its error (and the link is passed over for
// a pause). Except that while the link is in doubt (doubtful), a caller
// for whom others (when not nil) reports another carrier to try does not
// wait for its dial: it gets a notUsableNow at once, and the dial goes on
// for the streams that follow. others is called without any lock held.
func (l *Links) session(ctx context.Context, lk *link, others func() bool) (*tcp.Session, error) {
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
		case lk.dialing == nil && waited && lk.failures > 0:
			// The dial this caller waited for failed.
			err := lk.failErr
			lk.mu.Unlock()
			return nil, unreachableError{fmt.Errorf("link to relay %s at %s: %w", lk.id, lk.addr, err)}
		case lk.dialing == nil:
			if err := l.startDial(lk); err != nil {
				lk.mu.Unlock()
				return nil, err
			}
		}
		wait := lk.dialing
		doubt := lk.suspect || lk.failures > 0
		lk.mu.Unlock()
		if doubt && !waited && others != nil && others() {
			return nil, notUsableNow(fmt.Sprintf("link to relay %s at %s: not usable now (being dialed again after it failed or answered nothing; another relay is tried meanwhile)", lk.id, lk.addr))
		}
		lk.mu.Lock()
		lk.waiting++
		lk.mu.Unlock()
		var err error
		select {
		case <-wait:
			waited = true
		case <-ctx.Done():
			err = unreachableError{fmt.Errorf("link to relay %s at %s: waiting for its dial: %w", lk.id, lk.addr, context.Cause(ctx))}
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
		var failures int
		if err != nil {
			lk.failures++
			lk.failedAt, lk.failErr, failures = time.Now(), err, lk.failures
		} else if !closed {
			lk.failedAt, lk.failErr, lk.failures, lk.suspect = time.Time{}, nil, 0, false
			lk.sess = sess
		}
		if err != nil && !closed {
			// Counted before the waiters are told, so that whoever saw
			// the dial fail sees it counted.
			lk.failed.dial.Add(1)
		}
		lk.dialing = nil
		close(done)
		lk.mu.Unlock()
		switch {
		case err != nil && !closed:
			l.log.Warn("relay-to-relay link could not be opened; streams go to other relays holding the tenants' agents meanwhile",
				"relay", lk.id, "addr", lk.addr, "failures", failures, "next_try_after", pause(failures), "err", err)
		case err != nil:
		case closed:
			sess.Close()
		default:
			l.log.Info("relay-to-relay link up", "relay", lk.id, "addr", lk.addr)
		}
	})
	return nil
}

// suspect marks lk, whose session sess answered nothing to a stream's
// opening within bound, suspect, and probes sess unless a probe is under
// way: a ping it does not answer within probeWait closes it (its streams
// end: they cross a link that answers nothing), one it answers clears
// the mark.
func (l *Links) suspect(lk *link, sess *tcp.Session, bound time.Duration) {
	lk.mu.Lock()
	if lk.sess != sess || lk.closed {
		lk.mu.Unlock()
		return // replaced or closed meanwhile
	}
	lk.suspect = true
	if lk.probing {
		lk.mu.Unlock()
		return
	}
	lk.probing = true
	lk.mu.Unlock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.probes.Add(1) // under mu, not closed: before Close waits
	l.mu.Unlock()
	go func() {
		defer l.probes.Done()
		reads := sess.Reads()
		pong := make(chan error, 1)
		go func() {
			_, err := sess.Ping()
			pong <- err
		}()
		t := time.NewTimer(probeWait)
		var err error
		pinging := true
		select {
		case err = <-pong:
			pinging = false
		case <-t.C:
			if sess.Reads() != reads {
				// No pong yet, but the link reads: the pong waits behind
				// other streams' data on a busy link. Kept.
				break
			}
			err = fmt.Errorf("no answer to a ping within %v", probeWait)
		}
		t.Stop()
		lk.mu.Lock()
		lk.probing = false
		if err == nil && lk.sess == sess {
			lk.suspect = false
		}
		lk.mu.Unlock()
		if err == nil {
			l.log.Info("relay-to-relay link answered a ping, or went on reading, after a stream's opening went unanswered; kept", "relay", lk.id, "addr", lk.addr, "bound", bound)
			if pinging {
				<-pong // the ping ends with its answer or the session
			}
			return
		}
		lk.failed.closed.Add(1)
		l.log.Warn("relay-to-relay link answered nothing to a stream's opening nor to a ping; closed, to be dialed again",
			"relay", lk.id, "addr", lk.addr, "bound", bound, "err", err)
		sess.Abort()
		if pinging {
			<-pong // ends with the session
		}
	}()
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
// route.ErrStalled when the peer's agents stopped answering, and
// route.ErrUnreachable when the link could not be opened, or answered
// nothing, within answerBound).
//
// others, when not nil, reports whether the router has another carrier
// to try; it is called on this goroutine (session).
func (c *Carrier) OpenStream(ctx context.Context, hdr protocol.StreamHeader, early route.Early, others func() bool) (transport.Stream, error) {
	bound := answerBound(ctx, time.Now())
	wctx, cancel := context.WithTimeout(ctx, bound)
	sess, err := c.links.session(wctx, c.link, others)
	cancel()
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
	// A link whose peer has not acknowledged the stream's opening within
	// the bound, and that has read nothing for quietWait since, answered
	// nothing to it (a healthy peer acknowledges it within a round trip):
	// the stream gives up on it. One whose peer acknowledged it goes on
	// waiting for the answer, which its agent may take long to give; the
	// answer, when it comes, follows the acknowledgement, so the watch,
	// should it run late, then finds the stream answered. A link still
	// reading when the acknowledgement is late is busy, not cut: the
	// acknowledgement waits behind other streams' data (a link full of
	// downloads), and the stream waits for it, looking again every
	// quietWait. Frames in flight at the moment of a cut stop arriving
	// within a round trip, so they keep no stream waiting.
	answered, _ := st.(interface{ Answered() bool })
	var silent, done atomic.Bool
	var lastReads atomic.Uint64
	var look func()
	look = func() {
		if done.Load() || answered == nil || answered.Answered() {
			return
		}
		if r := sess.Reads(); r != lastReads.Swap(r) {
			time.AfterFunc(quietWait, look) // still reading: busy
			return
		}
		silent.Store(true)
		st.SetDeadline(time.Now())
	}
	lastReads.Store(sess.Reads())
	watch := time.AfterFunc(bound, look)
	rep, agent, err := c.ask(st, hdr, early)
	done.Store(true)
	watch.Stop()
	stop()
	if err != nil && silent.Load() && ctx.Err() == nil {
		transport.Abort(st)
		c.link.failed.unanswered.Add(1)
		c.links.suspect(c.link, sess, bound)
		return nil, unreachableError{fmt.Errorf("relay %s: the link answered nothing to the stream's opening within %v (%w)", c.link.id, bound, err)}
	}
	if err == nil {
		err = rep.Err()
	}
	if err != nil {
		transport.Abort(st)
		var pe *protocol.Error
		if errors.As(err, &pe) {
			switch pe.Code {
			case protocol.CodeNoAgent, protocol.CodeUnavailable, protocol.CodeInternal, protocol.CodeBadRequest, protocol.CodeTimeout:
				// The peer could not take it: another relay may. It
				// answered before reading past the request, so the
				// client's first bytes reached none of its agents.
				// Its agents of the tenant stopped answering (timeout):
				// the dial need not wait for them to move.
				// Unavailable: it is at its stream memory cap, or the
				// tenant holds its share of it (route.ErrBusy).
				return nil, refusedError{msg: fmt.Sprintf("relay %s: %s: %s", c.link.id, pe.Code, pe.Message),
					stalled: pe.Code == protocol.CodeTimeout, busy: pe.Code == protocol.CodeUnavailable}
			}
			return nil, err
		}
		return nil, fmt.Errorf("relay %s: %w", c.link.id, err)
	}
	st.SetDeadline(time.Time{})
	c.open.Add(1)
	return &stream{Stream: st, agent: agent}, nil
}

// refusedError is a peer's refusal of a stream it could not take: its
// answer, which it gives before it reads anything past the request, so
// that the client's first bytes sent with it reached no agent
// (route.ErrUnread). stalled: because its agents of the tenant stopped
// answering (route.ErrStalled); busy: because it could not take more
// streams now (route.ErrBusy).
type refusedError struct {
	msg           string
	stalled, busy bool
}

func (e refusedError) Error() string { return e.msg }
func (e refusedError) Is(target error) bool {
	return target == route.ErrUnread || e.stalled && target == route.ErrStalled || e.busy && target == route.ErrBusy
}

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

// Suspect implements route.Suspecter: the link is in doubt (inDoubt).
func (c *Carrier) Suspect() bool { return c.link.inDoubt() }

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

// Transport is the link's stream that carries s (streammem.Wrapper): at
// the entry relay a forwarded stream holds its memory, the link's yamux
// buffer, and none of the agent's.
func (s *stream) Transport() transport.Stream { return s.Stream }

// Abort passes a reset on to the peer relay.
func (s *stream) Abort() error {
	if a, ok := s.Stream.(transport.Aborter); ok {
		return a.Abort()
	}
	return s.Stream.Close()
}
