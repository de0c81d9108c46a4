// Package relay is Tether's central server. Agents dial out to it over QUIC
// or TLS+yamux and are authenticated by the certificates its tenant CA
// issued; SaaS backends reach "service S of tenant T" through its front doors
// (SOCKS5 and HTTP CONNECT, the latter also used by the Go Dialer in
// relay/client); the relay picks a healthy agent of T, opens a stream on that
// agent's session, and copies bytes both ways.
package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/console"
	"github.com/tetherhq/tether/relay/internal/policy"
	"github.com/tetherhq/tether/relay/internal/trust"

	quicgo "github.com/quic-go/quic-go"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/quic"
)

// Relay is a running relay. Create it with New, serve with Run.
type Relay struct {
	cfg      Config
	log      *slog.Logger
	st       *state
	reg      *registry
	backends backendCache
	audit    *audit.Log
	pol      *policy.Policy

	started  time.Time       // when Run began
	expected map[string]bool // tenants with agents connected before the last stop (the roster)

	gate        *handshakeGate
	quicGate    *handshakeGate // QUIC TLS handshakes in progress (admission.go)
	agentSrc    *sourceLimit   // agent handshakes in progress per source (admission.go)
	frontSrc    *sourceLimit   // unauthenticated front-door connections per source
	hsFailed    atomic.Int64   // agent handshakes that failed (TLS or hello)
	hsThrottled atomic.Int64   // agent handshakes turned away by the admission limit (over QUIC, once per Initial packet of the attempt)
	// hsSourceLimited counts agent connections turned away because their
	// source address or network was at its bound (agentSrc), and
	// frontSourceLimited front-door connections (frontSrc).
	hsSourceLimited    atomic.Int64
	frontSourceLimited atomic.Int64

	limitRefusals atomic.Int64 // stream opens refused by a tenant limit
	hsOK          atomic.Int64 // agent sessions admitted
	serving       atomic.Bool  // listeners accepting: between Run's start and its shutdown
	metrics       *metrics

	tls *trust.Server // the relay's certificate and every listener's TLS configuration
	adm *admin.Admin  // operator actions, for the admin API

	bg sync.WaitGroup // background sends (renewal requests); waited for at shutdown

	feedFrom    int64         // the change feed's newest change when New read the state
	caApplied   *ca.CA        // the CA whose roots the sessions were last brought in line with (refreshCA)
	rolloutWake chan struct{} // wakes rolloutLoop (wakeRollout)

	tcpLn     net.Listener
	udpConn   *net.UDPConn
	quicTr    *quicgo.Transport
	quicLn    *quicgo.Listener
	socksLn   net.Listener
	connectLn net.Listener
	// connectTLSLn is the CONNECT front door over TLS, where backends may
	// present client certificates.
	connectTLSLn net.Listener
	debugLn      net.Listener
	opsLn        net.Listener    // /metrics, /healthz, /readyz
	console      *console.Server // admin API and dashboard, or nil when off
	downloadLn   net.Listener    // install scripts and agent binaries (download.go)

	bearer     *bearerAuth  // nil unless an OIDC issuer is configured
	oidcClient *http.Client // fetches the issuer's keys

	front *connSet // open front-door connections, closed at shutdown
	seen  lastSeen // agents' last-seen times waiting to be written (lastseen.go)

	runOnce sync.Once
}

