package session

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/hashicorp/yamux"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/quic"
	"github.com/tetherhq/tether/relay/internal/route"
)

// Conn is one live, admitted agent session.
type Conn struct {
	srv         *Server
	id          identity.Agent
	sess        transport.Session
	transport   string
	remote      net.Addr
	hello       protocol.Hello
	sessionID   string
	connectedAt time.Time
	log         *slog.Logger

	open      atomic.Int64 // streams open now, and being opened
	opening   atomic.Int64 // streams being opened (openOn), a part of open
	total     atomic.Uint64
	draining  atomic.Bool // agent or relay said GoAway: no new streams
	lastHeard atomic.Int64
	rtt       atomic.Int64           // nanoseconds, last measured
	notAfter  atomic.Int64           // Unix nanoseconds: the session ends when its newest certificate expires
	root      atomic.Pointer[string] // printable fingerprint of the CA root that issued the newest certificate
	serial    atomic.Pointer[string] // serial (hexadecimal) of the session's newest certificate

	pingSeq    atomic.Uint64
	pingSentAt atomic.Int64

	// Liveness beyond the heartbeat (see beat). A session is held
	// unusable — no new streams — while stalled or doubted, until the
	// agent is heard from again.
	awaitSince   atomic.Int64          // Unix nanoseconds since when a ping has gone unanswered; 0: none is outstanding
	awaitPackets atomic.Uint64         // what the transport had received from the agent at awaitSince
	stalled      atomic.Bool           // a ping went unanswered for probeWait, and the transport heard nothing meanwhile
	stalledAt    atomic.Int64          // Unix nanoseconds the session last stalled
	doubted      atomic.Bool           // another session of the same agent process stalled: this one is pinged at once
	cause        atomic.Pointer[error] // why the relay closed the session, when it did (closeWith, a newer process)

	tickMu    sync.Mutex    // guards the fields below
	tick      *time.Timer   // the session's heartbeat timer (run)
	tickAt    int64         // Unix nanoseconds at which tick fires next
	ticking   bool          // a tick is running
	tickSoon  bool          // wake was called while a tick ran: tick again within activeTick
	tickStop  bool          // run is returning: no more ticks
	stallWait chan struct{} // closed when the session stalls; nil until a stream open waits for that

	report   atomic.Pointer[protocol.Report] // the agent's latest report, nil before the first
	reportAt atomic.Int64                    // Unix nanoseconds the latest report arrived
	// dialFailedAt is when a report last showed more failed dials than
	// the one before (Unix nanoseconds; 0: never on this session).
	dialFailedAt atomic.Int64

	ctlMu sync.Mutex // serialises writes to ctl
	ctl   transport.Stream

	// A renewal is answered on a goroutine of its own (renewals), so
	// that the control-stream reader never waits on the store; run waits
	// for it before returning. renewing is set while one is in flight:
	// the session has at most one.
	renewing atomic.Bool
	renewals sync.WaitGroup
}

func (c *Conn) setRoot(id string) { c.root.Store(&id) }

func (c *Conn) setSerial(serial string) { c.serial.Store(&serial) }

// CertSerial is the serial (hexadecimal) of the session's newest
// certificate: the one it authenticated with, or the one a renewal over
// a session of the same agent process moved it to.
func (c *Conn) CertSerial() string {
	if p := c.serial.Load(); p != nil {
		return *p
	}
	return ""
}

// ConnectedAt is when the session was admitted.
func (c *Conn) ConnectedAt() time.Time { return c.connectedAt }

// RootID is the CA root of the session's newest certificate ("" if none
// of the active roots issued it).
func (c *Conn) RootID() string {
	if p := c.root.Load(); p != nil {
		return *p
	}
	return ""
}

// Send writes a control message to the agent.
func (c *Conn) Send(m protocol.Message) error {
	c.ctlMu.Lock()
	defer c.ctlMu.Unlock()
	return protocol.WriteMessage(c.ctl, m)
}

