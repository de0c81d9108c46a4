package session

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/quic"
	"github.com/tetherhq/tether/protocol/transport/tcp"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/credential"
	"github.com/tetherhq/tether/relay/internal/policy"
	"github.com/tetherhq/tether/relay/internal/route"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/throttle"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// Config configures the agent side of a relay.
type Config struct {
	// Listen is where agents connect, on the same port for UDP (QUIC) and
	// TCP (TLS+yamux, and enrolment).
	Listen                  string
	DisableQUIC, DisableTCP bool
	// HandshakeTimeout bounds TLS and the hello; Heartbeat is how often
	// the relay pings an idle agent; StreamOpenTimeout bounds opening a
	// stream through an agent.
	HandshakeTimeout, Heartbeat, StreamOpenTimeout time.Duration
	// MaxHandshakes bounds the handshakes (and enrolments) in progress;
	// MaxQUICTLSHandshakes the QUIC TLS handshakes before those;
	// MaxHandshakesPerAddress and MaxHandshakesPerNetwork those from one
	// source address and one source network.
	MaxHandshakes, MaxQUICTLSHandshakes              int
	MaxHandshakesPerAddress, MaxHandshakesPerNetwork int
	// ResetKey is the QUIC stateless reset key.
	ResetKey [32]byte

	TLS       *trust.Server
	Authority *trust.Authority
	Store     *store.Store
	Policy    *policy.Policy
	Audit     *audit.Log
	// Routes receives every admitted session as a carrier.
	Routes *route.Table

	// Enrol serves a connection that negotiated the enrolment protocol.
	Enrol func(ctx context.Context, tc *tls.Conn)
	// Renew answers a renewal request on a session's control stream.
	Renew func(ctx context.Context, c *Conn, req *protocol.RenewRequest) *protocol.RenewResponse
	// Update takes a session's update messages, with the session's
	// context; it must not block.
	Update func(ctx context.Context, c *Conn, m protocol.Message)
	// Connected is told of each session admitted; it must not block.
	Connected func(c *Conn)
	// RelayID names this relay in its cluster, in every Welcome.
	RelayID string
	// Relays, when set, returns the cluster's live relays as agents reach
	// each one: sent to agents that ask for it (CapRelays) after the
	// Welcome, and again by SendRelays.
	Relays func() []protocol.RelayInfo
	// Present, when set, is told how many sessions an agent holds here
	// whenever that changes; it must not block.
	Present func(tenant, agent string, sessions int)
	// ClusterAgents, when set, lists the agents of a tenant connected to
	// any relay of the cluster, for the tenant's limit on connected
	// agents.
	ClusterAgents func(ctx context.Context, tenant string) (map[string]bool, error)
	// Admit, when set, is asked first at every agent's admission, with
	// the tenant and agent id of its verified certificate: an error
	// refuses the agent with it (a temporary one has the agent try
	// another relay), before any store read.
	Admit func(tenant, agent string) error
	// Outage, when set, reports whether the relay serves from what it
	// last read because its store is down for every relay it can ask
	// (relay.Config.StoreOutageGrace). Meanwhile an agent whose record
	// the store does not give (it is unreachable, or does not answer in
	// time: reads are bounded by outageLookup) is admitted from the
	// record this relay read at its last admission, with every check
	// made of it, and without the writes admission makes. Without it no
	// record is kept.
	Outage func() bool

	// Disconnects counts ended sessions by reason (may be nil); StoreOp
	// times store operations (may be nil).
	Disconnects *prometheus.CounterVec
	StoreOp     func(op string, start time.Time)
	// Fatal is told when a listener fails (the relay then shuts down).
	Fatal func(error)

	Version string
	Logger  *slog.Logger
	Now     func() time.Time
}

// Stats counts agent handshakes by outcome.
type Stats = throttle.HandshakeStats

// Server accepts agent connections, admits them and serves their sessions.
type Server struct {
	cfg   Config
	log   *slog.Logger
	set   *Set
	stats Stats
	seen  lastSeen // agents' last-seen times waiting to be written
	// records are the records agents were last admitted with, for
	// admission during a store outage (Config.Outage).
	records recordCache

	gate     *throttle.Gate // handshakes in progress (admission.go)
	quicGate *throttle.Gate // QUIC TLS handshakes in progress
	src      *throttle.Sources
	refused  refusedAttempts // QUIC attempts turned away lately, counted once each
	// failLogs bounds the warnings of failed TLS handshakes per source
	// (the first 10, then one every 5 s; the rest at debug level): a
	// scanner or a flood would otherwise write a line per connection.
	failLogs *throttle.Limiter

	tcpLn   net.Listener
	udpConn *net.UDPConn
	quicTr  *quicgo.Transport
	quicLn  *quicgo.Listener
}