// New validates cfg, opens the data directory (creating the CA and store on
// first use) and binds every listener, so that the addresses are known and
// port conflicts are reported before Run. Call Run, or Close if Run will not
// be called.
func New(cfg Config) (*Relay, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("relay config: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := openState(ctx, cfg)
	if err != nil {
		return nil, err
	}
	r := &Relay{cfg: cfg, log: cfg.Logger, st: st, reg: newRegistry(), front: newConnSet(), gate: newHandshakeGate(cfg.MaxHandshakes), quicGate: newHandshakeGate(cfg.MaxQUICTLSHandshakes), pol: policy.New(cfg.Logger), rolloutWake: make(chan struct{}, 1),
		agentSrc: newSourceLimit(cfg.MaxHandshakesPerAddress, cfg.MaxHandshakesPerNetwork), frontSrc: newSourceLimit(cfg.MaxFrontPendingPerAddress, cfg.MaxFrontPendingPerNetwork)}
	r.metrics = newMetrics(r)
	r.audit, err = audit.Open(ctx, st.store, cfg.AuditLog, cfg.Logger)
	if err != nil {
		st.close()
		return nil, fmt.Errorf("audit log: %w", err)
	}
	r.audit.Committed = func(start time.Time) { r.metrics.storeOp("audit_commit", start) }
	if r.expected, err = st.LoadRoster(); err != nil {
		cfg.Logger.Warn("ignoring the roster of connected tenants", "err", err)
	}
	if r.tls, err = trust.NewServer(st.auth, r.audit, cfg.Now); err != nil {
		r.audit.Close()
		st.close()
		return nil, err
	}
	r.caApplied = st.CA()
	r.adm = admin.New(admin.Config{Dir: st.Dir, Authority: st.auth, Audit: r.audit, Live: liveView{r}, CertLifetime: cfg.AgentCertLifetime, Logger: cfg.Logger, Now: cfg.Now})
	if cfg.OIDC.Issuer != "" {
		r.oidcClient = &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, TLSHandshakeTimeout: keyFetchTimeout, ResponseHeaderTimeout: keyFetchTimeout}}
		r.bearer = newBearerAuth(cfg.OIDC, filepath.Join(st.dir, jwksCacheFile), cfg.Now, r.oidcClient)
	}
	if err := r.listen(); err != nil {
		r.closeListeners()
		r.audit.Close()
		st.close()
		return nil, err
	}
	// Limits apply from the first connection. The feed is followed from
	// before they were read, so no change between is missed.
	if r.feedFrom, err = st.store.LatestChange(ctx); err != nil {
		r.closeListeners()
		r.audit.Close()
		st.close()
		return nil, fmt.Errorf("read the change feed: %w", err)
	}
	r.loadLimits(ctx)
	return r, nil
}

// TrustDomain is the SPIFFE trust domain of the relay's CA.
func (r *Relay) TrustDomain() string { return r.st.CA().TrustDomain() }

// AgentAddr is the address agents connect to (TCP; QUIC uses the same port
// on UDP unless disabled).
func (r *Relay) AgentAddr() net.Addr {
	if r.tcpLn != nil {
		return r.tcpLn.Addr()
	}
	return r.udpConn.LocalAddr()
}

// SOCKSAddr is the SOCKS5 front door's address, or nil when off.
func (r *Relay) SOCKSAddr() net.Addr { return addrOf(r.socksLn) }

// ConnectAddr is the HTTP CONNECT front door's address, or nil when off.
func (r *Relay) ConnectAddr() net.Addr { return addrOf(r.connectLn) }

// ConnectTLSAddr is the address of the CONNECT front door over TLS, or nil
// when off.
func (r *Relay) ConnectTLSAddr() net.Addr { return addrOf(r.connectTLSLn) }

// AdminAddr is the admin listener's address, or nil when off.
func (r *Relay) AdminAddr() net.Addr {
	if r.console == nil {
		return nil
	}
	return r.console.Addr()
}

// DebugAddr is the debug listener's address, or nil when off.
func (r *Relay) DebugAddr() net.Addr { return addrOf(r.debugLn) }

func addrOf(l net.Listener) net.Addr {
	if l == nil {
		return nil
	}
	return l.Addr()
}

