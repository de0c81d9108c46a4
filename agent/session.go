package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/quic"
	"github.com/tetherhq/tether/protocol/transport/tcp"
)

// helloTimeout bounds the control-stream handshake after the transport is up.
const helloTimeout = 10 * time.Second

// maxStreamsPerSession is how many streams the relay may have open at once
// on one session. QUIC enforces it: the relay cannot open more. yamux has
// no such bound, so over TLS and TCP the agent counts the session's
// streams — those it closed and the relay has not closed yet among them —
// and refuses those beyond it (acceptLoop). A variable for tests.
var maxStreamsPerSession = 10000

// overLimitReplies is how many streams beyond maxStreamsPerSession a
// yamux session answers with a refusal; beyond those (a relay that keeps
// opening streams without reading the refusals) they are reset without a
// reply, so that they cost no goroutine.
const overLimitReplies = 64

// Watching the relay while streams are open (serve).
const (
	// activeTick is how often the agent looks at the relay, and pings it
	// when it has heard nothing for that long, while streams are open.
	activeTick = time.Second
	// activeSilence ends a session on which streams are open when nothing
	// at all has arrived from the relay for this long.
	activeSilence = 3 * time.Second
)

// session is one live connection to a relay.
type session struct {
	a     *Agent
	t     transport.Session
	ctl   transport.Stream
	br    *bufio.Reader
	relay string // the address dialled
	// relayID is the relay's id from its Welcome, or the id of the listed
	// relay dialled when the Welcome gives none; empty for a relay that
	// says nothing of its cluster.
	relayID   string
	transport string
	why       string // why this transport was used
	welcome   protocol.Welcome
	log       *slog.Logger
	baseLog   *slog.Logger // the slot's logger, for sessions that replace this one

	ctx    context.Context // cancelled by close; bounds probes
	cancel context.CancelFunc

	quicProbeAt time.Time        // non-zero on a TCP fallback: when to try QUIC again
	probed      chan probeResult // outcome of a QUIC probe
	next        *session         // the session replacing this one (endUpgrade, endMove)
	moveTo      chan *session    // a session to another relay that replaces this one (endMove)

	ctlMu sync.Mutex // serialises writes to ctl

	renewMu sync.Mutex                   // one renewal at a time
	renewed chan *protocol.RenewResponse // the control reader hands answers over

	wg          sync.WaitGroup // every goroutine of the session, streams included
	open        atomic.Int64   // stream handlers running
	streamDone  chan struct{}  // signalled (non-blocking) when a stream handler ends
	streamStart chan struct{}  // signalled (non-blocking) when a stream handler starts

	goaway     chan struct{} // closed when the relay sends GoAway
	goawayOnce sync.Once
	// goawayReason is the reason of the relay's GoAway, set before goaway
	// is closed.
	goawayReason string
	// drainUntil is when the relay's GoAway said it closes the streams in flight.
	drainUntil atomic.Pointer[time.Time]
	readDone   chan struct{} // closed when the control reader exits
	pinging    atomic.Bool   // a ping is being written (ping)
	lastHeard  atomic.Int64
	rtt        atomic.Int64
	pingSeq    atomic.Uint64
	pingSentAt atomic.Int64
	rttKnown   chan struct{} // signalled (non-blocking) when the first RTT is measured
	// overLimitLogAt is when (Unix nanoseconds) a stream refused over
	// maxStreamsPerSession was last logged.
	overLimitLogAt atomic.Int64
	// refusalLog bounds the lines about streams refused (stream.go).
	refusalLog logLimiter

	endMu sync.Mutex // guards ended
	ended error

	svcMu     sync.Mutex            // guards svcConns and svcClosed
	svcConns  map[net.Conn]struct{} // service connections of the streams in flight
	svcClosed bool                  // close has closed them: no more may start
}

// endReason says why serve returned.
type endReason int

const (
	endLost     endReason = iota // the session failed or the relay closed it
	endGoAway                    // the relay asked the agent to go away
	endShutdown                  // the agent is stopping
	endUpgrade                   // a QUIC session (s.next) replaces this TCP fallback
	endMove                      // a session to another relay (s.next) replaces this one
)

