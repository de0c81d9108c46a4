package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/policy"

	"github.com/hashicorp/yamux"
	quicgo "github.com/quic-go/quic-go"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/quic"
	"github.com/tetherhq/tether/protocol/transport/tcp"
	"github.com/tetherhq/tether/relay/internal/store"
)

func (r *Relay) acceptTCP(ctx context.Context, wg *sync.WaitGroup) error {
	tlsConf := r.tls.AgentsTCP()
	for {
		c, err := r.tcpLn.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept agent TCP connection: %w", err)
		}
		// Turned away here, before a goroutine is spent on it, when its
		// source is at its bound: a flood costs an accept and a close.
		leaveSource, ok := r.agentSrc.enter(c.RemoteAddr())
		if !ok {
			r.hsSourceLimited.Add(1)
			r.log.Debug("agent connection turned away: too many handshakes in progress from its address or network", "transport", "tcp", "remote", c.RemoteAddr().String())
			c.Close()
			continue
		}
		wg.Go(func() { r.handleTCP(ctx, wg, c, tlsConf, leaveSource) })
	}
}

// handleTCP serves one agent TCP connection, counted against its source's
// bound until leaveSource is called (once the handshake is over).
func (r *Relay) handleTCP(ctx context.Context, wg *sync.WaitGroup, c net.Conn, tlsConf *tls.Config, leaveSource func()) {
	remote := c.RemoteAddr()
	if !r.gate.enter(ctx) {
		leaveSource()
		r.hsThrottled.Add(1)
		r.log.Debug("agent connection turned away: too many handshakes in progress", "transport", "tcp", "remote", remote.String())
		c.Close()
		return
	}
	var leaveOnce sync.Once
	leave := func() {
		leaveOnce.Do(func() {
			r.gate.leave()
			leaveSource()
		})
	}
	defer leave()
	tc := tls.Server(tcp.NewRawConn(c), tlsConf)
	hctx, cancel := context.WithTimeout(ctx, r.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		r.hsFailed.Add(1)
		r.log.Warn("agent TLS handshake failed", "transport", "tcp", "remote", remote.String(), "err", err)
		c.Close()
		return
	}
	cs := tc.ConnectionState()
	switch cs.NegotiatedProtocol {
	case protocol.ALPNEnroll:
		r.serveEnroll(ctx, tc)
		leave()
	case protocol.ALPN:
		sess, err := tcp.Server(tc, tcp.RelayConfig(r.log))
		if err != nil {
			r.log.Error("start yamux session", "remote", remote.String(), "err", err)
			tc.Close()
			return
		}
		r.serveAgent(ctx, wg, sess, cs, "tcp", remote, leave)
	default:
		tc.Close()
	}
}

func (r *Relay) acceptQUIC(ctx context.Context, wg *sync.WaitGroup) error {
	for {
		conn, err := r.quicLn.Accept(ctx)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, quicgo.ErrServerClosed) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept agent QUIC connection: %w", err)
		}
		wg.Go(func() {
			// The connection holds the TLS slot quicConnContext took
			// before TLS began until the agent is admitted or refused
			// (or the connection ends); the hello also waits for a
			// handshake slot, as over TCP.
			tlsDone, ok := quicSlot(conn.Context())
			if !ok {
				conn.CloseWithError(quic.CodeRefused, "relay busy")
				return
			}
			defer tlsDone()
			if !r.gate.enter(ctx) {
				r.hsThrottled.Add(1)
				conn.CloseWithError(quic.CodeRefused, "relay busy")
				return
			}
			var leaveOnce sync.Once
			leave := func() {
				leaveOnce.Do(func() {
					r.gate.leave()
					tlsDone()
				})
			}
			defer leave()
			r.serveAgent(ctx, wg, quic.NewSession(conn), conn.ConnectionState().TLS, "quic", conn.RemoteAddr(), leave)
		})
	}
}