func (r *Relay) listen() error {
	host, port, err := net.SplitHostPort(r.cfg.AgentListen)
	if err != nil {
		return err
	}
	// TCP first: with port 0 the kernel picks a port, which UDP then reuses.
	for attempt := 0; ; attempt++ {
		if err := r.listenAgents(host, port); err == nil {
			break
		} else if port != "0" || attempt == 5 {
			return err
		}
		r.closeListeners()
	}
	if r.cfg.SOCKSListen != Off {
		if r.socksLn, err = listenDoor(r.cfg.SOCKSListen, "SOCKS5 front door"); err != nil {
			return err
		}
	}
	if r.cfg.ConnectListen != Off {
		if r.connectLn, err = listenDoor(r.cfg.ConnectListen, "CONNECT front door"); err != nil {
			return err
		}
	}
	if r.cfg.ConnectTLSListen != Off {
		ln, err := listenDoor(r.cfg.ConnectTLSListen, "CONNECT front door (TLS)")
		if err != nil {
			return err
		}
		r.connectTLSLn = tls.NewListener(ln, r.tls.Front())
	}
	if r.cfg.MetricsListen != Off {
		if r.opsLn, err = net.Listen("tcp", r.cfg.MetricsListen); err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
	}
	if r.cfg.AdminListen != Off {
		r.console, err = console.New(console.Config{Listen: r.cfg.AdminListen, CertFile: r.cfg.AdminCertFile, KeyFile: r.cfg.AdminKeyFile,
			SessionTTL: r.cfg.AdminSessionTTL, HandshakeTimeout: r.cfg.HandshakeTimeout, SSO: r.cfg.AdminSSO, AuthRefusals: r.metrics.authRefusals,
			Logger: r.log, Now: r.cfg.Now}, r.adm, r.tls)
		if err != nil {
			return err
		}
	}
	if r.cfg.DebugListen != Off {
		if r.debugLn, err = net.Listen("tcp", r.cfg.DebugListen); err != nil {
			return fmt.Errorf("debug listener: %w", err)
		}
	}
	return r.listenDownloads()
}

// listenDoor listens on addr for a front door. Its connections are read
// and written with raw system calls from the first byte (transport.Direct):
// the SOCKS5 and CONNECT exchanges, the TLS under CONNECT-over-TLS, and
// then the splice.
func listenDoor(addr, door string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", door, err)
	}
	return transport.DirectListener(ln), nil
}

func (r *Relay) listenAgents(host, port string) error {
	var err error
	if !r.cfg.DisableTCP {
		if r.tcpLn, err = net.Listen("tcp", net.JoinHostPort(host, port)); err != nil {
			return fmt.Errorf("agent listener (TCP): %w", err)
		}
		port = strconv.Itoa(r.tcpLn.Addr().(*net.TCPAddr).Port)
	}
	if !r.cfg.DisableQUIC {
		ua, err := net.ResolveUDPAddr("udp", net.JoinHostPort(host, port))
		if err != nil {
			return fmt.Errorf("agent listener (UDP): %w", err)
		}
		if r.udpConn, err = net.ListenUDP("udp", ua); err != nil {
			return fmt.Errorf("agent listener (UDP): %w", err)
		}
		key := quicgo.StatelessResetKey(r.st.ResetKey)
		r.quicTr = &quicgo.Transport{Conn: r.udpConn, StatelessResetKey: &key, ConnContext: r.quicConnContext,
			VerifySourceAddress: r.agentSrc.busy}
		// One incoming stream: the control stream. The relay opens every
		// other stream itself (see tcp.RelayConfig for TCP).
		if r.quicLn, err = r.quicTr.Listen(r.tls.Agents(), quic.Config(1)); err != nil {
			return fmt.Errorf("agent listener (QUIC): %w", err)
		}
		r.logUDPBuffers()
	}
	return nil
}

// logUDPBuffers reports the QUIC socket's buffer sizes, which quic-go has
// tried to raise by now, and warns with what to do when they are small:
// every agent's packets arrive through this one socket.
func (r *Relay) logUDPBuffers() {
	recv, send, err := quic.SocketBuffers(r.udpConn)
	quic.LogBuffers(r.log, recv, send, err)
}

func (r *Relay) closeListeners() {
	for _, l := range []net.Listener{r.tcpLn, r.socksLn, r.connectLn, r.connectTLSLn, r.debugLn, r.opsLn, r.downloadLn} {
		if l != nil {
			l.Close()
		}
	}
	if r.console != nil {
		r.console.Close()
	}
	if r.quicLn != nil {
		r.quicLn.Close()
	}
	if r.quicTr != nil {
		r.quicTr.Close()
	}
	if r.udpConn != nil {
		r.udpConn.Close()
	}
}