// connect dials relay with the configured transport (falling back from
// QUIC to TCP in auto mode) and completes the hello.
func (a *Agent) connect(ctx context.Context, relay string, log *slog.Logger) (*session, error) {
	if err := a.certExpired(); err != nil {
		return nil, err
	}
	tlsConf := a.tlsConfig()
	var (
		ts        transport.Session
		name, why string
		err       error
		probeAt   time.Time // when a TCP fallback session tries QUIC again
	)
	if err := a.egress.check(relay); err != nil {
		// A relay of the cluster's list (New refuses a configured one).
		return nil, fmt.Errorf("relay %s would be reached through the HTTP proxy: %w", relay, err)
	}
	proxy := a.egress.forRelay(relay)
	switch a.cfg.Transport {
	case TransportQUIC:
		if proxy != nil {
			// A relay of the cluster's list (New refuses transport quic
			// when a configured relay is behind the proxy).
			return nil, fmt.Errorf("dial %s over quic: the relay is reached through the HTTP proxy %s and QUIC is unavailable through an HTTP proxy: use transport auto or tcp, or exempt it with no_proxy", relay, proxy.Redacted())
		}
		name, why = TransportQUIC, "configured"
		ts, err = a.dialQUIC(ctx, relay, tlsConf)
	case TransportTCP:
		name, why = TransportTCP, "configured"
		ts, err = a.dialTCP(ctx, relay, tlsConf)
	default:
		if proxy != nil {
			name, why = TransportTCP, "auto: QUIC is unavailable through an HTTP proxy"
			ts, err = a.dialTCP(ctx, relay, tlsConf)
			break
		}
		if until, ok := a.quicFallback(relay); ok {
			name, why, probeAt = TransportTCP, fmt.Sprintf("fallback: QUIC failed recently; next QUIC attempt after %s", until.Format(time.RFC3339)), until
			ts, err = a.dialTCP(ctx, relay, tlsConf)
			break
		}
		qctx, cancel := context.WithTimeout(ctx, a.cfg.QUICTimeout)
		ts, err = a.dialQUIC(qctx, relay, tlsConf)
		cancel()
		name, why = TransportQUIC, "auto: QUIC preferred"
		if err != nil && ctx.Err() == nil && !isTLSRefusal(err) && !isUntrustedRelay(err) && !isRelayBusy(err) && !isRelayRefused(err) {
			until := a.markQUICFailed(relay)
			log.Warn("QUIC to relay failed (UDP blocked?); falling back to TLS over TCP", "relay", relay, "err", err, "quic_retry_after", until.Format(time.RFC3339))
			name, why, probeAt = TransportTCP, fmt.Sprintf("fallback: QUIC failed: %v", err), until
			ts, err = a.dialTCP(ctx, relay, tlsConf)
		}
	}
	if isRelayRefused(err) {
		return nil, err
	}
	if isRelayBusy(err) {
		return nil, fmt.Errorf("dial %s over %s: the relay is busy with other agents' handshakes and refused this one; retrying after a backoff: %w", relay, name, err)
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s over %s: %w", relay, name, err)
	}
	if proxy != nil {
		// Told to the relay (which logs it): the host and port of the
		// proxy, never its credentials.
		why += "; through HTTP proxy " + proxyAddr(proxy)
		log = log.With("proxy", proxy.Redacted())
	}
	s := a.newSession(ts, relay, name, why, log)
	s.quicProbeAt = probeAt
	if err := s.hello(ctx); err != nil {
		ts.Close()
		return nil, err
	}
	if proxy == nil {
		if ra, ok := ts.(interface{ RemoteAddr() net.Addr }); ok {
			a.guard.reachedAt(relay, ra.RemoteAddr())
		}
	}
	s.log.Info("connected to relay", "transport_why", why, "relay_version", s.welcome.RelayVersion)
	return s, nil
}

func (a *Agent) tlsConfig() *tls.Config {
	conf := identity.AgentClientConfig(a.roots.Load(), a.state.TrustDomain, func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return a.cert.Load(), nil
	})
	verify := conf.VerifyConnection
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		err := verify(cs)
		if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
			return &untrustedRelayError{err}
		}
		return err
	}
	return conf
}

// untrustedRelayError is a relay certificate from a CA root the agent does
// not trust. The usual cause is a CA rotation that ended (the old root
// retired) while the agent was offline, so it never learnt the new root.
type untrustedRelayError struct{ err error }

func (e *untrustedRelayError) Error() string {
	return "the relay's certificate does not come from a CA root this agent trusts (if the relay's CA was rotated and its old root retired while this agent was offline, enrol it again with a new join token): " + e.err.Error()
}

func (e *untrustedRelayError) Unwrap() error { return e.err }

func isUntrustedRelay(err error) bool {
	_, ok := errors.AsType[*untrustedRelayError](err)
	return ok
}

func (a *Agent) newSession(ts transport.Session, relay, name, why string, log *slog.Logger) *session {
	s := &session{
		a: a, t: ts, relay: relay, transport: name, why: why, baseLog: log,
		goaway: make(chan struct{}), readDone: make(chan struct{}), streamDone: make(chan struct{}, 1), streamStart: make(chan struct{}, 1),
		probed: make(chan probeResult, 1), renewed: make(chan *protocol.RenewResponse, 1),
		rttKnown: make(chan struct{}, 1),
	}
	s.moveTo = make(chan *session)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.log = log.With("relay", relay, "transport", name)
	return s
}

// probeResult is the outcome of trying QUIC while on a TCP fallback.
type probeResult struct {
	next  *session  // a ready QUIC session, or nil
	retry time.Time // when to try again if next is nil
}

// probeQUIC tries a QUIC session to the same relay. Run on s.wg.
func (s *session) probeQUIC() {
	a := s.a
	pctx, cancel := context.WithTimeout(s.ctx, a.cfg.QUICTimeout)
	ts, err := a.dialQUIC(pctx, s.relay, a.tlsConfig())
	cancel()
	if err == nil {
		ns := a.newSession(ts, s.relay, TransportQUIC, "auto: QUIC available again after a fallback", s.baseLog)
		if err = ns.hello(s.ctx); err == nil {
			a.clearQUICFallback(s.relay)
			s.probed <- probeResult{next: ns}
			return
		}
		ts.Close()
	}
	until := a.markQUICFailed(s.relay)
	s.log.Info("QUIC still unavailable; staying on TCP", "err", err, "next_attempt", until.Format(time.RFC3339))
	s.probed <- probeResult{retry: until}
}