// CloseWith tells the agent why its session ends and closes the session.
// New streams stop going to it at once (draining is set first). Why is
// written as a Reject on the control stream, with a short deadline, and
// over QUIC it is also the close's reason (closeRefused): closing a QUIC
// connection drops the stream data not yet sent, so the Reject alone
// seldom arrives, and the agent would learn why only at its next hello.
// It returns within about the deadline even when a control write is
// blocked (an agent that reads nothing): the deadline is set before the
// write lock is taken, and it ends the write in progress too; the close
// does not wait for the agent.
func (c *Conn) CloseWith(err error) {
	c.cause.CompareAndSwap(nil, &err)
	c.draining.Store(true)
	c.ctl.SetDeadline(time.Now().Add(500 * time.Millisecond))
	c.ctlMu.Lock()
	werr := protocol.WriteMessage(c.ctl, protocol.RejectFor(err))
	c.ctlMu.Unlock()
	if werr != nil {
		c.log.Debug("send reject", "err", werr)
	}
	c.log.Info("closing session", "why", err)
	closeRefused(c.sess, err)
}

// closeRefused closes sess, refused or ended for err once a Reject saying
// so was written: over QUIC with CodeRefused and err as
// protocol.CloseReason encodes it, which the agent reads if the Reject is
// lost with the connection; over TCP (yamux, in order) with a plain
// close, after which the agent has the Reject.
func closeRefused(sess transport.Session, err error) {
	if qs, ok := sess.(*quic.Session); ok {
		qs.CloseWithError(quic.CodeRefused, protocol.CloseReason(err))
		return
	}
	sess.Close()
}

// healthy reports whether new streams may go to c: it is not draining, not
// stalled or doubted (see beat), its session is up and it was heard from
// after heardAfter (Unix nanoseconds).
func (c *Conn) healthy(heardAfter int64) bool {
	if c.draining.Load() || c.stalled.Load() || c.doubted.Load() {
		return false
	}
	select {
	case <-c.sess.Done():
		return false
	default:
	}
	return c.lastHeard.Load() > heardAfter
}

// heardAfter is the oldest time, in Unix nanoseconds, at which a connection
// must last have been heard from to be healthy: three heartbeats ago.
func heardAfter(now time.Time, hb time.Duration) int64 {
	return now.UnixNano() - int64(3*hb)
}

// Liveness while streams are open or being opened on a session (see beat).
const (
	// activeTick is how often the relay looks at, and pings, a session
	// with streams open or being opened, or one in doubt. Idle sessions
	// are pinged every heartbeat interval only.
	activeTick = time.Second
	// probeWait is how long a ping may go unanswered, with nothing at all
	// received from the agent meanwhile, before the session stalls: no
	// new streams go to it until it is heard from again.
	probeWait = 2 * time.Second
	// stallClose is how long a session may stay stalled while streams are
	// open on it before it is closed: those streams can move no data, and
	// their backends get an error rather than a hang. (Streams only being
	// opened end with the stream-open timeout; an idle session is left to
	// the heartbeat and the transport's idle timeout.)
	stallClose = 5 * time.Second
)

// Why agent sessions end, as the errors run returns.
var (
	errRelayShutdown   = errors.New("relay shutting down")
	errHeartbeatMissed = errors.New("no heartbeat")
	errAgentClosed     = errors.New("agent closed its control stream")
	errAgentRestarted  = errors.New("a newer process of this agent connected")
	errSilentAgent     = errors.New("the transport gave up on the agent, which had stopped answering")
	errNotAnswering    = errors.New("no answer to pings")
)

// Reasons an agent session ended, as logged ("agent disconnected") and
// counted (tether_agent_disconnects_total). A refusal that ends a session
// is named by its code (revoked, certificate_expired, unauthenticated for
// a retired CA root).
const (
	reasonAgentClosed = "agent_closed"     // the agent closed its session or control stream
	reasonIdleTimeout = "idle_timeout"     // the transport gave up on a silent agent (QUIC idle timeout; yamux: a write timeout, a stream open never acknowledged)
	reasonHeartbeat   = "heartbeat_missed" // no control message for three heartbeats, or for stallClose after stalling with streams open
	reasonReset       = "connection_reset" // the connection was reset (a QUIC stateless reset, a TCP reset)
	reasonShutdown    = "relay_shutdown"
	reasonRestarted   = "agent_restarted" // a newer process of the same agent connected
	reasonError       = "error"           // anything else (the log has the error)
)