// DisconnectReasons are the reasons a session can end for, as the
// Disconnects counter names them.
var DisconnectReasons = disconnectReasons

// New binds the agent listeners. Call Run, or Close if Run will not be
// called.
func New(cfg Config) (*Server, error) {
	s := &Server{cfg: cfg, log: cfg.Logger, set: newSet(cfg.Routes, cfg.Present),
		gate: throttle.NewGate(cfg.MaxHandshakes, gateWait), quicGate: throttle.NewGate(cfg.MaxQUICTLSHandshakes, gateWait),
		failLogs: throttle.New(throttle.Config{Burst: 10, Every: 5 * time.Second, MaxKeys: 4096, Now: cfg.Now})}
	// While the handshake gate is busy, a source network may have only its
	// share of it in progress (networkShare), unless the operator lifted
	// the bound per network (to the gate's size or more: every agent from
	// one network, a fleet behind one NAT or a benchmark's).
	s.src = throttle.NewSources(cfg.MaxHandshakesPerAddress, cfg.MaxHandshakesPerNetwork)
	if cfg.MaxHandshakesPerNetwork < cfg.MaxHandshakes {
		s.src.ShareWhenBusy(s.gate.Busy, networkShare(cfg.MaxHandshakes))
	}
	host, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, err
	}
	// TCP first: with port 0 the kernel picks a port, which UDP then reuses.
	for attempt := 0; ; attempt++ {
		if err := s.listen(host, port); err == nil {
			return s, nil
		} else if port != "0" || attempt == 5 {
			s.Close()
			return nil, err
		}
		s.Close()
	}
}

func (s *Server) listen(host, port string) error {
	var err error
	if !s.cfg.DisableTCP {
		if s.tcpLn, err = net.Listen("tcp", net.JoinHostPort(host, port)); err != nil {
			return fmt.Errorf("agent listener (TCP): %w", err)
		}
		port = strconv.Itoa(s.tcpLn.Addr().(*net.TCPAddr).Port)
	}
	if !s.cfg.DisableQUIC {
		ua, err := net.ResolveUDPAddr("udp", net.JoinHostPort(host, port))
		if err != nil {
			return fmt.Errorf("agent listener (UDP): %w", err)
		}
		if s.udpConn, err = net.ListenUDP("udp", ua); err != nil {
			return fmt.Errorf("agent listener (UDP): %w", err)
		}
		key := quicgo.StatelessResetKey(s.cfg.ResetKey)
		// quic.PacketConn: with the kernel's receive offload where there
		// is one, so that a run of an agent's packets comes in one read.
		s.quicTr = &quicgo.Transport{Conn: quic.PacketConn(s.udpConn), StatelessResetKey: &key, ConnContext: s.quicConnContext,
			VerifySourceAddress: s.src.Busy}
		// One incoming stream: the control stream. The relay opens every
		// other stream itself (see tcp.RelayConfig for TCP).
		if s.quicLn, err = s.quicTr.Listen(s.cfg.TLS.Agents(), quic.Config(1)); err != nil {
			return fmt.Errorf("agent listener (QUIC): %w", err)
		}
		// quic-go has tried to raise the socket's buffers by now: warn
		// with what to do when they are small, since every agent's
		// packets arrive through this one socket.
		recv, send, err := quic.SocketBuffers(s.udpConn)
		quic.LogBuffers(s.log, recv, send, err)
	}
	return nil
}

// Addr is the address agents connect to (TCP; QUIC uses the same port on
// UDP unless disabled).
func (s *Server) Addr() net.Addr {
	if s.tcpLn != nil {
		return s.tcpLn.Addr()
	}
	return s.udpConn.LocalAddr()
}

// QUIC and TCP report which transports are served.
func (s *Server) QUIC() bool { return s.quicLn != nil }
func (s *Server) TCP() bool  { return s.tcpLn != nil }

// Sessions is the set of live sessions.
func (s *Server) Sessions() *Set { return s.set }

// Stats counts handshakes by outcome.
func (s *Server) Stats() *Stats { return &s.stats }

// InProgress reports the handshakes holding a slot now (TLS over QUIC,
// and TLS plus hello) and how many source addresses they come from.
func (s *Server) InProgress() (handshakes, sources int) {
	return s.gate.InUse() + s.quicGate.InUse(), s.src.Held()
}