func (a *Agent) dialQUIC(ctx context.Context, relay string, tlsConf *tls.Config) (transport.Session, error) {
	addr := relay
	if a.guard.listed(relay) {
		var err error
		if addr, err = a.guard.quicAddr(ctx, relay); err != nil {
			return nil, err
		}
	}
	return quic.Dial(ctx, addr, tlsConf, quic.Config(int64(maxStreamsPerSession)))
}

func (a *Agent) dialTCP(ctx context.Context, relay string, tlsConf *tls.Config) (transport.Session, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	d := &net.Dialer{KeepAlive: 15 * time.Second}
	proxy := a.egress.forRelay(relay)
	if a.guard.listed(relay) {
		if proxy != nil {
			if err := a.guard.checkProxied(ctx, relay); err != nil {
				return nil, err
			}
		} else {
			d.Control = a.guard.control(relay)
		}
	}
	dial := a.egress.dialer(relay, d.DialContext)
	tunnel := false // the proxy opened the tunnel: what fails next happened through it
	if proxy != nil {
		through := dial
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := through(ctx, network, addr)
			tunnel = err == nil
			return c, err
		}
	}
	ts, err := tcp.Dial(ctx, dial, relay, tlsConf, tcp.Config(a.log))
	if err != nil && tunnel {
		return nil, throughProxy(proxy, err)
	}
	return ts, err
}

// quicFallback reports whether auto mode should use TCP for relay now.
func (a *Agent) quicFallback(relay string) (time.Time, bool) {
	a.fbMu.Lock()
	defer a.fbMu.Unlock()
	until, ok := a.fallback[relay]
	if ok && time.Now().After(until) {
		delete(a.fallback, relay)
		return time.Time{}, false
	}
	return until, ok
}

func (a *Agent) clearQUICFallback(relay string) {
	a.fbMu.Lock()
	defer a.fbMu.Unlock()
	delete(a.fallback, relay)
}

// markQUICFailed keeps relay on TCP for QUICRetry plus up to half as much
// again, at random: agents that fell back together — a fleet whose QUIC
// handshakes timed out while the relay restarted — then try QUIC again
// spread out rather than all at once. The fallbacks that have expired are
// forgotten: an entry is otherwise dropped only when its relay is dialled
// again, and relays of a cluster come and go (each address the agent ever
// fell back for would stay).
func (a *Agent) markQUICFailed(relay string) time.Time {
	a.fbMu.Lock()
	defer a.fbMu.Unlock()
	now := time.Now()
	for r, until := range a.fallback {
		if now.After(until) {
			delete(a.fallback, r)
		}
	}
	until := now.Add(a.cfg.QUICRetry + rand.N(a.cfg.QUICRetry/2+1))
	a.fallback[relay] = until
	return until
}

// hello opens the control stream, sends Hello and waits for Welcome.
func (s *session) hello(ctx context.Context) error {
	hctx, cancel := context.WithTimeout(ctx, helloTimeout)
	defer cancel()
	// A relay that refuses the agent closes the QUIC connection with why
	// too: that refusal is reported as a Reject is, below.
	fail := func(op string, err error) error {
		err = s.explain(err)
		if ref := closeRefusal(err); ref != nil {
			return fmt.Errorf("relay refused this agent: %w", ref)
		}
		return fmt.Errorf("%s: %w", op, err)
	}
	ctl, err := s.t.OpenStream(hctx)
	if err != nil {
		return fail("open control stream", err)
	}
	s.ctl = ctl
	s.br = bufio.NewReader(ctl)
	ctl.SetDeadline(time.Now().Add(helloTimeout))
	host, _ := os.Hostname()
	caps, bootID := []string{protocol.CapHeartbeat, protocol.CapGoAway, protocol.CapUpdate, protocol.CapRelays}, s.a.bootID
	if s.a.cfg.UpdateTrial != "" {
		// A trial must not push the running agent's sessions out.
		caps, bootID = append(caps, protocol.CapUpdateTrial), ""
	}
	if err := s.send(&protocol.Hello{
		ProtocolVersion: protocol.Version, AgentVersion: s.a.cfg.Version,
		OS: runtime.GOOS, Arch: runtime.GOARCH, Hostname: host,
		Capabilities: caps, UpdateChannel: s.a.cfg.Update.Channel,
		Transport: s.transport, TransportWhy: s.why, BootID: bootID,
	}); err != nil {
		return fail("send hello", err)
	}
	m, err := protocol.ReadMessage(s.br)
	if err != nil {
		return fail("read welcome", err)
	}
	switch m := m.(type) {
	case *protocol.Welcome:
		// The session id goes into every access-log line, the logs and
		// the status: a relay's id of any other shape is refused.
		if err := protocol.ValidateSessionID(m.SessionID); err != nil {
			return fmt.Errorf("relay's welcome refused: %w", err)
		}
		s.welcome = *m
	case *protocol.Reject:
		return fmt.Errorf("relay refused this agent: %w", m.Err())
	default:
		return fmt.Errorf("relay answered hello with message type %d", m.Type())
	}
	ctl.SetDeadline(time.Time{})
	s.lastHeard.Store(time.Now().UnixNano())
	s.log = s.log.With("session", s.welcome.SessionID)
	if id := s.welcome.RelayID; id != "" {
		if err := protocol.ValidateRelayID(id); err != nil {
			s.log.Warn("the relay's id in its welcome is not valid: ignored", "err", err)
		} else {
			s.relayID = id
			s.log = s.log.With("relay_id", id)
		}
	}
	if s.a.upd != nil {
		s.a.upd.sessionUp()
	}
	return nil
}