// agentSession is the transport session of one agent connection, with the
// extras the relay needs beyond transport.Session.
type agentSession interface {
	transport.Session
}

// serveAgent runs one agent connection from the hello to its end. The
// tenant comes from the verified certificate only.
//
// admitted is called once the handshake is over (the agent is welcomed or
// refused), to free its handshake slot.
//
// A welcomed session is served on a goroutine of its own, added to wg, and
// serveAgent returns. The calling goroutine did the handshake's deep work
// (over TCP the TLS handshake itself; the store lookups of admission),
// which grew its stack to 8 KiB or more, and the runtime halves a parked
// goroutine's stack only while it uses under a quarter of it. Parked under
// the handshake's frames, the control-stream reader kept 8 KiB per idle
// agent; on a fresh goroutine the relay's goroutine stacks per idle agent
// came to 16 KiB over TCP where they were 24, and 20 over QUIC where they
// were 25 (BenchmarkFleet).
func (r *Relay) serveAgent(ctx context.Context, wg *sync.WaitGroup, sess agentSession, cs tls.ConnectionState, transportName string, remote net.Addr, admitted func()) {
	defer admitted()
	handedOff := false
	defer func() {
		if !handedOff {
			sess.Close()
		}
	}()
	log := r.log.With("transport", transportName, "remote", remote.String())
	if len(cs.PeerCertificates) == 0 {
		log.Error("agent session without a peer certificate")
		return
	}
	leaf := cs.PeerCertificates[0]
	id, err := identity.AgentFromCertificate(leaf, r.TrustDomain())
	if err != nil { // VerifyConnection already checked this
		log.Error("agent identity", "err", err)
		return
	}
	log = log.With("tenant", id.Tenant, "agent", id.ID)
	connRec := audit.Record{Kind: audit.Connect, Tenant: id.Tenant, Agent: id.ID, Actor: "agent",
		Detail: map[string]any{"transport": transportName, "remote": remote.String(), "cert_serial": leaf.SerialNumber.Text(16)}}

	hctx, cancel := context.WithTimeout(ctx, r.cfg.HandshakeTimeout)
	ctl, err := sess.AcceptStream(hctx)
	cancel()
	if err != nil {
		log.Warn("agent opened no control stream", "err", err)
		return
	}
	ctl.SetDeadline(r.cfg.Now().Add(r.cfg.HandshakeTimeout))
	// Control messages are small; a small buffer keeps idle agents cheap.
	br := bufio.NewReaderSize(ctl, 512)
	hello, err := readHello(br)
	if err == nil {
		log = log.With("agent_version", hello.AgentVersion)
		err = r.admitAgent(ctx, id, leaf, remote, hello)
	}
	if err != nil {
		r.hsFailed.Add(1)
		log.Warn("agent refused", "err", err)
		connRec.Outcome, connRec.Detail["error"] = protocol.CodeOf(err).String(), err.Error()
		r.audit.Add(connRec)
		admitted() // the refusal's grace period holds no handshake slot
		r.reject(sess, ctl, err)
		return
	}
	ac := &agentConn{
		id: id, sess: sess, ctl: ctl, transport: transportName, remote: remote,
		hello: *hello, sessionID: newRequestID(), connectedAt: r.cfg.Now(), log: log,
	}
	ac.lastHeard.Store(time.Now().UnixNano())
	ac.notAfter.Store(leaf.NotAfter.UnixNano())
	ac.onUpdate = func(m protocol.Message) { r.updateMessage(ctx, ac, m) }
	ac.onStall = func() { r.reg.doubtSiblings(ac) }
	authority := r.st.CA()
	if root := authority.IssuerOf(leaf); root != nil {
		ac.setRoot(root.ID())
	}
	welcome := &protocol.Welcome{
		ProtocolVersion: protocol.Version, RelayVersion: r.cfg.Version,
		AgentID: id.ID, Tenant: id.Tenant, SessionID: ac.sessionID,
		HeartbeatMillis: r.cfg.HeartbeatInterval.Milliseconds(),
		Capabilities:    []string{protocol.CapHeartbeat, protocol.CapGoAway, protocol.CapRenew, protocol.CapRenewNow},
	}
	if err := ac.send(welcome); err != nil {
		log.Warn("send welcome", "err", err)
		return
	}
	ctl.SetDeadline(time.Time{})
	admitted()
	r.hsOK.Add(1)

	r.reg.add(ac)
	r.seen.mark(id.ID, time.Now())
	if rev := r.pol.Revoked(id.ID); rev != nil {
		// Revoked between the store lookup and now: the policy watcher
		// may have looked at the registry before this session joined it.
		ac.closeWith(rev)
	}
	connRec.Outcome, connRec.Detail["session"] = audit.OutcomeOK, ac.sessionID
	connRec.Detail["ca_root"] = ac.rootID()
	r.audit.Add(connRec)
	log.Info("agent connected", "session", ac.sessionID, "os", hello.OS, "arch", hello.Arch, "hostname", hello.Hostname, "transport_why", hello.TransportWhy)
	if authority.RenewNow() && ac.rootID() != authority.Signer().ID() {
		// The operator asked agents to move to the new root at once: this
		// one was offline when the others were asked.
		r.askRenewal(ac, authority.Signer().ID(), time.Second)
	}
	handedOff = true
	wg.Go(func() { r.serveSession(ctx, ac, br) })
}