// disconnectReasons lists the reasons known in advance, so that the
// metric shows them at zero.
var disconnectReasons = []string{reasonAgentClosed, reasonIdleTimeout, reasonHeartbeat, reasonReset, reasonShutdown, reasonRestarted,
	protocol.CodeRevoked.String(), protocol.CodeCertExpired.String(), reasonError}

// disconnectReason names why a session ended with err (what run returned).
func disconnectReason(err error) string {
	var (
		pe    *protocol.Error
		idle  *quicgo.IdleTimeoutError
		reset *quicgo.StatelessResetError
		app   *quicgo.ApplicationError
	)
	switch {
	case errors.Is(err, errRelayShutdown):
		return reasonShutdown
	case errors.Is(err, errHeartbeatMissed), errors.Is(err, errNotAnswering):
		return reasonHeartbeat
	case errors.Is(err, errAgentRestarted):
		return reasonRestarted
	case errors.As(err, &pe):
		return pe.Code.String()
	case errors.As(err, &idle), errors.Is(err, errSilentAgent), errors.Is(err, yamux.ErrConnectionWriteTimeout), errors.Is(err, yamux.ErrKeepAliveTimeout):
		return reasonIdleTimeout
	case errors.As(err, &reset), errors.Is(err, syscall.ECONNRESET), errors.Is(err, yamux.ErrConnectionReset):
		return reasonReset
	case errors.Is(err, errAgentClosed), errors.As(err, &app) && app.Remote, errors.Is(err, io.EOF), errors.Is(err, yamux.ErrRemoteGoAway):
		return reasonAgentClosed
	}
	return reasonError
}

// run serves the control stream until the session ends, the agent falls
// silent for three heartbeats, or ctx is done. It returns why (see
// disconnectReason).
//
// The calling goroutine reads the control stream; heartbeats are sent from
// a timer. An idle agent thus costs the relay one goroutine of its own
// here, which matters at tens of thousands of agents. The timer ticks every
// heartbeat interval while the session is idle and every activeTick while
// streams are open or being opened on it (beat).
func (c *Conn) run(ctx context.Context, br *bufio.Reader, hb time.Duration, renew func(*protocol.RenewRequest) *protocol.RenewResponse) error {
	var (
		mu    sync.Mutex // guards why
		why   error
		ticks sync.WaitGroup
	)
	end := func(err error) {
		mu.Lock()
		if why == nil {
			why = err
		}
		mu.Unlock()
		if a, ok := c.sess.(interface{ Abort() error }); ok && (errors.Is(err, errNotAnswering) || errors.Is(err, errHeartbeatMissed)) {
			a.Abort() // a silent agent: do not wait on it
			return
		}
		c.sess.Close()
	}
	stopCtx := context.AfterFunc(ctx, func() { end(errRelayShutdown) })
	c.tickMu.Lock() // the callback reads tick under tickMu: assign it under tickMu too
	c.tickAt = time.Now().Add(hb).UnixNano()
	c.tick = time.AfterFunc(hb, func() {
		c.tickMu.Lock()
		if c.tickStop {
			c.tickMu.Unlock()
			return
		}
		if c.ticking { // a wake raced a tick: the running one ticks again soon
			c.tickSoon = true
			c.tickMu.Unlock()
			return
		}
		c.ticking = true
		ticks.Add(1)
		c.tickMu.Unlock()
		defer ticks.Done()
		start := time.Now()
		next, err := c.beat(start, hb)
		if err != nil {
			end(err)
		}
		c.tickMu.Lock()
		defer c.tickMu.Unlock()
		c.ticking = false
		if c.tickSoon {
			next = min(next, activeTick)
			c.tickSoon = false
		}
		if err == nil && !c.tickStop {
			c.tick.Reset(next)
			c.tickAt = start.Add(next).UnixNano()
		}
	})
	c.tickMu.Unlock()

	err := c.ended(c.readLoop(ctx, br, renew))
	end(err)
	stopCtx()
	c.tickMu.Lock()
	c.tickStop = true
	c.tickMu.Unlock()
	c.tick.Stop()
	ticks.Wait()
	// A renewal in flight ends within its own bound (the store calls'
	// deadline, the audit write's); its answer, if it comes after the
	// session closed, fails to be written.
	c.renewals.Wait()
	mu.Lock()
	defer mu.Unlock()
	return why
}