// sendsList reports whether the relay said, in its Welcome, that it sends
// the cluster's relay list.
func (s *session) sendsList() bool {
	return slices.Contains(s.welcome.Capabilities, protocol.CapRelays)
}

func (s *session) send(m protocol.Message) error {
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	return protocol.WriteMessage(s.ctl, m)
}

// goAway tells the relay this session is going away. It is called on the
// goroutine that then drains the session, not on the slot's: a relay that
// does not read (partitioned, its connection's buffers full) would
// otherwise hold the write, and with it the serving of the slot's new
// session, whose streams the relay already sends.
func (s *session) goAway(reason, message string) {
	if err := s.send(&protocol.GoAway{Reason: reason, Message: message}); err != nil {
		s.log.Debug("send goaway", "err", err)
	}
}

// setEnd records err as why the session ended, unless a reason was
// recorded before. When the relay closed the QUIC connection with a
// refusal (closeRefusal) and err says nothing more of why — a closed
// stream, a failed write, a done session — the refusal is the reason, as
// a Reject on the control stream is: the relay writes one, and then closes
// with it, and whichever the agent sees first is reported, once.
func (s *session) setEnd(err error) {
	if ref := s.refusal(err); ref != nil {
		err = fmt.Errorf("relay closed the session: %w", ref)
	}
	s.endMu.Lock()
	defer s.endMu.Unlock()
	if s.ended == nil {
		s.ended = err
	}
}

// refusal returns the refusal the relay closed the session's QUIC
// connection with, from err or, when err carries no refusal of its own (a
// Reject read on the control stream says more than a close), from the
// session's end; nil when there is none (a TCP session, a close without
// one, a session still up).
func (s *session) refusal(err error) *protocol.Error {
	if ref := closeRefusal(err); ref != nil {
		return ref
	}
	if _, ok := errors.AsType[*protocol.Error](err); ok {
		return nil
	}
	if c, ok := s.t.(interface{ Err() error }); ok {
		return closeRefusal(c.Err())
	}
	return nil
}

func (s *session) endErr() error {
	s.endMu.Lock()
	defer s.endMu.Unlock()
	return s.ended
}