// serveSession serves a welcomed agent session, which serveAgent added to
// the registry, until it ends; then it takes the session out and closes it.
func (r *Relay) serveSession(ctx context.Context, ac *agentConn, br *bufio.Reader) {
	defer ac.sess.Close()
	defer func() {
		r.reg.remove(ac)
		r.seen.mark(ac.id.ID, time.Unix(0, ac.lastHeard.Load()))
	}()
	err := ac.run(ctx, br, r.cfg.HeartbeatInterval, func(m *protocol.RenewRequest) *protocol.RenewResponse { return r.renew(ctx, ac, m) })
	reason := disconnectReason(err)
	r.metrics.disconnects.WithLabelValues(reason).Inc()
	ac.log.Info("agent disconnected", "session", ac.sessionID, "reason", reason, "err", err, "streams_total", ac.total.Load())
}

func readHello(br *bufio.Reader) (*protocol.Hello, error) {
	m, err := protocol.ReadMessage(br)
	if err != nil {
		return nil, fmt.Errorf("read hello: %w", err)
	}
	h, ok := m.(*protocol.Hello)
	if !ok {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "expected hello, got message type %d", m.Type())
	}
	return h, nil
}

// admitAgent decides whether an authenticated agent may serve: its
// certificate is current, it is registered and not revoked, and its
// tenant's limits allow one more agent from where it connects.
func (r *Relay) admitAgent(ctx context.Context, id identity.Agent, leaf *x509.Certificate, remote net.Addr, h *protocol.Hello) error {
	if h.ProtocolVersion < protocol.MinVersion {
		return protocol.Errorf(protocol.CodeUnsupportedVersion,
			"agent speaks protocol version %d; this relay accepts %d to %d: upgrade the agent", h.ProtocolVersion, protocol.MinVersion, protocol.Version)
	}
	if now := r.cfg.Now(); now.After(leaf.NotAfter) {
		return protocol.Errorf(protocol.CodeCertExpired, "agent %s's certificate expired at %s (the agent was offline longer than its certificate lived): enrol it again with a new join token",
			id.ID, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	rec, err := r.st.store.Agent(ctx, id.ID)
	if errors.Is(err, store.ErrNotFound) || (err == nil && rec.Tenant != id.Tenant) {
		return protocol.Errorf(protocol.CodeUnknownAgent, "agent %s is not registered with this relay: enrol it again with a new join token", id.ID)
	}
	if err != nil {
		return protocol.Errorf(protocol.CodeInternal, "look up agent: %v", err)
	}
	if !rec.RevokedAt.IsZero() {
		return policy.RevokedError(rec)
	}
	if serial := leaf.SerialNumber.Text(16); serial != rec.CertSerial {
		// Not the certificate the relay last issued: the agent stopped
		// between a renewal's answer and installing it. Record the one it
		// uses, so that the CA root it depends on is counted right (ca
		// status, ca retire).
		if root := r.st.CA().IssuerOf(leaf); root != nil {
			if err := r.st.store.SetAgentCert(ctx, id.ID, serial, leaf.NotAfter, root.ID()); err != nil {
				r.log.Warn("record the certificate an agent connected with", "agent", id.ID, "err", err)
			}
		}
	}
	if l := r.pol.LimitsOf(id.Tenant); l != nil {
		if !l.Allows(remote) {
			return protocol.Errorf(protocol.CodeNotAllowed, "agent connects from %s, outside the networks tenant %q allows for its agents", remote, id.Tenant)
		}
		if l.MaxAgents > 0 && !r.reg.hasAgent(id.Tenant, id.ID) && r.reg.distinctAgents(id.Tenant) >= l.MaxAgents {
			return protocol.Errorf(protocol.CodeLimitExceeded, "tenant %q already has %d agents connected, its limit", id.Tenant, l.MaxAgents)
		}
	}
	return nil
}

// reject tells the agent why it is refused and closes the session once the
// agent has read it (or after a short grace period).
func (r *Relay) reject(sess agentSession, ctl transport.Stream, err error) {
	ctl.SetDeadline(time.Now().Add(2 * time.Second))
	if protocol.WriteMessage(ctl, protocol.RejectFor(err)) == nil {
		ctl.CloseWrite()
		t := time.NewTimer(2 * time.Second)
		defer t.Stop()
		select {
		case <-sess.Done():
		case <-t.C:
		}
	}
	if qs, ok := sess.(*quic.Session); ok {
		qs.CloseWithError(quic.CodeRefused, protocol.CodeOf(err).String())
		return
	}
	sess.Close()
}

// agentConn is one live, admitted agent session.
type agentConn struct {
	id          identity.Agent
	sess        agentSession
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
	onStall      func()                // called each time the session stalls; must not block
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

	offer atomic.Pointer[updateOffer] // the release last offered on this session (rollout.go)
	// updMu orders the records of an offer and the agent's answers to it:
	// an agent can refuse an offer before the relay has recorded making it.
	updMu    sync.Mutex
	onUpdate func(protocol.Message) // handles update messages; must not block

	ctlMu sync.Mutex // serialises writes to ctl
	ctl   transport.Stream
}

func (c *agentConn) setRoot(id string) { c.root.Store(&id) }

// rootID is the CA root of the session's newest certificate ("" if none
// of the active roots issued it).
func (c *agentConn) rootID() string {
	if p := c.root.Load(); p != nil {
		return *p
	}
	return ""
}

func (c *agentConn) send(m protocol.Message) error {
	c.ctlMu.Lock()
	defer c.ctlMu.Unlock()
	return protocol.WriteMessage(c.ctl, m)
}

// closeWith tells the agent why its session ends (a Reject on the control
// stream, written with a short deadline) and closes the session. New
// streams stop going to it at once.
func (c *agentConn) closeWith(err error) {
	c.cause.CompareAndSwap(nil, &err)
	c.draining.Store(true)
	c.ctlMu.Lock()
	c.ctl.SetDeadline(time.Now().Add(500 * time.Millisecond))
	werr := protocol.WriteMessage(c.ctl, protocol.RejectFor(err))
	c.ctlMu.Unlock()
	if werr != nil {
		c.log.Debug("send reject", "err", werr)
	}
	c.log.Info("closing session", "why", err)
	c.sess.Close()
}

// healthy reports whether new streams may go to c: it is not draining, not
// stalled or doubted (see beat), its session is up and it was heard from
// after heardAfter (Unix nanoseconds).
func (c *agentConn) healthy(heardAfter int64) bool {
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
func (c *agentConn) run(ctx context.Context, br *bufio.Reader, hb time.Duration, renew func(*protocol.RenewRequest) *protocol.RenewResponse) error {
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

	err := c.ended(c.readLoop(br, renew))
	end(err)
	stopCtx()
	c.tickMu.Lock()
	c.tickStop = true
	c.tickMu.Unlock()
	c.tick.Stop()
	ticks.Wait()
	mu.Lock()
	defer mu.Unlock()
	return why
}

// ended explains why the control stream's reader stopped with err: the
// relay's own reason when it closed the session (closeWith), else the
// transport's cause when the session failed under the stream (a QUIC idle
// timeout reads as a closed stream), else err.
func (c *agentConn) ended(err error) error {
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
// is alive), stalls the session: no new streams go to it, a stream open
// waiting on it moves to another connection of the tenant (openOn), and the
// agent's other sessions are pinged at once (onStall). The first message
// from the agent lifts it (heard). A frozen agent (stopped, or behind a
// path that drops packets) is thus avoided within about probeWait plus
// activeTick of the first stream sent to it, or of its freezing while
// streams are open on it; idle sessions cost what they did.
func (c *agentConn) beat(now time.Time, hb time.Duration) (time.Duration, error) {
	if silent := now.Sub(time.Unix(0, c.lastHeard.Load())); silent > 3*hb {
		return 0, fmt.Errorf("%w for %v", errHeartbeatMissed, silent.Round(time.Millisecond))
	}
	if na := time.Unix(0, c.notAfter.Load()); now.After(na) {
		err := protocol.Errorf(protocol.CodeCertExpired, "the certificate of this session expired at %s and was not renewed", na.UTC().Format(time.RFC3339))
		c.closeWith(err)
		return 0, err
	}
	active := c.open.Load() > 0 || c.doubted.Load() || c.stalled.Load()
	if since := c.awaitSince.Load(); since != 0 {
		if got := c.received(); got != c.awaitPackets.Load() {
			// The transport hears from the agent: alive, slow to answer.
			c.awaitPackets.Store(got)
			c.awaitSince.CompareAndSwap(since, now.UnixNano())
		} else if waited := now.Sub(time.Unix(0, since)); waited >= probeWait && !c.stalled.Swap(true) {
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
func (c *agentConn) ping(now time.Time) error {
	seq := c.pingSeq.Add(1)
	c.pingSentAt.Store(now.UnixNano())
	if c.awaitSince.CompareAndSwap(0, now.UnixNano()) {
		c.awaitPackets.Store(c.received())
	}
	return c.send(&protocol.Ping{Seq: seq})
}

// received is a count that moves whenever the transport receives anything
// from the agent: QUIC packets, acknowledgements included, or reads of the
// TCP connection. 0 where the transport does not tell.
func (c *agentConn) received() uint64 {
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
func (c *agentConn) heard(now time.Time) {
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

// notifyStall wakes stream opens waiting on the session (stalls) and tells
// onStall.
func (c *agentConn) notifyStall() {
	c.tickMu.Lock()
	if c.stallWait != nil {
		close(c.stallWait)
		c.stallWait = nil
	}
	c.tickMu.Unlock()
	if c.onStall != nil {
		c.onStall()
	}
}

// stalls returns a channel closed when the session stalls; at once if it
// has.
func (c *agentConn) stalls() <-chan struct{} {
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
func (c *agentConn) doubt() {
	if c.stalled.Load() || c.doubted.Swap(true) {
		return
	}
	c.wake(0)
}

// wake makes the session's timer tick within d, unless it is due sooner.
func (c *agentConn) wake(d time.Duration) {
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

func (c *agentConn) readLoop(br *bufio.Reader, renew func(*protocol.RenewRequest) *protocol.RenewResponse) error {
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
			if err := c.send(&protocol.Pong{Seq: m.Seq}); err != nil {
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
			if err := c.send(renew(m)); err != nil {
				return fmt.Errorf("send renewal: %w", err)
			}
		case *protocol.Report:
			c.noteReport(m, time.Now())
		case *protocol.UpdateFetch, *protocol.UpdateStatus:
			if c.onUpdate != nil {
				c.onUpdate(m)
			}
		default:
			// Unknown and out-of-place messages are ignored for
			// forward compatibility.
		}
	}
}

// registry holds the live agent connections by tenant.
type registry struct {
	mu       sync.RWMutex // guards byTenant and changed
	byTenant map[string][]*agentConn
	changed  chan struct{} // closed and replaced when a connection is added
	// fresh holds a token when a tenant has gained its first connection
	// since the token was last taken (see newTenants).
	fresh chan struct{}
}

func newRegistry() *registry {
	return &registry{byTenant: make(map[string][]*agentConn), changed: make(chan struct{}), fresh: make(chan struct{}, 1)}
}

// newTenants returns a channel that yields after a tenant with no
// connection gains one; many such tenants before the next receive yield
// once.
func (g *registry) newTenants() <-chan struct{} { return g.fresh }

// changes returns a channel closed at the next add.
func (g *registry) changes() <-chan struct{} {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.changed
}

// tenants lists the tenants with at least one connection.
func (g *registry) tenants() []string {
	g.mu.RLock()
	defer g.mu.RUnlock()
	out := make([]string, 0, len(g.byTenant))
	for t := range g.byTenant {
		out = append(out, t)
	}
	return out
}

// add registers c. Connections of the same agent from an earlier process
// (another boot id) are stale — that process is gone — so they are closed
// at once rather than left to time out while streams are sent to them.
func (g *registry) add(c *agentConn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	list := g.byTenant[c.id.Tenant]
	if c.hello.BootID != "" {
		for _, old := range list {
			if old.id.ID == c.id.ID && old.hello.BootID != "" && old.hello.BootID != c.hello.BootID && !old.draining.Swap(true) {
				old.log.Info("closing stale session: the agent restarted", "new_boot_id", c.hello.BootID)
				old.cause.CompareAndSwap(nil, &errAgentRestarted)
				old.sess.Close()
			}
		}
	}
	g.byTenant[c.id.Tenant] = append(list, c)
	close(g.changed)
	g.changed = make(chan struct{})
	if len(list) == 0 {
		select {
		case g.fresh <- struct{}{}:
		default:
		}
	}
}

func (g *registry) remove(c *agentConn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	list := g.byTenant[c.id.Tenant]
	for i, x := range list {
		if x == c {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(g.byTenant, c.id.Tenant)
	} else {
		g.byTenant[c.id.Tenant] = list
	}
}

// pick returns the healthy connection of tenant with the fewest open
// streams, skipping those in exclude; ties are broken at random so load
// spreads. It never looks at another tenant's connections.
func (g *registry) pick(tenant string, hb time.Duration, exclude map[*agentConn]bool) *agentConn {
	g.mu.RLock()
	defer g.mu.RUnlock()
	list := g.byTenant[tenant]
	if len(list) == 0 {
		return nil
	}
	var best *agentConn
	var bestOpen int64
	// One clock reading for the whole scan: a tenant may have thousands of
	// connections, and reading the clock for each cost more than the rest
	// of the scan together.
	after := heardAfter(time.Now(), hb)
	start := rand.IntN(len(list))
	for i := range list {
		c := list[(start+i)%len(list)]
		if exclude[c] || !c.healthy(after) {
			continue
		}
		if n := c.open.Load(); best == nil || n < bestOpen {
			best, bestOpen = c, n
		}
	}
	return best
}

// doubtSiblings doubts every other session of c's agent process (see
// agentConn.doubt): when one session of an agent stops answering, its
// others, from the same process and most often over the same path, have
// most likely stopped too; a live one answers the ping within a round trip.
func (g *registry) doubtSiblings(c *agentConn) {
	g.mu.RLock()
	var sibs []*agentConn
	for _, o := range g.byTenant[c.id.Tenant] {
		if o != c && o.id.ID == c.id.ID && o.hello.BootID == c.hello.BootID {
			sibs = append(sibs, o)
		}
	}
	g.mu.RUnlock()
	for _, o := range sibs {
		o.doubt()
	}
}

// closeAgent closes every session of agent id (of tenant) with err and
// reports how many there were.
func (g *registry) closeAgent(tenant, id string, err error) int {
	g.mu.RLock()
	var conns []*agentConn
	for _, c := range g.byTenant[tenant] {
		if c.id.ID == id {
			conns = append(conns, c)
		}
	}
	g.mu.RUnlock()
	for _, c := range conns {
		c.closeWith(err)
	}
	return len(conns)
}

// renewed moves every session of agent id to a certificate valid until
// notAfter, issued by CA root root.
func (g *registry) renewed(id identity.Agent, notAfter time.Time, root string) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	for _, c := range g.byTenant[id.Tenant] {
		if c.id.ID == id.ID && c.notAfter.Load() < notAfter.UnixNano() {
			c.notAfter.Store(notAfter.UnixNano())
			c.setRoot(root)
		}
	}
}

// notOnRoot returns one live session of every agent whose newest
// certificate was not issued by root.
func (g *registry) notOnRoot(root string) []*agentConn {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var out []*agentConn
	seen := map[string]bool{}
	for _, list := range g.byTenant {
		for _, c := range list {
			if seen[c.id.ID] || c.draining.Load() {
				continue
			}
			seen[c.id.ID] = true
			if c.rootID() != root {
				out = append(out, c)
			}
		}
	}
	return out
}

// hasAgent reports whether agent id of tenant has a session.
func (g *registry) hasAgent(tenant, id string) bool { return g.sessionsOf(tenant, id) > 0 }

// sessionsOf counts the sessions of agent id of tenant.
func (g *registry) sessionsOf(tenant, id string) int {
	g.mu.RLock()
	defer g.mu.RUnlock()
	n := 0
	for _, c := range g.byTenant[tenant] {
		if c.id.ID == id {
			n++
		}
	}
	return n
}

// distinctAgents counts the agents (not sessions) of tenant connected.
func (g *registry) distinctAgents(tenant string) int {
	g.mu.RLock()
	defer g.mu.RUnlock()
	seen := map[string]bool{}
	for _, c := range g.byTenant[tenant] {
		seen[c.id.ID] = true
	}
	return len(seen)
}

// connected returns how many connections tenant has (healthy or not).
func (g *registry) connected(tenant string) int {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return len(g.byTenant[tenant])
}

// goAwayAll marks every connection draining and sends each a GoAway that
// tells the agent how long its streams in flight stay open (drain), so
// that it keeps them that long rather than by its own drain timeout. The
// sends run on wg because a send blocks while an agent is not reading;
// they end at the latest when the sessions close.
func (g *registry) goAwayAll(wg *sync.WaitGroup, reason, msg string, drain time.Duration) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	for _, list := range g.byTenant {
		for _, c := range list {
			c.draining.Store(true)
			wg.Go(func() {
				if err := c.send(&protocol.GoAway{Reason: reason, Message: msg, DrainMillis: drain.Milliseconds()}); err != nil {
					c.log.Debug("send goaway", "err", err)
				}
			})
		}
	}
}

func newRequestID() string { return fmt.Sprintf("%016x", rand.Uint64()) }