// Run serves until ctx is cancelled, then shuts down gracefully: it stops
// accepting, tells every agent to go away, waits up to DrainTimeout for
// tunnelled connections to finish, closes the rest, and returns once every
// goroutine it started has exited. Run may be called once.
func (r *Relay) Run(ctx context.Context) error {
	err := errors.New("relay: Run called twice")
	r.runOnce.Do(func() { err = r.run(ctx) })
	return err
}

func (r *Relay) run(ctx context.Context) error {
	// sessCtx outlives ctx by the drain period: agent sessions and tunnels
	// keep working while they drain.
	sessCtx, stopSessions := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSessions()

	r.started = time.Now()
	var wg sync.WaitGroup
	// Listener goroutines report how they ended; the first report ends Run.
	// Reporting never blocks, so however many listeners there are, none
	// is left waiting on a channel nobody reads once Run is shutting down.
	fatal := make(chan error, 1)
	report := func(err error) {
		select {
		case fatal <- err:
		default:
		}
	}
	r.audit.Start() // stopped below
	rosterCtx, stopRoster := context.WithCancel(context.Background())
	wg.Go(func() { r.keepRoster(rosterCtx) })
	wg.Go(func() { r.follow(rosterCtx, r.feedFrom) })
	wg.Go(func() { r.housekeep(rosterCtx) })
	wg.Go(func() { r.rolloutLoop(rosterCtx) })
	seenStop, seenDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(seenDone); r.keepLastSeen(seenStop) }() // stopped after wg, so that disconnects are written
	if r.tcpLn != nil {
		wg.Go(func() { report(r.acceptTCP(sessCtx, &wg)) })
	}
	if r.quicLn != nil {
		wg.Go(func() { report(r.acceptQUIC(sessCtx, &wg)) })
	}
	if r.socksLn != nil {
		wg.Go(func() { report(r.acceptSOCKS(sessCtx, &wg)) })
	}
	var connectSrvs []*http.Server // plain and TLS
	for _, ln := range []net.Listener{r.connectLn, r.connectTLSLn} {
		if ln == nil {
			continue
		}
		srv := r.connectServer(sessCtx)
		connectSrvs = append(connectSrvs, srv)
		fl := frontListener{Listener: ln, r: r, tlsDoor: ln == r.connectTLSLn, deadline: r.cfg.HandshakeTimeout}
		wg.Go(func() {
			err := srv.Serve(fl)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			report(err)
		})
	}
	// The metrics listener outlives the others (so /readyz answers "not
	// ready" while the relay drains): it is not in wg, which Run waits for
	// before closing it, but in opsWG.
	var opsSrv *http.Server
	var opsWG sync.WaitGroup
	if r.opsLn != nil {
		opsSrv = &http.Server{Handler: r.opsHandler(), ReadHeaderTimeout: r.cfg.HandshakeTimeout}
		opsWG.Go(func() { opsSrv.Serve(r.opsLn) })
	}
	consoleCtx, stopConsole := context.WithCancel(ctx)
	defer stopConsole()
	if r.console != nil {
		wg.Go(func() { report(r.console.Run(consoleCtx)) })
	}
	var debugSrv *http.Server
	if r.debugLn != nil {
		debugSrv = &http.Server{Handler: r.debugHandler(), ReadHeaderTimeout: r.cfg.HandshakeTimeout}
		wg.Go(func() { debugSrv.Serve(r.debugLn) })
	}
	var downloadSrv *http.Server
	if r.downloadLn != nil {
		downloadSrv = r.downloadServer()
		wg.Go(func() { downloadSrv.Serve(r.downloadLn) })
	}
	r.log.Info("relay serving",
		"agent_addr", r.AgentAddr().String(), "quic", r.quicLn != nil, "tcp", r.tcpLn != nil,
		"socks_addr", addrString(r.SOCKSAddr()), "connect_addr", addrString(r.ConnectAddr()), "connect_tls_addr", addrString(r.ConnectTLSAddr()), "debug_addr", addrString(r.DebugAddr()), "metrics_addr", addrString(addrOf(r.opsLn)), "admin_addr", addrString(r.AdminAddr()), "download_addr", addrString(r.DownloadAddr()),
		"trust_domain", r.TrustDomain(), "ca_fingerprint", protocol.FormatFingerprint(r.st.CA().Fingerprint()), "ca_signing_root", r.st.CA().Signer().ID())

	r.serving.Store(true)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-fatal:
		if runErr != nil {
			r.log.Error("listener failed; shutting down", "err", runErr)
		}
	}

	// 1. Stop accepting. CONNECT handlers still choosing an agent finish
	// on their own (at the latest when sessCtx ends below); Shutdown
	// returns once they have, and wg waits for it.
	r.serving.Store(false)
	r.closeListenersForShutdown()
	if debugSrv != nil {
		debugSrv.Close()
	}
	stopConsole() // requests in progress get a few seconds
	if downloadSrv != nil {
		downloadSrv.Close()
	}
	for _, srv := range connectSrvs {
		wg.Go(func() {
			sctx, cancel := context.WithTimeout(context.Background(), r.cfg.DrainTimeout+r.cfg.StreamOpenTimeout)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				r.log.Warn("CONNECT front door: handlers still running at shutdown", "err", err)
			}
		})
	}
	stopRoster()
	r.saveRoster() // before agents leave: they are expected back
	// 2. Tell agents to go away; tunnels in flight continue.
	r.reg.goAwayAll(&wg, "shutdown", "relay is shutting down", r.cfg.DrainTimeout)
	// 3. Drain.
	if !r.front.waitEmpty(r.cfg.DrainTimeout) {
		r.log.Warn("drain timeout: closing tunnelled connections still open", "open", r.front.len())
	}
	// 4. Close everything left and wait for every goroutine.
	r.front.closeAll()
	stopSessions()
	wg.Wait()
	r.bg.Wait()
	close(seenStop)
	<-seenDone
	if r.quicTr != nil {
		r.quicTr.Close()
	}
	if r.udpConn != nil {
		r.udpConn.Close()
	}
	if r.oidcClient != nil {
		r.oidcClient.CloseIdleConnections()
	}
	if opsSrv != nil {
		opsSrv.Close() // last: /readyz says "not ready" while the relay drains
		opsWG.Wait()
	}
	r.audit.Stop() // after every goroutine that records; waits for the writer
	if err := r.audit.Close(); err != nil && runErr == nil {
		runErr = fmt.Errorf("close audit log: %w", err)
	}
	if err := r.st.close(); err != nil && runErr == nil {
		runErr = err
	}
	r.log.Info("relay stopped")
	return runErr
}