// serve accepts streams and keeps the control stream alive until the
// session ends, the relay sends GoAway, or ctx is done.
func (s *session) serve(ctx context.Context) endReason {
	s.wg.Go(s.readLoop)
	s.wg.Go(s.acceptLoop)
	s.wg.Go(s.reportLoop)
	hb := heartbeatOf(s.welcome)
	// A first ping at once measures the RTT for the first reports rather
	// than a heartbeat later.
	s.pingSentAt.Store(time.Now().UnixNano())
	if err := s.send(&protocol.Ping{Seq: s.pingSeq.Add(1)}); err != nil {
		s.setEnd(fmt.Errorf("send ping: %w", s.explain(err)))
		return endLost
	}
	t := time.NewTicker(hb)
	defer t.Stop()
	// Over QUIC, a heartbeat unanswered within pongWait ends the session
	// when the relay's endpoint has sent nothing since the ping, not even
	// an acknowledgement: a relay that died (and so sent nothing, not even
	// a close) is otherwise noticed only after 3 silent heartbeats. A relay
	// that acknowledges but answers late is alive and busy — with a fleet
	// reconnecting after its restart, say — and leaving it would add one
	// more handshake to its load; the silence limit still bounds how late
	// it may answer. Over TCP the kernel reports a dead relay, and a pong
	// may legitimately wait behind bulk data on a slow link, so only the
	// silence limit applies.
	pongWait := min(max(hb/2, 2*time.Second), 5*time.Second)
	packets, _ := s.t.(interface{ PacketsReceived() uint64 })
	var (
		packetsAtPing uint64
		pingAt        int64 // Unix nanoseconds of the heartbeat the pong timer checks
	)
	pongTimer := time.NewTimer(time.Hour)
	pongTimer.Stop()
	defer pongTimer.Stop()
	// On a TCP fallback, a timer schedules QUIC probes.
	var probeTimer *time.Timer
	var probe <-chan time.Time
	armProbe := func(at time.Time) {
		probeTimer = time.NewTimer(time.Until(at))
		probe = probeTimer.C
	}
	defer func() {
		if probeTimer != nil {
			probeTimer.Stop()
		}
	}()
	if !s.quicProbeAt.IsZero() {
		armProbe(s.quicProbeAt)
	}
	// While streams are open the agent watches the relay closely: a relay
	// that went silent (stopped, or behind a path that now drops packets)
	// would otherwise hold them until three heartbeats were missed. Every
	// activeTick it pings when it has heard nothing for that long, and it
	// ends the session (and reconnects) once nothing at all — no control
	// message, no packet over QUIC, no byte over TCP — has arrived from the
	// relay for activeSilence. An idle session is watched by the heartbeat
	// alone.
	received := receivedCount(s.t)
	liveTimer := time.NewTimer(time.Hour)
	liveTimer.Stop()
	defer liveTimer.Stop()
	var (
		live    <-chan time.Time
		aliveAt time.Time // when the relay was last known to be alive
		recvAt  uint64    // received() at aliveAt
	)
	watchRelay := func() {
		if live == nil {
			aliveAt, recvAt = time.Now(), received()
			liveTimer.Reset(activeTick)
			live = liveTimer.C
		}
	}
	for {
		select {
		case <-s.streamStart:
			watchRelay()
		case <-live:
			live = nil
			if s.open.Load() == 0 {
				break // idle again
			}
			now := time.Now()
			heard := time.Unix(0, s.lastHeard.Load())
			if heard.After(aliveAt) {
				aliveAt = heard
			}
			if n := received(); n != recvAt {
				aliveAt, recvAt = now, n
			}
			if silent := now.Sub(aliveAt); silent >= activeSilence {
				s.setEnd(fmt.Errorf("relay silent for %v while %d streams were open", silent.Round(time.Millisecond), s.open.Load()))
				abort(s.t)
				if s.transport == TransportQUIC && s.a.cfg.Transport == TransportAuto {
					// Not a packet, not even an acknowledgement: UDP
					// may be blocked now. The next attempt goes over
					// TCP rather than waiting out a QUIC handshake
					// first; QUIC is tried again later, as after any
					// fallback.
					until := s.a.markQUICFailed(s.relay)
					s.log.Warn("QUIC relay went silent; the next connection goes over TLS over TCP", "quic_retry_after", until.Format(time.RFC3339))
				}
				return endLost
			}
			if now.Sub(heard) >= activeTick {
				s.ping(now)
			}
			liveTimer.Reset(activeTick)
			live = liveTimer.C
		case <-probe:
			probe = nil
			s.wg.Go(s.probeQUIC)
		case r := <-s.probed:
			if r.next != nil {
				s.next = r.next
				return endUpgrade
			}
			armProbe(r.retry)
		case <-ctx.Done():
			if err := s.send(&protocol.GoAway{Reason: "shutdown", Message: "agent is stopping"}); err != nil {
				s.log.Debug("send goaway", "err", err)
			}
			return endShutdown
		case <-s.goaway:
			return endGoAway
		case ns := <-s.moveTo:
			s.next = ns
			return endMove
		case <-s.t.Done():
			// What the relay wrote before it closed (a Reject, over
			// TCP) may still be buffered on the control stream: the
			// reader gets to it first.
			s.waitReader()
			s.setEnd(errors.New("session closed"))
			return endLost
		case <-s.readDone:
			s.setEnd(errors.New("control stream closed"))
			return endLost
		case <-t.C:
			if silent := time.Since(time.Unix(0, s.lastHeard.Load())); silent > 3*hb {
				s.setEnd(fmt.Errorf("relay silent for %v", silent.Round(time.Millisecond)))
				return endLost
			}
			now := time.Now()
			s.ping(now)
			if packets != nil {
				// The check counts from the heartbeat itself, not from
				// when its ping was written: a ping still being written
				// (the one before it blocked) leaves pingSentAt behind.
				pingAt = now.UnixNano()
				packetsAtPing = packets.PacketsReceived()
				pongTimer.Reset(pongWait)
			}
		case <-pongTimer.C:
			if s.lastHeard.Load() >= pingAt {
				break
			}
			if n := packets.PacketsReceived(); n > packetsAtPing {
				s.log.Debug("relay is slow to answer a heartbeat but its QUIC endpoint is alive", "waited", pongWait, "packets", n-packetsAtPing)
				break
			}
			s.setEnd(fmt.Errorf("relay did not answer a heartbeat within %v and sent no packet since", pongWait))
			return endLost
		}
	}
}

// readerGrace bounds how long serve waits, once the session is done, for
// the control reader to read what was buffered before the close.
const readerGrace = time.Second

// waitReader waits, for at most readerGrace, for the control reader of a
// session that is done to read what is left and stop: a Reject the relay
// wrote before it closed tells why the session ended, which "session
// closed" does not.
func (s *session) waitReader() {
	t := time.NewTimer(readerGrace)
	defer t.Stop()
	select {
	case <-s.readDone:
	case <-t.C:
	}
}

// The heartbeat a relay's Welcome may set is kept within these: the
// agent pings at that interval and ends a session silent for three of
// them, so a relay that said 1 ms would have it ping every millisecond
// and drop the session after 3 ms of quiet.
const (
	minHeartbeat     = time.Second
	maxHeartbeat     = 5 * time.Minute
	defaultHeartbeat = 10 * time.Second
)

// heartbeatOf is the heartbeat interval w asks for, within minHeartbeat
// and maxHeartbeat (defaultHeartbeat when it asks for none).
func heartbeatOf(w protocol.Welcome) time.Duration {
	if w.HeartbeatMillis <= 0 {
		return defaultHeartbeat
	}
	if w.HeartbeatMillis > maxHeartbeat.Milliseconds() {
		return maxHeartbeat
	}
	return max(time.Duration(w.HeartbeatMillis)*time.Millisecond, minHeartbeat)
}