// StopAccepting closes the listeners; sessions go on.
func (s *Server) StopAccepting() {
	if s.tcpLn != nil {
		s.tcpLn.Close()
	}
	if s.quicLn != nil {
		s.quicLn.Close()
	}
}

// Close releases the listeners and the UDP socket (after Run, or instead
// of it).
func (s *Server) Close() {
	s.StopAccepting()
	if s.quicTr != nil {
		s.quicTr.Close()
	}
	if s.udpConn != nil {
		s.udpConn.Close()
	}
}

// Run accepts and serves agents until StopAccepting, and serves the
// sessions until ctx ends (the relay keeps ctx alive while it drains). A
// listener that fails is reported to Config.Fatal. Run returns once every
// goroutine it started has exited, after writing when each agent was last
// seen.
func (s *Server) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	seenStop, seenDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(seenDone); s.keepLastSeen(context.WithoutCancel(ctx), seenStop) }()
	fatal := func(err error) {
		if err != nil && s.cfg.Fatal != nil {
			s.cfg.Fatal(err)
		}
	}
	if s.tcpLn != nil {
		wg.Go(func() { fatal(s.acceptTCP(ctx, &wg)) })
	}
	if s.quicLn != nil {
		wg.Go(func() { fatal(s.acceptQUIC(ctx, &wg)) })
	}
	wg.Wait()
	close(seenStop) // after every session: disconnects are written
	<-seenDone
	return nil
}

func (s *Server) acceptTCP(ctx context.Context, wg *sync.WaitGroup) error {
	tlsConf := s.cfg.TLS.AgentsTCP()
	var backoff throttle.AcceptBackoff
	for {
		c, err := s.tcpLn.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			if backoff.Retry(ctx, err, s.log, "agent TCP listener") || ctx.Err() != nil {
				continue
			}
			return fmt.Errorf("accept agent TCP connection: %w", err)
		}
		backoff.Accepted()
		// Turned away here, before a goroutine is spent on it, when its
		// source is at its bound: a flood costs an accept and a close.
		leaveSource, ok, byShare := s.src.EnterShared(c.RemoteAddr())
		if !ok {
			s.stats.SourceLimited.Add(1)
			if byShare {
				s.log.Debug("agent connection turned away: the relay is busy and its network has its share of the handshakes in progress", "transport", "tcp", "remote", c.RemoteAddr().String(), "share", networkShare(s.cfg.MaxHandshakes))
			} else {
				s.log.Debug("agent connection turned away: too many handshakes in progress from its address or network", "transport", "tcp", "remote", c.RemoteAddr().String())
			}
			c.Close()
			continue
		}
		wg.Go(func() { s.handleTCP(ctx, wg, c, tlsConf, leaveSource) })
	}
}

// handleTCP serves one agent TCP connection, counted against its source's
// bound until leaveSource is called (once the handshake is over).
func (s *Server) handleTCP(ctx context.Context, wg *sync.WaitGroup, c net.Conn, tlsConf *tls.Config, leaveSource func()) {
	remote := c.RemoteAddr()
	if !s.gate.Enter(ctx) {
		leaveSource()
		s.stats.Throttled.Add(1)
		s.log.Debug("agent connection turned away: too many handshakes in progress", "transport", "tcp", "remote", remote.String())
		c.Close()
		return
	}
	var leaveOnce sync.Once
	leave := func() {
		leaveOnce.Do(func() {
			s.gate.Leave()
			leaveSource()
		})
	}
	defer leave()
	tc := tls.Server(tcp.NewRawConn(c), tlsConf)
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.stats.Failed.Add(1)
		level := slog.LevelWarn
		if s.failLogs.Take(throttle.Source(remote.String())) != 0 {
			level = slog.LevelDebug
		}
		s.log.Log(ctx, level, "agent TLS handshake failed", "transport", "tcp", "remote", remote.String(), "err", err)
		c.Close()
		return
	}
	cs := tc.ConnectionState()
	switch cs.NegotiatedProtocol {
	case protocol.ALPNEnroll:
		if s.cfg.Enrol != nil {
			s.cfg.Enrol(ctx, tc)
		} else {
			tc.Close()
		}
		leave()
	case protocol.ALPN:
		sess, err := tcp.Server(tc, tcp.RelayConfig(s.log))
		if err != nil {
			s.log.Error("start yamux session", "remote", remote.String(), "err", err)
			tc.Close()
			return
		}
		s.serveAgent(ctx, wg, sess, cs, "tcp", remote, leave)
	default:
		tc.Close()
	}
}