// ended explains why the control stream's reader stopped with err: the
// relay's own reason when it closed the session (closeWith), else the
// transport's cause when the session failed under the stream (a QUIC idle
// timeout reads as a closed stream), else err.
func (c *Conn) ended(err error) error {
	if cause := c.cause.Load(); cause != nil {
		return *cause
	}
	if !transport.IsClosedErr(err) {
		return err
	}
	if s, ok := c.sess.(interface{ Err() error }); ok {
		if cause := s.Err(); cause != nil && !errors.Is(cause, transport.ErrClosed) {
			if c.stalled.Load() && errors.Is(cause, net.ErrClosed) {
				// Closed here, by the transport itself (yamux aborts a
				// stream open the agent does not acknowledge), while the
				// agent was not answering.
				return fmt.Errorf("%w: %w", errSilentAgent, cause)
			}
			return fmt.Errorf("control stream: %w", cause)
		}
	}
	if errors.Is(err, io.EOF) {
		return errAgentClosed
	}
	return fmt.Errorf("control stream: %w", err)
}

// beat is one tick of the session's timer, at now. It ends a session silent
// for three heartbeats, stalled for stallClose with streams open (returning
// why), or past its certificate; judges an
// outstanding ping; and pings: at every tick while the session is idle (the
// heartbeat), and while streams are open or being opened on it, or it is in
// doubt, whenever no ping is outstanding. It returns when to tick next:
// after hb while idle, else after activeTick.
//
// A ping is answered by anything the agent sends on the control stream. One
// unanswered for probeWait, with nothing at all received from the agent
// meanwhile (packets over QUIC, bytes over TCP: an agent busy sending data
// is alive), stalls the session: no new streams go to it, the agent's
// other sessions are held back and pinged at once (doubtSiblings), and
// then a stream open waiting on it moves to another usable connection of
// the tenant if there is one (OpenStream). The first message
// from the agent lifts it (heard). A frozen agent (stopped, or behind a
// path that drops packets) is thus avoided within about probeWait plus
// activeTick of the first stream sent to it, or of its freezing while
// streams are open on it; idle sessions cost what they did.
func (c *Conn) beat(now time.Time, hb time.Duration) (time.Duration, error) {
	if silent := now.Sub(time.Unix(0, c.lastHeard.Load())); silent > 3*hb {
		return 0, fmt.Errorf("%w for %v", errHeartbeatMissed, silent.Round(time.Millisecond))
	}
	if na := time.Unix(0, c.notAfter.Load()); now.After(na) {
		err := protocol.Errorf(protocol.CodeCertExpired, "the certificate of this session expired at %s and was not renewed", na.UTC().Format(time.RFC3339))
		c.CloseWith(err)
		return 0, err
	}
	active := c.open.Load() > 0 || c.doubted.Load() || c.stalled.Load()
	if since := c.awaitSince.Load(); since != 0 {
		if got := c.received(); got != c.awaitPackets.Load() {
			// The transport hears from the agent: alive, slow to answer.
			c.awaitPackets.Store(got)
			c.awaitSince.CompareAndSwap(since, now.UnixNano())
		} else if waited := now.Sub(time.Unix(0, since)); waited >= probeWait && !c.stalled.Load() {
			// The agent's other sessions are held back before this one
			// stalls: an open woken by the stall (notifyStall) moves only
			// if another connection is usable, and must not count a
			// sibling withdrawn a moment later, where it would find none.
			// Only beat sets stalled, on the session's one timer.
			c.srv.set.doubtSiblings(c)
			c.stalled.Store(true)
			c.stalledAt.Store(now.UnixNano())
			c.log.Warn("agent stopped answering: no new streams go to this connection until it is heard from again",
				"waited", waited.Round(time.Millisecond), "streams_open", c.open.Load())
			c.notifyStall()
			active = true
		}
	}
	if c.stalled.Load() {
		if stalled := now.Sub(time.Unix(0, c.stalledAt.Load())); stalled >= stallClose {
			if n := c.open.Load() - c.opening.Load(); n > 0 {
				return 0, fmt.Errorf("%w for %v while %d streams were open", errNotAnswering, (probeWait + stalled).Round(time.Millisecond), n)
			}
		}
	}
	if !active || c.awaitSince.Load() == 0 {
		if err := c.ping(now); err != nil {
			return 0, fmt.Errorf("send ping: %w", err)
		}
	}
	if active {
		return min(activeTick, hb), nil
	}
	return hb, nil
}