// earlyRenewalGap is how often, at most, a relay's RenewNow is passed to
// the renewal loop: each makes the agent renew its certificate (a new key,
// a round trip, the state directory rewritten), and a relay could send it
// without end. A CA rotation asks once per session (the agent's several
// sessions at about the same time), and the renewal loop renews on its
// own when the certificate nears its expiry.
const earlyRenewalGap = time.Minute

// earlyRenewalAllowed reports whether a RenewNow received at now goes to
// the renewal loop: the first, and then one per earlyRenewalGap.
func (a *Agent) earlyRenewalAllowed(now time.Time) bool {
	for {
		last := a.renewAskedAt.Load()
		if last != 0 && now.UnixNano()-last < int64(earlyRenewalGap) {
			return false
		}
		if a.renewAskedAt.CompareAndSwap(last, now.UnixNano()) {
			return true
		}
	}
}

// ping sends a ping without holding up serve, which must go on judging
// the relay's silence meanwhile: a write to a relay that stopped reading
// blocks once the connection's buffers are full (over TCP until yamux's
// write timeout). At most one ping is being written at a time; one that
// fails ends the session.
func (s *session) ping(now time.Time) {
	if !s.pinging.CompareAndSwap(false, true) {
		s.log.Debug("the previous ping is still being written; no new one")
		return
	}
	seq := s.pingSeq.Add(1)
	s.pingSentAt.Store(now.UnixNano())
	s.wg.Go(func() {
		defer s.pinging.Store(false)
		if err := s.send(&protocol.Ping{Seq: seq}); err != nil {
			s.setEnd(fmt.Errorf("send ping: %w", s.explain(err)))
			s.t.Close() // serve returns through Done
		}
	})
}

func (s *session) readLoop() {
	defer close(s.readDone)
	bad := 0
	for {
		m, err := protocol.ReadMessage(s.br)
		if errors.Is(err, protocol.ErrBadRequest) {
			// A whole message that does not decode (or breaks its
			// rules, as a relay list too long): skipped, the next one
			// is read. The first of a session is a warning.
			s.lastHeard.Store(time.Now().UnixNano())
			level := slog.LevelDebug
			if bad++; bad == 1 {
				level = slog.LevelWarn
			}
			s.log.Log(context.Background(), level, "the relay sent a message this agent cannot read: ignored", "err", err)
			continue
		}
		if err != nil {
			if !transport.IsClosedErr(err) {
				s.setEnd(fmt.Errorf("control stream: %w", s.explain(err)))
			} else if closeRefusal(err) != nil {
				// The relay closed the QUIC connection with a refusal,
				// which the stream's read reports before the session is
				// done: recorded now, before serve sees readDone.
				s.setEnd(err)
			}
			return
		}
		s.lastHeard.Store(time.Now().UnixNano())
		switch m := m.(type) {
		case *protocol.Ping:
			if err := s.send(&protocol.Pong{Seq: m.Seq}); err != nil {
				s.setEnd(fmt.Errorf("send pong: %w", s.explain(err)))
				return
			}
		case *protocol.Pong:
			if m.Seq == s.pingSeq.Load() {
				if s.rtt.Swap(max(time.Now().UnixNano()-s.pingSentAt.Load(), 1)) == 0 {
					select {
					case s.rttKnown <- struct{}{}:
					default:
					}
				}
			}
		case *protocol.GoAway:
			attrs := []any{"reason", m.Reason, "message", m.Message}
			if d := m.DrainTimeout(); d > 0 {
				// The relay keeps this session's streams in flight open
				// for d (its drain timeout): so does the agent.
				until := time.Now().Add(d)
				s.drainUntil.CompareAndSwap(nil, &until)
				attrs = append(attrs, "relay_drain", d)
			}
			s.log.Info("relay asked this agent to reconnect", attrs...)
			s.goawayOnce.Do(func() {
				s.goawayReason = m.Reason
				close(s.goaway)
			})
		case *protocol.Relays:
			s.a.view.setList(s, s.a.guard.filter(m.Relays))
		case *protocol.RenewNow:
			if !s.a.earlyRenewalAllowed(time.Now()) {
				s.log.Debug("relay asks for an early certificate renewal again within a minute: ignored", "ca_root", m.Root)
				break
			}
			s.log.Info("relay asks for an early certificate renewal", "ca_root", m.Root, "spread_ms", m.SpreadMillis)
			s.a.requestRenewal(m)
		case *protocol.RenewResponse:
			select {
			case s.renewed <- m:
			default: // nobody asked: ignore
			}
		case *protocol.UpdateOffer:
			if s.a.upd != nil {
				s.a.upd.offered(s, m)
			}
		case *protocol.UpdateCancel:
			if s.a.upd != nil {
				s.a.upd.cancelled(m)
			}
		case *protocol.Reject:
			// The relay ends this session and says why (revoked,
			// certificate expired).
			s.setEnd(fmt.Errorf("relay closed the session: %w", m.Err()))
		default:
			// Unknown messages are ignored for forward compatibility.
		}
	}
}