func (s *Server) acceptQUIC(ctx context.Context, wg *sync.WaitGroup) error {
	for {
		conn, err := s.quicLn.Accept(ctx)
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
			// Turned away, the connection is closed with the refusal as
			// its reason, which the agent reads (protocol.CloseReason).
			tlsDone, ok := quicSlot(conn.Context())
			if !ok {
				conn.CloseWithError(quic.CodeRefused, protocol.CloseReason(errRelayBusy))
				return
			}
			defer tlsDone()
			if !s.gate.Enter(ctx) {
				s.stats.Throttled.Add(1)
				s.log.Debug("agent connection turned away: too many handshakes in progress", "transport", "quic", "remote", conn.RemoteAddr().String())
				conn.CloseWithError(quic.CodeRefused, protocol.CloseReason(errRelayBusy))
				return
			}
			var leaveOnce sync.Once
			leave := func() {
				leaveOnce.Do(func() {
					s.gate.Leave()
					tlsDone()
				})
			}
			defer leave()
			s.serveAgent(ctx, wg, quic.NewSession(conn), conn.ConnectionState().TLS, "quic", conn.RemoteAddr(), leave)
		})
	}
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
func (s *Server) serveAgent(ctx context.Context, wg *sync.WaitGroup, sess transport.Session, cs tls.ConnectionState, transportName string, remote net.Addr, admitted func()) {
	defer admitted()
	handedOff := false
	defer func() {
		if !handedOff {
			sess.Close()
		}
	}()
	log := s.log.With("transport", transportName, "remote", remote.String())
	if len(cs.PeerCertificates) == 0 {
		log.Error("agent session without a peer certificate")
		return
	}
	leaf := cs.PeerCertificates[0]
	id, err := identity.AgentFromCertificate(leaf, s.cfg.Authority.TrustDomain())
	if err != nil { // VerifyConnection already checked this
		log.Error("agent identity", "err", err)
		return
	}
	log = log.With("tenant", id.Tenant, "agent", id.ID)
	connRec := audit.Record{Kind: audit.Connect, Tenant: id.Tenant, Agent: id.ID, Actor: "agent",
		Detail: map[string]any{"transport": transportName, "remote": remote.String(), "cert_serial": leaf.SerialNumber.Text(16)}}

	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	ctl, err := sess.AcceptStream(hctx)
	cancel()
	if err != nil {
		log.Warn("agent opened no control stream", "err", err)
		return
	}
	ctl.SetDeadline(s.cfg.Now().Add(s.cfg.HandshakeTimeout))
	// The store reads of the admission share the hello's time: a store
	// that does not answer has the agent refused (and its handshake
	// slot given back) rather than holding both for as long as it
	// stalls; the welcome could not be written past the deadline anyway.
	deadline := time.Now().Add(s.cfg.HandshakeTimeout)
	// Control messages are small; a small buffer keeps idle agents cheap.
	br := bufio.NewReaderSize(ctl, 512)
	hello, err := readHello(br)
	if err == nil {
		log = log.With("agent_version", hello.AgentVersion)
		actx, cancel := context.WithDeadline(ctx, deadline)
		err = s.admitAgent(actx, id, leaf, remote, hello)
		cancel()
	}
	if err != nil {
		s.stats.Failed.Add(1)
		log.Warn("agent refused", "err", err)
		if errors.Is(err, protocol.ErrCertSuperseded) {
			connRec.Kind = audit.StaleCertificate // a possible copy of the agent's key pair
		}
		connRec.Outcome, connRec.Detail["error"] = protocol.CodeOf(err).String(), err.Error()
		// A refusal is queued, not waited for: nothing was done, and a
		// stalled store would otherwise hold the handshake slot and the
		// agent's answer.
		s.cfg.Audit.Record(connRec)
		admitted() // the refusal's grace period holds no handshake slot
		s.reject(sess, ctl, err)
		return
	}
	ac := &Conn{srv: s,
		id: id, sess: sess, ctl: ctl, transport: transportName, remote: remote,
		hello: *hello, sessionID: credential.NewRequestID(), connectedAt: s.cfg.Now(), log: log,
	}
	ac.lastHeard.Store(time.Now().UnixNano())
	ac.notAfter.Store(leaf.NotAfter.UnixNano())
	ac.setSerial(leaf.SerialNumber.Text(16))
	authority := s.cfg.Authority.CA()
	if root := authority.IssuerOf(leaf); root != nil {
		ac.setRoot(root.ID())
	}
	welcome := &protocol.Welcome{
		ProtocolVersion: protocol.Version, RelayVersion: s.cfg.Version,
		AgentID: id.ID, Tenant: id.Tenant, SessionID: ac.sessionID,
		HeartbeatMillis: s.cfg.Heartbeat.Milliseconds(),
		Capabilities:    []string{protocol.CapHeartbeat, protocol.CapGoAway, protocol.CapRenew, protocol.CapRenewNow},
	}
	relays := s.relaysFor(hello)
	if relays != nil {
		welcome.Capabilities = append(welcome.Capabilities, protocol.CapRelays)
	}
	welcome.RelayID = s.cfg.RelayID
	admitted()
	s.stats.OK.Add(1)

	connRec.Outcome, connRec.Detail["session"] = audit.OutcomeOK, ac.sessionID
	connRec.Detail["ca_root"] = ac.RootID()
	// The session joins the set before its welcome is written, so that
	// once the agent holds its welcome a backend's stream finds it (it
	// used to join just after: a stream opened as the agent read its
	// welcome was refused no_agent). The control stream's write lock is
	// held from before the session joins until the welcome (and the
	// cluster's relays) are written: whatever the set's holders send
	// this session (a GoAway as the relay drains, a renewal call, a
	// refusal) comes after its welcome, never as the answer to its
	// hello. Streams opened to it meanwhile wait in its accept queue.
	//
	// The admission's record is queued before the session, joining the
	// set, can record anything, and waited for beside the session rather
	// than before it: the session reads its control stream (and answers
	// the agent's heartbeats) at once, while a slow store holds only this
	// goroutine, for at most the audit writer's bound.
	recorded := s.cfg.Audit.Queue(connRec)
	ac.ctlMu.Lock()
	s.set.add(ac)
	s.seen.mark(id.ID, time.Now())
	err = protocol.WriteMessage(ctl, welcome)
	if err != nil {
		err = fmt.Errorf("send welcome: %w", err)
	} else if relays != nil {
		if err = protocol.WriteMessage(ctl, relays); err != nil {
			err = fmt.Errorf("send the cluster's relays: %w", err)
		}
	}
	if err == nil && !ac.draining.Load() {
		// Not when a CloseWith, waiting for the lock, has set the
		// deadline its refusal is written by.
		ctl.SetDeadline(time.Time{})
	}
	ac.ctlMu.Unlock()
	if err != nil {
		// Served all the same, to be taken out of the set and recorded
		// as ended the one way every session is: its reader fails at
		// once on the closed session.
		log.Warn("agent lost as it was welcomed", "err", err)
		ac.sess.Close()
	}
	if n := s.set.sessionsOfProcess(id.Tenant, id.ID, hello.BootID); n > MaxSessionsPerAgent {
		// Admitted beside others of the same process, which joined the
		// set after admitAgent counted: one too many.
		ac.CloseWith(tooManySessions(id.ID, n-1))
	} else if rev := s.cfg.Policy.Revoked(id.ID); rev != nil {
		// Revoked between the store lookup and now: the change feed may
		// have looked at the set before this session joined it.
		ac.CloseWith(rev)
	} else if now := s.cfg.Authority.CA(); !ac.OnActiveRoot(now) {
		// The certificate's root was retired (with --force) since the TLS
		// handshake verified it, which over QUIC may be seconds before the
		// hello: the retirement's sweep of the set may have come before
		// this session joined it.
		root := now.Root(ac.RootID())
		if root == nil {
			root = now.RetiredIssuerOf(leaf)
		}
		ac.CloseRetired(root)
	}
	log.Info("agent connected", "session", ac.sessionID, "os", hello.OS, "arch", hello.Arch, "hostname", hello.Hostname, "transport_why", hello.TransportWhy)
	if s.cfg.Connected != nil {
		s.cfg.Connected(ac)
	}
	handedOff = true
	wg.Go(func() { s.serveSession(ctx, ac, br) })
	recorded()
}