// ping sends a ping at now.
func (c *Conn) ping(now time.Time) error {
	seq := c.pingSeq.Add(1)
	c.pingSentAt.Store(now.UnixNano())
	if c.awaitSince.CompareAndSwap(0, now.UnixNano()) {
		c.awaitPackets.Store(c.received())
	}
	return c.Send(&protocol.Ping{Seq: seq})
}

// received is a count that moves whenever the transport receives anything
// from the agent: QUIC packets, acknowledgements included, or reads of the
// TCP connection. 0 where the transport does not tell.
func (c *Conn) received() uint64 {
	switch s := c.sess.(type) {
	case interface{ PacketsReceived() uint64 }:
		return s.PacketsReceived()
	case interface{ Reads() uint64 }:
		return s.Reads()
	}
	return 0
}

// heard records a control message from the agent at now: it answers, so
// an outstanding ping is answered and the session is usable again.
func (c *Conn) heard(now time.Time) {
	c.lastHeard.Store(now.UnixNano())
	if c.awaitSince.Load() != 0 {
		c.awaitSince.Store(0)
	}
	if c.doubted.Load() {
		c.doubted.Store(false)
	}
	if c.stalled.Load() && c.stalled.Swap(false) {
		c.log.Info("agent answers again: new streams may go to this connection")
	}
}

// notifyStall wakes stream opens waiting on the session (stalls).
func (c *Conn) notifyStall() {
	c.tickMu.Lock()
	defer c.tickMu.Unlock()
	if c.stallWait != nil {
		close(c.stallWait)
		c.stallWait = nil
	}
}

// stalls returns a channel closed when the session stalls; at once if it
// has.
func (c *Conn) stalls() <-chan struct{} {
	c.tickMu.Lock()
	defer c.tickMu.Unlock()
	if c.stallWait == nil {
		c.stallWait = make(chan struct{})
	}
	ch := c.stallWait
	if c.stalled.Load() {
		close(ch)
		c.stallWait = nil
	}
	return ch
}

// doubt holds the session unusable until the agent is heard from on it,
// and pings it at once.
func (c *Conn) doubt() {
	if c.stalled.Load() || c.doubted.Swap(true) {
		return
	}
	c.wake(0)
}

// wake makes the session's timer tick within d, unless it is due sooner.
func (c *Conn) wake(d time.Duration) {
	c.tickMu.Lock()
	defer c.tickMu.Unlock()
	if c.tick == nil || c.tickStop {
		return
	}
	if c.ticking {
		c.tickSoon = true
		return
	}
	if at := time.Now().Add(d).UnixNano(); at < c.tickAt {
		c.tick.Reset(d)
		c.tickAt = at
	}
}

func (c *Conn) readLoop(ctx context.Context, br *bufio.Reader, renew func(*protocol.RenewRequest) *protocol.RenewResponse) error {
	for {
		m, err := protocol.ReadMessage(br)
		if err != nil {
			if transport.IsClosedErr(err) {
				return err // ended finds out why
			}
			return fmt.Errorf("control stream: %w", err)
		}
		c.heard(time.Now())
		switch m := m.(type) {
		case *protocol.Ping:
			if err := c.Send(&protocol.Pong{Seq: m.Seq}); err != nil {
				return fmt.Errorf("send pong: %w", err)
			}
		case *protocol.Pong:
			if m.Seq == c.pingSeq.Load() {
				c.rtt.Store(time.Now().UnixNano() - c.pingSentAt.Load())
			}
		case *protocol.GoAway:
			c.draining.Store(true)
			c.log.Info("agent is draining", "reason", m.Reason, "message", m.Message)
		case *protocol.RenewRequest:
			if err := c.startRenewal(m, renew); err != nil {
				return err
			}
		case *protocol.Report:
			c.noteReport(m, time.Now())
		case *protocol.UpdateFetch, *protocol.UpdateStatus:
			if c.srv.cfg.Update != nil {
				c.srv.cfg.Update(ctx, c, m)
			}
		default:
			// Unknown and out-of-place messages are ignored for
			// forward compatibility.
		}
	}
}