func (s *session) acceptLoop() {
	for {
		st, err := s.t.AcceptStream(context.Background())
		if err != nil {
			return // the session is closing; serve notices through Done
		}
		if n := s.streams(); n > maxStreamsPerSession {
			s.refuseOverLimit(st, n)
			continue
		}
		s.open.Add(1)
		select {
		case s.streamStart <- struct{}{}:
		default:
		}
		s.wg.Go(func() {
			defer func() {
				s.open.Add(-1)
				select {
				case s.streamDone <- struct{}{}:
				default:
				}
			}()
			s.a.handleStream(s, st)
		})
	}
}

// streams counts the session's streams the relay opened, st included, where
// the transport does not bound them itself: yamux's, which include those
// closed here that the relay has not closed yet. It is 0 over QUIC.
func (s *session) streams() int {
	c, ok := s.t.(interface{ NumStreams() int })
	if !ok {
		return 0
	}
	n := c.NumStreams()
	if s.ctl != nil {
		n-- // the control stream, which the agent opened
	}
	return n
}

// refuseOverLimit turns away st, a stream the relay opened beyond
// maxStreamsPerSession: with a refusal (limit_exceeded), or, beyond
// overLimitReplies of them, with a reset. Either is counted (the status's
// streams_over_limit) and logged at most once every overLimitLogEvery per
// session.
func (s *session) refuseOverLimit(st transport.Stream, n int) {
	total := s.a.streamsOverLimit.Add(1)
	if now := time.Now().UnixNano(); now-s.overLimitLogAt.Load() >= int64(overLimitLogEvery) {
		s.overLimitLogAt.Store(now)
		s.log.Warn("refused a stream: the relay has too many open on this connection", "streams", n, "limit", maxStreamsPerSession, "refused_total", total)
	}
	if n > maxStreamsPerSession+overLimitReplies {
		transport.Abort(st)
		return
	}
	s.wg.Go(func() {
		defer st.Close()
		st.SetDeadline(time.Now().Add(headerTimeout))
		refuse(st, protocol.Errorf(protocol.CodeLimitExceeded, "tenant %q's agent has %d streams open on this connection, its limit: the relay must close some before it opens more", s.a.state.Tenant, maxStreamsPerSession))
	})
}

// overLimitLogEvery spaces the warnings about streams refused over the limit.
const overLimitLogEvery = 10 * time.Second

// drainAndClose waits for the session's streams in flight to finish, until
// at the latest, then closes the session and waits for all its goroutines.
// When ctx is done first (the agent is stopping), it waits no longer than
// the agent's drain timeout from then: a relay's longer drain does not
// hold up the agent's exit. When the relay sends a GoAway meanwhile with
// an earlier deadline, that deadline applies. A non-nil hold keeps the
// session open, streams or not, until it is closed (the slot holds a
// connection elsewhere), the session ends, or the agent stops.
func (s *session) drainAndClose(ctx context.Context, until time.Time, hold <-chan struct{}) {
	t := time.NewTimer(time.Until(until))
	defer t.Stop()
	stopping, goaway := ctx.Done(), s.goaway
	var ended <-chan struct{}
	if hold != nil {
		ended = s.t.Done()
	}
	for hold != nil || s.open.Load() > 0 {
		select {
		case <-hold:
			hold, ended = nil, nil
		case <-ended:
			hold, ended = nil, nil
		case <-s.streamDone:
		case <-goaway:
			goaway = nil
			if d := s.drainUntil.Load(); d != nil && d.Before(until) {
				until = *d
				t.Reset(time.Until(until))
			}
		case <-stopping:
			stopping, hold, ended = nil, nil, nil
			if own := time.Now().Add(s.a.cfg.DrainTimeout); own.Before(until) {
				until = own
				t.Reset(time.Until(until))
			}
		case <-t.C:
			if n := s.open.Load(); n > 0 {
				s.log.Warn("drain timeout: closing streams still open", "open", n)
			}
			s.close()
			return
		}
	}
	s.close()
}

// drainDeadline is when the streams in flight on s are closed after the
// relay's GoAway: when the relay said it closes them (its drain timeout,
// at most protocol.MaxGoAwayDrain), else after the agent's own drain
// timeout.
func (s *session) drainDeadline() time.Time {
	if until := s.drainUntil.Load(); until != nil {
		return *until
	}
	return time.Now().Add(s.a.cfg.DrainTimeout)
}

// close closes the session, then the service connections of its streams
// still in flight, and waits for every goroutine of it. A QUIC session a
// probe left unused is closed too.
//
// Closing the session aborts its streams, which ends their splices; the
// service connections are closed too so that no stream handler can wait
// on a service that never closes its side, whatever the transport.
func (s *session) close() {
	s.a.view.dropList(s)
	s.cancel()
	s.t.Close()
	s.closeServices()
	s.wg.Wait()
	select {
	case r := <-s.probed:
		if r.next != nil {
			r.next.close()
		}
	default:
	}
}

// abort closes a session whose relay is deemed dead without waiting on it
// (a transport's Abort, else Close).
func abort(ts transport.Session) {
	if a, ok := ts.(interface{ Abort() error }); ok {
		a.Abort()
		return
	}
	ts.Close()
}