func (r *Relay) closeListenersForShutdown() {
	if r.tcpLn != nil {
		r.tcpLn.Close()
	}
	if r.quicLn != nil {
		r.quicLn.Close()
	}
	if r.socksLn != nil {
		r.socksLn.Close()
	}
}

// Close releases a relay whose Run was never called.
func (r *Relay) Close() error {
	err := errors.New("relay: Close after Run")
	r.runOnce.Do(func() {
		r.closeListeners()
		r.audit.Close()
		err = r.st.close()
	})
	return err
}

func addrString(a net.Addr) string {
	if a == nil {
		return Off
	}
	return a.String()
}

// connSet tracks open front-door connections so that shutdown can wait for
// them and then close them.
type connSet struct {
	mu    sync.Mutex // guards conns and empty
	conns map[net.Conn]struct{}
	empty chan struct{} // closed while conns is empty; replaced when it fills
}

func newConnSet() *connSet {
	e := make(chan struct{})
	close(e)
	return &connSet{conns: make(map[net.Conn]struct{}), empty: e}
}

func (s *connSet) add(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) == 0 {
		s.empty = make(chan struct{})
	}
	s.conns[c] = struct{}{}
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[c]; !ok {
		return
	}
	delete(s.conns, c)
	if len(s.conns) == 0 {
		close(s.empty)
	}
}

func (s *connSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *connSet) waitEmpty(d time.Duration) bool {
	s.mu.Lock()
	e := s.empty
	s.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-e:
		return true
	case <-t.C:
		return false
	}
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
}