// errRenewing refuses a renewal asked for while another of the same
// session is being answered (an agent only asks again once it has given
// up waiting on the first).
var errRenewing = protocol.Errorf(protocol.CodeUnavailable, "a renewal over this session is still being answered: try again once it is")

// startRenewal answers m with renew on a goroutine of its own, which run
// waits for: renew reaches the store, and the control-stream reader must
// go on reading the agent's pings and pongs meanwhile, or a stalled store
// would end a healthy session as heartbeat_missed. A second request while
// one is in flight is refused at once (errRenewing) rather than queued
// behind it. A failed write of the answer ends the session, as it did
// when the reader wrote it. The error is that of writing a refusal.
func (c *Conn) startRenewal(m *protocol.RenewRequest, renew func(*protocol.RenewRequest) *protocol.RenewResponse) error {
	if !c.renewing.CompareAndSwap(false, true) {
		c.log.Warn("certificate renewal refused", "err", errRenewing)
		rep := protocol.ReplyFor(errRenewing)
		if err := c.Send(&protocol.RenewResponse{Code: rep.Code.String(), Message: rep.Message}); err != nil {
			return fmt.Errorf("send renewal: %w", err)
		}
		return nil
	}
	c.renewals.Go(func() {
		resp := renew(m)
		// Answered: the agent may ask again once it has read this.
		c.renewing.Store(false)
		if err := c.Send(resp); err != nil {
			err = fmt.Errorf("send renewal: %w", err)
			c.cause.CompareAndSwap(nil, &err)
			c.sess.Close()
		}
	})
	return nil
}

// Carrier side (route.Carrier).

// StreamDone uncounts a stream OpenStream returned, once it ended.
func (c *Conn) StreamDone() { c.open.Add(-1) }

// Usable reports whether new streams may go to c at now.
func (c *Conn) Usable(now time.Time) bool { return c.healthy(heardAfter(now, c.srv.cfg.Heartbeat)) }

// Load is how many streams are open or being opened on c.
func (c *Conn) Load() int64 { return c.open.Load() }

// Stalled reports whether c's agent stopped answering pings.
func (c *Conn) Stalled() bool { return c.stalled.Load() }

// Agent is the id of c's agent.
func (c *Conn) Agent() string { return c.id.ID }

// Tenant is the tenant of c's agent.
func (c *Conn) Tenant() string { return c.id.Tenant }

// What the parts that act on sessions see.

// Identity is the agent's identity, from its verified certificate.
func (c *Conn) Identity() identity.Agent { return c.id }

// Hello is what the agent said when it connected.
func (c *Conn) Hello() *protocol.Hello { return &c.hello }

// trial reports whether c is the session of an update trial: a new binary
// that connects once to prove it works, then exits (CapUpdateTrial).
func (c *Conn) trial() bool { return slices.Contains(c.hello.Capabilities, protocol.CapUpdateTrial) }

// SessionID names the session in logs and records.
func (c *Conn) SessionID() string { return c.sessionID }

// Logger logs with the session's attributes.
func (c *Conn) Logger() *slog.Logger { return c.log }

// Done is closed when the session has ended.
func (c *Conn) Done() <-chan struct{} { return c.sess.Done() }

// NewStream opens a stream to the agent, to which the caller writes the
// stream header (update payloads).
func (c *Conn) NewStream(ctx context.Context) (transport.Stream, error) {
	return c.sess.OpenStream(ctx)
}

// Draining reports whether the agent or the relay said GoAway on c.
func (c *Conn) Draining() bool { return c.draining.Load() }