// receivedCount returns a count that moves whenever ts receives anything
// from the relay: QUIC packets, acknowledgements included, or reads of the
// TCP connection.
func receivedCount(ts transport.Session) func() uint64 {
	switch t := ts.(type) {
	case interface{ PacketsReceived() uint64 }:
		return t.PacketsReceived
	case interface{ Reads() uint64 }:
		return t.Reads
	}
	return func() uint64 { return 0 }
}

// isRelayBusy reports whether a QUIC dial was refused at the relay's
// door: its handshake admission limit was reached (a restart, a reconnect
// storm). UDP works — the refusal came back over it — so this is no reason
// to fall back to TCP; the agent backs off and tries QUIC again.
func isRelayBusy(err error) bool {
	var te *quicgo.TransportError
	return errors.As(err, &te) && te.Remote && te.ErrorCode == quicgo.ConnectionRefused
}

// isTLSRefusal reports whether err is the relay refusing our TLS identity,
// which no transport fallback can fix.
func isTLSRefusal(err error) bool {
	var te *quicgo.TransportError
	if errors.As(err, &te) && te.Remote && te.ErrorCode >= 0x100 && te.ErrorCode < 0x200 {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error"
}

// explain replaces a bare end-of-stream error with the session's own cause
// when the transport knows it (a TLS alert under yamux reads as EOF),
// reports the relay's close of a QUIC connection without its raw reason
// (relayClosed), and explains refusals.
func (s *session) explain(err error) error {
	if c, ok := s.t.(interface{ Err() error }); ok && transport.IsClosedErr(err) {
		if cause := c.Err(); cause != nil && !errors.Is(cause, transport.ErrClosed) {
			err = cause
		}
	}
	return explainRefusal(relayClosed(err))
}

// relayCloseError is the relay's close of a QUIC connection with an
// application error, as the agent reports it. The close's reason is text
// the relay chose: a refusal that protocol.ParseCloseReason reads is
// reported as that refusal (ref), as a Reject on the control stream is;
// any other reason (an older relay's, a hostile one's) is shown clipped
// and quoted beside the code, never raw.
type relayCloseError struct {
	ae  *quicgo.ApplicationError
	ref *protocol.Error // nil: the reason is no refusal this agent reads
}

// maxCloseText bounds the reason of a relay's close that is not a refusal
// in the agent's logs and status.
const maxCloseText = 128

func (e *relayCloseError) Error() string {
	if e.ref != nil {
		return e.ref.Error()
	}
	msg := fmt.Sprintf("the relay closed the connection (QUIC application error %#x)", uint64(e.ae.ErrorCode))
	if e.ae.ErrorMessage != "" {
		msg += ": " + strconv.Quote(protocol.Clip(e.ae.ErrorMessage, maxCloseText))
	}
	return msg
}

func (e *relayCloseError) Unwrap() []error {
	if e.ref != nil {
		return []error{e.ref, e.ae}
	}
	return []error{e.ae}
}

// relayClosed returns err as a *relayCloseError when it is, or wraps, the
// relay's close of a QUIC connection with an application error (a
// refusal when the code is quic.CodeRefused and the reason parses), and
// err itself otherwise.
func relayClosed(err error) error {
	ae, ok := errors.AsType[*quicgo.ApplicationError](err)
	if !ok || !ae.Remote {
		return err
	}
	if _, done := errors.AsType[*relayCloseError](err); done {
		return err
	}
	e := &relayCloseError{ae: ae}
	if ae.ErrorCode == quic.CodeRefused {
		e.ref, _ = protocol.ParseCloseReason(ae.ErrorMessage)
	}
	return e
}

// closeRefusal returns the refusal the relay closed the QUIC connection
// with when err is, or wraps, that close (relayClosed); nil otherwise.
func closeRefusal(err error) *protocol.Error {
	if e, ok := errors.AsType[*relayCloseError](relayClosed(err)); ok {
		return e.ref
	}
	return nil
}

// explainRefusal adds an operator-facing explanation to a TLS alert from
// the relay (our certificate was rejected).
func explainRefusal(err error) error {
	if isTLSRefusal(err) {
		return fmt.Errorf("the relay rejected this agent's certificate (issued by another relay CA, expired, or revoked?): enrol again with a new join token: %w", err)
	}
	return err
}

// isPermanent reports whether a connection error is a refusal that the
// same attempt will meet again.
func isPermanent(err error) bool {
	var pe *protocol.Error
	var xe *ProxyError
	_, untrustedProxy := errors.AsType[*UntrustedProxyError](err)
	return isTLSRefusal(err) || isUntrustedRelay(err) || untrustedProxy || (errors.As(err, &pe) && !pe.Temporary()) || (errors.As(err, &xe) && xe.permanent())
}

// logConnectError logs a failed connection attempt; refusals that no retry
// can fix are errors, the rest warnings.
func logConnectError(log *slog.Logger, relay string, err error, retry time.Duration) {
	level := slog.LevelWarn
	if isPermanent(err) {
		level = slog.LevelError
	}
	log.Log(context.Background(), level, "cannot connect to relay", "relay", relay, "err", err, "retry_in", retry.Round(time.Millisecond))
}