// serveSession serves a welcomed agent session, which serveAgent added to
// the registry, until it ends; then it takes the session out and closes it.
func (s *Server) serveSession(ctx context.Context, ac *Conn, br *bufio.Reader) {
	defer ac.sess.Close()
	defer func() {
		s.set.remove(ac)
		s.seen.mark(ac.id.ID, time.Unix(0, ac.lastHeard.Load()))
	}()
	err := ac.run(ctx, br, s.cfg.Heartbeat, func(m *protocol.RenewRequest) *protocol.RenewResponse {
		resp := s.cfg.Renew(ctx, ac, m)
		if resp != nil && resp.Code == "" && resp.Certificate != "" {
			s.renewed(ctx, ac.id)
		}
		return resp
	})
	reason := disconnectReason(err)
	if s.cfg.Disconnects != nil {
		s.cfg.Disconnects.WithLabelValues(reason).Inc()
	}
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

// MaxSessionsPerAgent bounds the sessions one agent process holds with a
// relay: twice the most connections an agent keeps (16), and one for the
// trial of a new binary.
const MaxSessionsPerAgent = 2*16 + 1

// tooManySessions refuses a session of agent id, which holds n already.
func tooManySessions(id string, n int) error {
	return protocol.Errorf(protocol.CodeLimitExceeded, "agent %s already has %d sessions with this relay, the most one agent may hold: check that one agent identity is not run by many processes", id, n)
}

// admitAgent decides whether an authenticated agent may serve: its
// certificate is current, it is registered and not revoked, the
// certificate is the newest the relay issued it (or the one that replaced,
// during a renewal's overlap: policy.StandingOf), and its tenant's limits
// allow one more agent from where it connects.
func (s *Server) admitAgent(ctx context.Context, id identity.Agent, leaf *x509.Certificate, remote net.Addr, h *protocol.Hello) error {
	if h.ProtocolVersion < protocol.MinVersion {
		return protocol.Errorf(protocol.CodeUnsupportedVersion,
			"agent speaks protocol version %d; this relay accepts %d to %d: upgrade the agent", h.ProtocolVersion, protocol.MinVersion, protocol.Version)
	}
	if s.cfg.Admit != nil {
		if err := s.cfg.Admit(id.Tenant, id.ID); err != nil {
			return err
		}
	}
	// An agent keeps at most 16 connections (agent.MaxRelayConnections),
	// and each may reconnect before the relay has seen its old session
	// die: more than twice that from one agent process is no agent's
	// doing, and each holds a socket, goroutines and buffers.
	if n := s.set.sessionsOfProcess(id.Tenant, id.ID, h.BootID); n >= MaxSessionsPerAgent {
		return tooManySessions(id.ID, n)
	}
	if now := s.cfg.Now(); now.After(leaf.NotAfter) {
		return protocol.Errorf(protocol.CodeCertExpired, "agent %s's certificate expired at %s (the agent was offline longer than its certificate lived): enrol it again with a new join token",
			id.ID, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	outage := s.cfg.Outage != nil && s.cfg.Outage()
	lookup := ctx
	if outage {
		// The store has been down for a while: a read that does not
		// answer soon will not, and the record kept is used instead.
		var cancel context.CancelFunc
		lookup, cancel = context.WithTimeout(ctx, outageLookup)
		defer cancel()
	}
	gen := s.records.generation()
	rec, err := s.cfg.Store.Agent(lookup, id.ID)
	if errors.Is(err, store.ErrNotFound) || (err == nil && rec.Tenant != id.Tenant) {
		return protocol.Errorf(protocol.CodeUnknownAgent, "agent %s is not registered with this relay: enrol it again with a new join token", id.ID)
	}
	// kept: admitted from the record kept, the store unreachable; the
	// read's error is the refusal of anything that needs the store.
	var kept, storeErr error
	if err != nil && outage && s.cfg.Store.Unreachable(err) && ctx.Err() == nil {
		if k, ok := s.records.get(id.ID); ok && k.Tenant == id.Tenant {
			kept = protocol.Errorf(protocol.CodeUnavailable, "look up agent: this relay cannot reach its store: %v", err)
			rec, storeErr, err = k, err, nil
		}
	}
	if stalled := policy.StoreStalled(ctx, "look up agent", s.cfg.HandshakeTimeout, err); stalled != nil {
		return stalled
	}
	if err != nil {
		if outage && s.cfg.Store.Unreachable(err) {
			return protocol.Errorf(protocol.CodeUnavailable, "look up agent: this relay cannot reach its store, and keeps no record of this agent from an earlier admission (none here, or changed since): try another relay: %v", err)
		}
		return protocol.Errorf(protocol.CodeInternal, "look up agent: %v", err)
	}
	if !rec.RevokedAt.IsZero() {
		return policy.RevokedError(rec)
	}
	serial, now := leaf.SerialNumber.Text(16), s.cfg.Now()
	// What admission records in the store is written once every check
	// has passed: a refused agent changes nothing.
	var record func() error
	var writes string // what record writes, for the log when it is skipped
	standing := policy.StandingOf(rec, serial, now)
	switch standing {
	case policy.CertSuperseded:
		if kept != nil {
			if newerThanKept(rec, leaf, s.cfg.Authority.CA().IssuerOf(leaf) != nil) {
				// Renewed through another relay since its admission
				// here: renewals are not in the change feed. Only the
				// relay's CA issues the agent's certificates, to the
				// holder of its key, and only newest first: one issued
				// after the newest this relay knows is the agent's own.
				s.log.Warn("admitting an agent with a certificate newer than the one in the record kept from its last admission here (renewed through another relay)",
					"tenant", id.Tenant, "agent", id.ID, "certificate", serial, "kept_certificate", rec.CertSerial)
				break
			}
			// Perhaps a renewal a restore lost, which only the store's
			// restore windows tell, and which is to be recorded.
			return kept
		}
		if record, err = s.lostRenewal(ctx, rec, leaf); err != nil {
			return err
		}
	case policy.CertNewest:
		if rec.PrevCertSerial != "" && now.Before(rec.PrevCertUntil) {
			// The newest certificate in use: the agent installed it, and
			// the one it replaced is refused from now on.
			writes = "the end of the overlap of the agent's previous certificate"
			record = func() error {
				if _, err := s.cfg.Store.EndCertOverlap(ctx, id.ID, serial, now); err != nil {
					s.log.Warn("end the overlap of an agent's previous certificate", "agent", id.ID, "err", err)
				}
				return nil
			}
		}
	case policy.CertUnrecorded:
		if serial != rec.CertSerial {
			// An agent enrolled before the relay recorded the certificates
			// it issues: record the one it uses, so that the CA root it
			// depends on is counted right (ca status, ca retire).
			if root := s.cfg.Authority.CA().IssuerOf(leaf); root != nil {
				writes = "the certificate the agent connected with"
				record = func() error {
					if err := s.cfg.Store.SetAgentCert(ctx, id.ID, serial, leaf.NotAfter, root.ID()); err != nil {
						s.log.Warn("record the certificate an agent connected with", "agent", id.ID, "err", err)
					}
					return nil
				}
			}
		}
	}
	if l := s.cfg.Policy.LimitsOf(id.Tenant); l != nil {
		if !l.Allows(remote) {
			return protocol.Errorf(protocol.CodeNotAllowed, "agent connects from %s, outside the networks tenant %q allows for its agents", remote, id.Tenant)
		}
		if l.MaxAgents > 0 && s.set.SessionsOf(id.Tenant, id.ID) == 0 && s.connectedAgents(lookup, id) >= l.MaxAgents {
			return protocol.Errorf(protocol.CodeLimitExceeded, "tenant %q already has %d agents connected, its limit", id.Tenant, l.MaxAgents)
		}
	}
	if kept != nil {
		s.log.Warn("admitted an agent from the record read at its last admission here: the store is down for every relay, and this relay serves from what it last read",
			"tenant", id.Tenant, "agent", id.ID, "certificate", serial, "store_error", storeErr)
		if record != nil {
			s.log.Warn("skipped a write of the admission while the store is down (best effort: made at a later admission)", "tenant", id.Tenant, "agent", id.ID, "certificate", serial, "write", writes)
		}
		return nil
	}
	if record != nil {
		if err := record(); err != nil {
			return err
		}
	}
	if s.cfg.Outage != nil && standing != policy.CertSuperseded {
		// A lost renewal just recorded changed the record: the agent
		// is admitted from the store again next time, or not at all.
		s.records.put(gen, rec)
	}
	return nil
}

// newerThanKept reports whether leaf, an agent's certificate other than
// the newest in rec (the record kept from its last admission here, used
// while the store is down for every relay), was issued after that newest
// by one of the CA's roots (issuerKnown): a renewal through another relay
// since. A certificate's issue time is its NotBefore plus the backdate,
// in whole seconds: one issued within the same second as rec's newest is
// not taken as newer (refused, as before; renewals are minutes apart).
func newerThanKept(rec store.Agent, leaf *x509.Certificate, issuerKnown bool) bool {
	if !issuerKnown || rec.CertIssuedAt.IsZero() {
		return false
	}
	return leaf.NotBefore.Add(ca.AgentBackdate).After(rec.CertIssuedAt)
}

// outageLookup bounds an admission's store reads while the relay serves
// from what it last read (Config.Outage).
const outageLookup = 2 * time.Second

// lostRenewal decides on leaf, a certificate of agent rec other than its
// newest on record: a renewal that a store restored from a backup lost
// (policy.LostRenewal) is accepted, and record, called once the agent is
// admitted, records it as the agent's newest and as the newest of a
// restore window seen from it: from then on only it (and its renewals) is
// accepted, and no older certificate of a window. Without it, every
// agent that renewed after the backup would be refused as superseded
// after a restore, and would have to enrol again. Any other certificate
// is refused (err) as superseded.
//
// Two different certificates of a window in use for one agent (an older
// one after a newer was recorded, or a newer one after an older one or
// one of its renewals was) mean that two holders have the agent's
// identity: it is logged and audited as a possible copy of its key pair.
func (s *Server) lostRenewal(ctx context.Context, rec store.Agent, leaf *x509.Certificate) (record func() error, err error) {
	serial := leaf.SerialNumber.Text(16)
	refuse := policy.SupersededError(rec, serial)
	ws, err := s.cfg.Store.RestoreWindows(ctx)
	if err != nil {
		s.log.Warn("read the store's restore windows", "err", err)
		return nil, refuse
	}
	if len(ws) == 0 {
		return nil, refuse
	}
	issued := leaf.NotBefore.Add(ca.AgentBackdate)
	root := s.cfg.Authority.CA().IssuerOf(leaf)
	if root == nil {
		return nil, refuse
	}
	if !policy.LostRenewal(rec, issued, ws) {
		if rec.WindowCertSerial != "" && serial != rec.WindowCertSerial && policy.InWindow(issued, ws) && !issued.After(rec.WindowCertIssuedAt) {
			s.log.Warn("refused a certificate issued before the restore that is older than another one of the agent's used since: its key pair was probably copied",
				"tenant", rec.Tenant, "agent", rec.ID, "certificate", serial, "issued_at", issued.UTC().Format(time.RFC3339),
				"newer_certificate", rec.WindowCertSerial, "newer_issued_at", rec.WindowCertIssuedAt.UTC().Format(time.RFC3339))
			return nil, policy.WindowCertSuperseded(rec, serial, issued)
		}
		return nil, refuse
	}
	return func() error {
		c := store.AgentCert{Serial: serial, NotAfter: leaf.NotAfter, Root: root.ID(), IssuedAt: issued}
		if err := s.cfg.Store.RecordWindowCert(ctx, rec.ID, rec.CertSerial, c); err != nil {
			s.log.Warn("record a certificate issued before the restore as an agent's newest", "agent", rec.ID, "err", err)
			return refuse
		}
		detail := map[string]any{"cert_serial": serial, "not_after": leaf.NotAfter, "ca_root": root.ID(), "issued_at": issued, "replaced_serial": rec.CertSerial}
		// The newest on record came from an older certificate of the
		// window accepted since the restore, or from a renewal made
		// since (of it, or of the backup's certificate): someone else
		// connected on the agent's identity with an older key pair.
		if rec.WindowCertSerial != "" || !issued.After(rec.CertIssuedAt) {
			detail["clone_suspected"] = true
			if rec.WindowCertSerial != "" {
				detail["older_window_serial"] = rec.WindowCertSerial
			}
			s.log.Warn("accepted a certificate issued before the restore that is newer than the one the agent's identity was accepted on since: "+
				"the certificates it replaces come from an older key pair of the agent, probably copied; they are refused from now on",
				"tenant", rec.Tenant, "agent", rec.ID, "certificate", serial, "issued_at", issued.UTC().Format(time.RFC3339),
				"replaces", rec.CertSerial, "older_window_certificate", rec.WindowCertSerial)
		} else {
			s.log.Warn("accepted a certificate the relay issued between the backup its store was restored from and the restore, and recorded it as the agent's newest",
				"tenant", rec.Tenant, "agent", rec.ID, "certificate", serial, "issued_at", issued.UTC().Format(time.RFC3339), "replaces", rec.CertSerial)
		}
		s.cfg.Audit.Record(audit.Record{Kind: audit.RestoredCertificate, Outcome: audit.OutcomeOK, Tenant: rec.Tenant, Agent: rec.ID, Actor: "relay", Detail: detail})
		return nil
	}, nil
}

// reject tells the agent why it is refused and closes the session once the
// agent has read it (or after a short grace period): over QUIC with the
// refusal as the close's reason too (closeRefused), for an agent that did
// not get to read the Reject.
func (s *Server) reject(sess transport.Session, ctl transport.Stream, err error) {
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
	closeRefused(sess, err)
}