// Renewed moves every session of c's agent process (its boot id) to the
// certificate with serial, valid until notAfter, issued by CA root root:
// the agent proved it holds the new key over this session, and its other
// sessions are the same agent process. A session of the same identity
// from another process (a copy of its key pair) stays on its own
// certificate, which no longer renews.
func (c *Conn) Renewed(serial string, notAfter time.Time, root string) {
	c.srv.set.renewed(c, serial, notAfter, root)
}

// errStalled ends a stream open on a connection that stalled (its agent
// stopped answering pings) while another connection could take it.
var errStalled = errors.New("the agent stopped answering on this connection")

// OpenStream opens a stream on c, sends hdr and waits for the agent's
// reply (route.Carrier).
// A refusal by the agent comes back as *protocol.Error; anything else is a
// transport failure worth retrying on another connection.
//
// A reply slower than activeTick is watched: if c stalls meanwhile (its
// agent answers no ping, see Conn.beat) and elsewhere reports another
// usable connection, the open is abandoned with errStalled, to be tried
// there. Without one it waits on, as the agent may yet answer.
func (c *Conn) OpenStream(ctx context.Context, hdr protocol.StreamHeader, early route.Early, elsewhere func() bool) (transport.Stream, error) {
	ac := c
	if ac.open.Add(1) == 1 {
		ac.wake(activeTick) // watch the connection closely while streams use it
	}
	ac.opening.Add(1)
	defer ac.opening.Add(-1)
	st, err := ac.sess.OpenStream(ctx)
	if err != nil {
		ac.open.Add(-1)
		return nil, err
	}
	ok, refused := false, false
	defer func() {
		if ok {
			return
		}
		if refused {
			st.Close()
		} else {
			// Given up before the agent answered: reset, so that an agent
			// that has not read the stream yet drops it. One that was
			// stopped while the opening and the reset both waited for it
			// may still read the opening first (README: first bytes).
			transport.Abort(st)
		}
		ac.open.Add(-1)
	}()
	dl, hasDeadline := ctx.Deadline()
	if hasDeadline {
		st.SetDeadline(dl)
	}
	var gaveUp atomic.Bool
	answered, watched := make(chan struct{}), make(chan struct{})
	watch := time.AfterFunc(activeTick, func() {
		defer close(watched)
		select {
		case <-ac.stalls():
			if elsewhere() {
				gaveUp.Store(true)
				st.SetDeadline(time.Now()) // ends ReadReply below
			}
		case <-answered:
		}
	})
	rep, err := writeHeaderReadReply(st, hdr, early)
	close(answered)
	if !watch.Stop() {
		<-watched
	}
	if err != nil {
		if gaveUp.Load() {
			return nil, fmt.Errorf("%w (no answer to a ping within %v)", errStalled, probeWait)
		}
		// The stream's deadline is ctx's: either may be first to expire.
		if ctx.Err() != nil || (hasDeadline && !time.Now().Before(dl)) {
			return nil, protocol.Errorf(protocol.CodeTimeout, "agent did not answer within %v", c.srv.cfg.StreamOpenTimeout)
		}
		return nil, err
	}
	if err := rep.Err(); err != nil {
		refused = true
		return nil, err
	}
	st.SetDeadline(time.Time{})
	ac.total.Add(1)
	ok = true
	return st, nil
}

// writeHeaderReadReply sends a stream header, early's bytes after it
// (route.Early), and reads the agent's reply.
func writeHeaderReadReply(st transport.Stream, hdr protocol.StreamHeader, early route.Early) (protocol.Reply, error) {
	b, err := hdr.AppendBinary(make([]byte, 0, 16+len(hdr.Service)+len(hdr.Backend)+len(hdr.RequestID)))
	switch {
	case err != nil:
	case early != nil:
		err = early.Attach(st, b)
	default:
		_, err = st.Write(b)
	}
	if err != nil {
		return protocol.Reply{}, fmt.Errorf("send stream header: %w", err)
	}
	return protocol.ReadReply(st)
}

// Transport is "quic" or "tcp".
func (c *Conn) Transport() string { return c.transport }

// NotAfter is when the session's newest certificate expires.
func (c *Conn) NotAfter() time.Time { return time.Unix(0, c.notAfter.Load()) }
