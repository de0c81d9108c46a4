// Package relay is Tether's central server. Agents dial out to it over QUIC
// or TLS+yamux and are authenticated by the certificates its tenant CA
// issued; SaaS backends reach "service S of tenant T" through its front
// doors (SOCKS5 and HTTP CONNECT, the latter also used by the Go Dialer in
// relay/client); the relay picks a healthy agent of T, opens a stream on
// that agent's session, and copies bytes both ways.
//
// This package is the facade: Config, New, Run, Close, the addresses and
// Stats. doc.go describes the parts it wires.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/cluster"
	"github.com/tetherhq/tether/relay/internal/console"
	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/enrol"
	"github.com/tetherhq/tether/relay/internal/frontdoor"
	"github.com/tetherhq/tether/relay/internal/history"
	"github.com/tetherhq/tether/relay/internal/metrics"
	"github.com/tetherhq/tether/relay/internal/peer"
	"github.com/tetherhq/tether/relay/internal/policy"
	"github.com/tetherhq/tether/relay/internal/restore"
	"github.com/tetherhq/tether/relay/internal/route"
	"github.com/tetherhq/tether/relay/internal/session"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/streammem"
	"github.com/tetherhq/tether/relay/internal/throttle"
	"github.com/tetherhq/tether/relay/internal/trust"
	"github.com/tetherhq/tether/relay/internal/update"
)

// Relay is a running relay. Create it with New, serve with Run.
type Relay struct {
	cfg     Config
	log     *slog.Logger
	dir     *datadir.Dir
	auth    *trust.Authority
	tls     *trust.Server // the relay's certificate and every listener's TLS configuration
	audit   *audit.Log
	metrics *metrics.Metrics
	pol     *policy.Policy
	adm     *admin.Admin // operator actions, for the admin API

	// mem is the stream memory cap (max_stream_memory), one for the
	// streams through the front doors and those forwarded here by other
	// relays (peers).
	mem *streammem.Budget

	relayID string           // this relay's id in its cluster
	member  *cluster.Cluster // its row and its agents' presence in the store
	peerTLS *trust.Peer      // its relay-to-relay certificate
	links   *peer.Links      // links to the other relays, for their agents
	peers   *peer.Server     // streams other relays forward here, or nil when off

	routes    *route.Table
	router    *route.Router
	sessions  *session.Server
	enrol     *enrol.Enrol
	rotation  *enrol.Rotation
	rollouts  *update.Rollouts
	doors     *frontdoor.Server
	console   *console.Server   // admin API and dashboard, or nil when off
	history   *history.Recorder // the last hour, for the dashboard's charts (consoleview.go)
	downloads *update.Downloads // install scripts and agent binaries, or nil when off
	opsLn     net.Listener      // /metrics, /healthz, /readyz, or nil when off
	readyMemo *readiness        // ready's answers as /readyz reuses them (readiness.go)
	debugLn   net.Listener      // pprof and /debug/tether, or nil when off

	// isolated: this relay lost its store while another relay reaches it;
	// its agents were sent away, and new ones are refused (watchStore).
	// isolations counts the times it was so.
	isolated   atomic.Bool
	isolations atomic.Int64
	// storeUnready is set while readiness finds the store not answering
	// (logged when it changes).
	storeUnready atomic.Bool
	// strays remembers the agents sent away while isolated, and admits
	// and keeps those that come back (returned counts them).
	strays    strays
	strayKept atomic.Int64
	// downForAll: the relay has lost its store and every other relay it
	// last saw live says it has too (watchStore); with the outage grace
	// (outage.go) it then serves from what it last read, holders among
	// it: the relays last read as holding each tenant's agents.
	downForAll atomic.Bool
	holders    lastHolders

	feedFrom   int64                     // the change feed's newest change when New read the state
	feedReadAt atomic.Pointer[time.Time] // when the change feed was last read, with its monotonic reading (admit)
	started    time.Time                 // when Run began
	serving    atomic.Bool               // listeners accepting: between Run's start and its shutdown
	bg         sync.WaitGroup            // drain requests' GoAway sends; waited for at shutdown
	fatal      chan error                // a listener that failed (the first one)

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
	dir, authority, err := datadir.Open(ctx, cfg.DataDir, datadir.Options{TrustDomain: cfg.TrustDomain, Store: cfg.Store, CAKEK: cfg.CAKEK, Logger: cfg.Logger}, cfg.Now())
	if err != nil {
		return nil, err
	}
	r := &Relay{cfg: cfg, log: cfg.Logger, dir: dir, auth: trust.NewAuthority(dir.CAStorage(), authority),
		pol: policy.New(cfg.Logger), routes: route.NewTable(), fatal: make(chan error, 1)}
	now := time.Now()
	r.feedReadAt.Store(&now)
	r.readyMemo = newReadiness(r.ready, readyFor)
	r.metrics = metrics.New(session.DisconnectReasons, throttle.NewRefusals(), &liveCollector{r: r})
	r.mem = streammem.New(cfg.MaxStreamMemory, func(tenant, backend, reason string) {
		r.metrics.MemoryRefusals.WithLabelValues(tenant, backend, reason).Inc()
	})
	if err := r.assemble(ctx); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// assemble makes the parts and binds their listeners. What it made is
// released by Close when it fails.
func (r *Relay) assemble(ctx context.Context) error {
	cfg := r.cfg
	var err error
	if r.audit, err = audit.Open(ctx, r.dir.Store, cfg.AuditLog, cfg.Logger); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	r.audit.Committed = func(start time.Time) { r.metrics.StoreOp("audit_commit", start) }
	// A data directory restored from a backup is a step back in time:
	// its first start catches up from the audit file and closes what
	// the step back would reopen, before any state is read or any
	// listener bound.
	// It may have a large audit file to read: it is not held to the
	// start's time limit.
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
	defer rcancel()
	if _, _, err := restore.Handle(rctx, restore.Config{Dir: r.dir, AuditFile: cfg.AuditLog, Audit: r.audit, Logger: cfg.Logger, Now: cfg.Now, CertLifetime: cfg.AgentCertLifetime}); err != nil {
		return fmt.Errorf("restored data directory: %w", err)
	}
	// After the restore's replay, which reads the rotated files.
	if cfg.AuditFileMaxSize > 0 {
		r.audit.SetRotation(audit.Rotation{MaxSize: cfg.AuditFileMaxSize, MaxFiles: cfg.AuditFileMaxFiles, KeepAfter: r.dir.LastBackup})
	}
	if r.tls, err = trust.NewServer(r.auth, r.audit, cfg.Now); err != nil {
		return err
	}
	if err := r.assemblePeers(); err != nil {
		return err
	}
	r.adm = admin.New(admin.Config{Dir: r.dir, Authority: r.auth, Audit: r.audit, Live: liveView{r}, CertLifetime: cfg.AgentCertLifetime,
		RelayID: r.relayID, Logger: cfg.Logger, Now: cfg.Now})
	r.router = route.NewRouter(route.Config{Table: r.routes, StreamOpenTimeout: cfg.StreamOpenTimeout, ReconnectGrace: cfg.ReconnectGrace,
		Dir: r.dir, Elsewhere: r.links, Admit: r.admit, Logger: cfg.Logger, Now: cfg.Now})
	// What serves from what was last read during a store outage
	// (outage.go): with a cluster's store and the grace on only, so that
	// a relay on SQLite keeps no admission records for it.
	var outage func() bool
	if store.IsPostgres(cfg.Store) && cfg.StoreOutageGrace > 0 {
		outage = r.storeOutage
	}
	enrolCfg := enrol.Config{Store: r.dir.Store, Authority: r.auth, Policy: r.pol, Audit: r.audit, CertLifetime: cfg.AgentCertLifetime,
		HandshakeTimeout: cfg.HandshakeTimeout, Refusals: r.metrics.AuthRefusals, Logger: cfg.Logger, Now: cfg.Now}
	r.enrol = enrol.New(enrolCfg)
	r.sessions, err = session.New(session.Config{
		Listen: cfg.AgentListen, DisableQUIC: cfg.DisableQUIC, DisableTCP: cfg.DisableTCP,
		HandshakeTimeout: cfg.HandshakeTimeout, Heartbeat: cfg.HeartbeatInterval, StreamOpenTimeout: cfg.StreamOpenTimeout,
		MaxHandshakes: cfg.MaxHandshakes, MaxQUICTLSHandshakes: cfg.MaxQUICTLSHandshakes,
		MaxHandshakesPerAddress: cfg.MaxHandshakesPerAddress, MaxHandshakesPerNetwork: cfg.MaxHandshakesPerNetwork,
		ResetKey: r.dir.ResetKey, TLS: r.tls, Authority: r.auth, Store: r.dir.Store, Policy: r.pol, Audit: r.audit, Routes: r.routes,
		Enrol: r.enrol.Serve,
		Renew: func(ctx context.Context, c *session.Conn, req *protocol.RenewRequest) *protocol.RenewResponse {
			return r.enrol.Renew(ctx, c, req)
		},
		Update:        func(ctx context.Context, c *session.Conn, m protocol.Message) { r.rollouts.Handle(ctx, c, m) },
		Connected:     func(c *session.Conn) { r.rotation.Connected(c) },
		Present:       func(tenant, agent string, n int) { r.member.Present(tenant, agent, n) },
		Relays:        r.relayList,
		RelayID:       r.relayID,
		ClusterAgents: r.clusterAgents,
		Admit:         r.admitAgent,
		Outage:        outage,
		Disconnects:   r.metrics.Disconnects, StoreOp: r.metrics.StoreOp, Fatal: r.failed,
		Version: cfg.Version, Logger: cfg.Logger, Now: cfg.Now,
	})
	if err != nil {
		return err
	}
	if err := r.assembleMember(); err != nil {
		return err
	}
	r.rotation = enrol.NewRotation(enrolCfg, r.sessions.Sessions())
	r.rollouts = update.NewRollouts(update.Config{Dir: r.dir, Audit: r.audit, Interval: cfg.UpdateInterval, Logger: cfg.Logger, Now: cfg.Now,
		Agents: func() []update.Agent {
			var out []update.Agent
			for _, c := range r.sessions.Sessions().Select("", true, nil) {
				out = append(out, c)
			}
			return out
		},
		Connected: r.sessions.Sessions().Changes})
	r.doors, err = frontdoor.New(frontdoor.Config{
		SOCKSListen: on(cfg.SOCKSListen), ConnectListen: on(cfg.ConnectListen), ConnectTLSListen: on(cfg.ConnectTLSListen),
		HandshakeTimeout: cfg.HandshakeTimeout, StreamOpenTimeout: cfg.StreamOpenTimeout, IdleTimeout: cfg.IdleTimeout,
		MaxPendingPerAddress: cfg.MaxFrontPendingPerAddress, MaxPendingPerNetwork: cfg.MaxFrontPendingPerNetwork, Memory: r.mem,
		OIDC: cfg.OIDC, JWKSCacheFile: r.dir.File(datadir.JWKSCacheFile), BackendCacheTTL: cfg.backendCacheTTL, Outage: outage,
		Router: r.router, Routes: r.routes, Store: r.dir.Store, Policy: r.pol, Authority: r.auth, TLS: r.tls, Audit: r.audit, Metrics: r.metrics,
		Fatal: r.failed, Logger: cfg.Logger, Now: cfg.Now,
	})
	if err != nil {
		return err
	}
	if err := r.doors.SetForwards(ctx, cfg.Forwards); err != nil {
		return err
	}
	fds := fdLimit()
	metricsLim, adminLim, downloadLim, scaled := opsLimits(cfg.MetricsListen != Off, cfg.AdminListen != Off, cfg.DownloadListen != Off, fds)
	if scaled {
		r.log.Info("few file descriptors: the operator listeners hold fewer connections", "fd_limit", fds,
			"metrics", metricsLim.Total, "admin", adminLim.Total, "download", downloadLim.Total)
	}
	if cfg.MetricsListen != Off {
		if r.opsLn, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		r.opsLn = throttle.LimitListener(r.opsLn, metricsLim, r.refusedBy(listenerMetrics))
	}
	if cfg.AdminListen != Off {
		r.history = history.New(history.Config{Read: r.historyReading, Now: cfg.Now})
		r.console, err = console.New(console.Config{Listen: cfg.AdminListen, CertFile: cfg.AdminCertFile, KeyFile: cfg.AdminKeyFile,
			SessionTTL: cfg.AdminSessionTTL, HandshakeTimeout: cfg.HandshakeTimeout, SSO: cfg.AdminSSO, AuthRefusals: r.metrics.AuthRefusals,
			Limits: adminLim, Refused: r.refusedBy(listenerAdmin),
			Relay: consoleView{r}, Logger: cfg.Logger, Now: cfg.Now}, r.adm, r.tls)
		if err != nil {
			return err
		}
	}
	if cfg.DebugListen != Off {
		if r.debugLn, err = net.Listen("tcp", cfg.DebugListen); err != nil {
			return fmt.Errorf("debug listener: %w", err)
		}
	}
	if cfg.DownloadListen != Off {
		if r.downloads, err = update.NewDownloads(update.DownloadsConfig{Listen: cfg.DownloadListen, Dir: cfg.DownloadDir,
			HandshakeTimeout: cfg.HandshakeTimeout, Limits: downloadLim, Refused: r.refusedBy(listenerDownload), Logger: cfg.Logger}, r.tls, r.auth); err != nil {
			return err
		}
	}
	// Limits apply from the first connection. The feed is followed from
	// before they were read, so no change between is missed. A relay that
	// cannot read them does not start: it would serve every tenant
	// without its limits (its allowed networks among them) until the next
	// change to any tenant's.
	if r.feedFrom, err = r.dir.Store.LatestChange(ctx); err != nil {
		return fmt.Errorf("read the change feed: %w", err)
	}
	if err := r.loadLimits(ctx); err != nil {
		return err
	}
	// Backends' credentials are held in memory from the first request
	// (frontdoor.Server.LoadBackends); a relay that cannot read them
	// reads each as it is used.
	if err := r.doors.LoadBackends(ctx); err != nil {
		r.log.Warn("backends' credentials not read at start: each is read from the store as it is used", "err", err)
	}
	return nil
}

// on is a listen address of Config as the parts take it: "" for off.
func on(addr string) string {
	if addr == Off {
		return ""
	}
	return addr
}

// failed reports a listener that failed; the first one ends Run.
func (r *Relay) failed(err error) {
	select {
	case r.fatal <- err:
	default:
	}
}

// TrustDomain is the SPIFFE trust domain of the relay's CA.
func (r *Relay) TrustDomain() string { return r.auth.TrustDomain() }

// RelayID is this relay's id in its cluster (Config.RelayID, or the one
// kept in the data directory).
func (r *Relay) RelayID() string { return r.relayID }

// AgentAddr is the address agents connect to (TCP; QUIC uses the same port
// on UDP unless disabled).
func (r *Relay) AgentAddr() net.Addr { return r.sessions.Addr() }

// SOCKSAddr is the SOCKS5 front door's address, or nil when off.
func (r *Relay) SOCKSAddr() net.Addr { return r.doors.SOCKSAddr() }

// ConnectAddr is the HTTP CONNECT front door's address, or nil when off.
func (r *Relay) ConnectAddr() net.Addr { return r.doors.ConnectAddr() }

// ConnectTLSAddr is the address of the CONNECT front door over TLS, or nil
// when off.
func (r *Relay) ConnectTLSAddr() net.Addr { return r.doors.ConnectTLSAddr() }

// SetForwards replaces the relay-side forwards while the relay runs (a
// reloaded config file): new addresses listen, removed ones stop (their
// connections go on), changed ones take their new target and backend. It
// applies all of fwds or, on any problem, none.
func (r *Relay) SetForwards(ctx context.Context, fwds []Forward) error {
	return r.doors.SetForwards(ctx, fwds)
}

// AdminAddr is the admin listener's address, or nil when off.
func (r *Relay) AdminAddr() net.Addr {
	if r.console == nil {
		return nil
	}
	return r.console.Addr()
}

// DownloadAddr is the download listener's address, or nil when off.
func (r *Relay) DownloadAddr() net.Addr {
	if r.downloads == nil {
		return nil
	}
	return r.downloads.Addr()
}

// DebugAddr is the debug listener's address, or nil when off.
func (r *Relay) DebugAddr() net.Addr { return addrOf(r.debugLn) }

func addrOf(l net.Listener) net.Addr {
	if l == nil {
		return nil
	}
	return l.Addr()
}

func addrString(a net.Addr) string {
	if a == nil {
		return Off
	}
	return a.String()
}

// LiveAgent is a snapshot of one connected agent session, for operators.
type LiveAgent = session.LiveAgent

// LiveAgents returns a snapshot of every connected agent session of tenant
// ("" for all), sorted by tenant, agent and connection time.
func (r *Relay) LiveAgents(tenant string) []LiveAgent { return r.sessions.Sessions().Snapshot(tenant) }

// liveView is the relay's live agents as its Admin sees them.
type liveView struct{ r *Relay }

func (l liveView) LiveAgents(tenant string) []LiveAgent { return l.r.LiveAgents(tenant) }

// DrainAgent tells the sessions of agent id of tenant to go away (GoAway
// "drain"): the relay sends it no new streams there, streams in flight
// continue, and the agent reconnects.
func (l liveView) DrainAgent(tenant, id, msg string) int {
	return l.r.sessions.Sessions().GoAway(&l.r.bg, tenant, id, protocol.GoAwayDrain, msg, 0)
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
	// partsCtx ends when the relay stops accepting: what follows the
	// store and keeps the roster.
	partsCtx, stopParts := context.WithCancel(context.WithoutCancel(ctx))
	defer stopParts()
	r.started = time.Now()
	r.audit.Start() // stopped below
	var wg sync.WaitGroup
	wg.Go(func() { r.router.Run(partsCtx) })
	wg.Go(func() { r.follow(partsCtx, r.feedFrom) })
	wg.Go(func() { r.housekeep(partsCtx) })
	wg.Go(func() { r.retainAudit(partsCtx) })
	wg.Go(func() { r.rollouts.Run(partsCtx) })
	wg.Go(func() { r.rotation.Run(partsCtx) })
	wg.Go(func() { r.sessions.Run(sessCtx) })
	wg.Go(func() { r.enrol.Run(sessCtx) })
	wg.Go(func() { r.doors.Run(sessCtx) })
	wg.Go(func() { r.member.Run(sessCtx) })
	wg.Go(func() { r.tellAgents(sessCtx) })
	wg.Go(func() { r.watchStore(partsCtx) })
	if r.peers != nil {
		wg.Go(func() {
			if err := r.peers.Run(sessCtx); err != nil {
				r.failed(err)
			}
		})
	}
	// The metrics listener outlives the others (so /readyz answers "not
	// ready" while the relay drains): it is not in wg, which Run waits for
	// before closing it, but in opsWG.
	var opsSrv *http.Server
	var opsWG sync.WaitGroup
	if r.opsLn != nil {
		// Scraped over the network, unauthenticated: no connection is
		// held longer than a request takes, or idle past
		// metricsIdleTimeout, and the listener bounds how many are held
		// (opslimits.go).
		opsSrv = &http.Server{Handler: r.metrics.Handler(r.readyz), ReadHeaderTimeout: r.cfg.HandshakeTimeout, ReadTimeout: r.cfg.HandshakeTimeout,
			WriteTimeout: 30 * time.Second, IdleTimeout: metricsIdleTimeout, MaxHeaderBytes: 16 << 10}
		opsWG.Go(func() { opsSrv.Serve(r.opsLn) })
	}
	consoleCtx, stopConsole := context.WithCancel(ctx)
	defer stopConsole()
	if r.console != nil {
		wg.Go(func() {
			if err := r.console.Run(consoleCtx); err != nil {
				r.failed(err)
			}
		})
		wg.Go(func() { r.history.Run(partsCtx) })
	}
	var debugSrv *http.Server
	if r.debugLn != nil {
		debugSrv = &http.Server{Handler: r.debugHandler(), ReadHeaderTimeout: r.cfg.HandshakeTimeout, IdleTimeout: time.Minute}
		wg.Go(func() { debugSrv.Serve(r.debugLn) })
	}
	downloadsCtx, stopDownloads := context.WithCancel(ctx)
	defer stopDownloads()
	if r.downloads != nil {
		wg.Go(func() {
			if err := r.downloads.Run(downloadsCtx); err != nil {
				r.failed(err)
			}
		})
	}
	r.log.Info("relay serving",
		"agent_addr", r.AgentAddr().String(), "quic", r.sessions.QUIC(), "tcp", r.sessions.TCP(),
		"socks_addr", addrString(r.SOCKSAddr()), "connect_addr", addrString(r.ConnectAddr()), "connect_tls_addr", addrString(r.ConnectTLSAddr()), "debug_addr", addrString(r.DebugAddr()), "metrics_addr", addrString(addrOf(r.opsLn)), "admin_addr", addrString(r.AdminAddr()), "download_addr", addrString(r.DownloadAddr()),
		"trust_domain", r.TrustDomain(), "ca_fingerprint", protocol.FormatFingerprint(r.auth.CA().Fingerprint()), "ca_signing_root", r.auth.CA().Signer().ID())

	r.serving.Store(true)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-r.fatal:
		r.log.Error("listener failed; shutting down", "err", runErr)
	}

	// 1. Stop accepting. CONNECT requests still choosing an agent finish
	// on their own (at the latest when sessCtx ends below).
	r.serving.Store(false)
	r.sessions.StopAccepting()
	r.doors.StopAccepting(ctx, r.cfg.DrainTimeout)
	if debugSrv != nil {
		debugSrv.Close()
	}
	stopConsole() // requests in progress get a few seconds
	stopDownloads()
	stopParts()
	r.router.SaveRoster() // before agents leave: they are expected back
	// 2. Tell agents to go away; tunnels in flight continue. In a
	// cluster, they are asked to move to the other relays first.
	r.leave()
	// 3. Drain.
	if !r.doors.Drain(r.cfg.DrainTimeout) {
		r.log.Warn("drain timeout: closing tunnelled connections still open", "open", r.doors.Open())
	}
	// 4. Close everything left and wait for every goroutine.
	r.doors.CloseAll()
	if r.peers != nil {
		r.peers.Close()
	}
	r.links.Close()
	stopSessions()
	wg.Wait()
	r.bg.Wait()
	r.sessions.Close()
	if opsSrv != nil {
		opsSrv.Close() // last: /readyz says "not ready" while the relay drains
		opsWG.Wait()
	}
	r.audit.Stop() // after every goroutine that records; waits for the writer
	if err := r.audit.Close(); err != nil && runErr == nil {
		runErr = fmt.Errorf("close audit log: %w", err)
	}
	if err := r.dir.Close(); err != nil && runErr == nil {
		runErr = err
	}
	r.log.Info("relay stopped")
	return runErr
}

// ready reports why the relay cannot serve, or nil: it must be accepting
// (not starting, not shutting down), not isolated from its store while
// other relays reach it (cluster.go: its agents were sent to them), able
// to audit (audit.Log.Durable: not
// while its store and its audit file both fail, e.g. on a full disk, so a
// load balancer moves traffic to relays that can audit it) and its store
// must answer within a second, but while the store is down for every
// relay and this one serves from what it last read (outage.go).
func (r *Relay) ready(ctx context.Context) error {
	if !r.serving.Load() {
		return errNotServing
	}
	if r.isolated.Load() {
		return errors.New("this relay has lost its store, which other relays of the cluster reach: its agents were sent to them")
	}
	if err := r.audit.Durable(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	start := time.Now()
	err := r.dir.Store.Ping(ctx)
	r.metrics.StoreOp("ping", start)
	if err != nil && r.storeOutage() {
		// Down for every relay, the store is served from what was last
		// read (outage.go): every relay is as ready as this one.
		return nil
	}
	if err != nil {
		// The driver's error names the database's host, user and name:
		// /readyz, which anyone who reaches the metrics listener may
		// ask, says only what kind of failure it is; the log says which.
		if !r.storeUnready.Swap(true) {
			r.log.Warn("not ready: the store does not answer a ping", "err", err)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return errors.New("store unreachable: no answer to a ping within 1s (the relay's log has the details)")
		}
		return errors.New("store unreachable: a ping failed (the relay's log has the details)")
	}
	if r.storeUnready.Swap(false) {
		r.log.Info("ready again: the store answers")
	}
	return nil
}

var errNotServing = errors.New("listeners are not accepting (starting or shutting down)")

// Close releases a relay whose Run was never called (or whose New failed
// half-way).
func (r *Relay) Close() error {
	err := errors.New("relay: Close after Run")
	r.runOnce.Do(func() {
		if r.sessions != nil {
			r.sessions.Close()
		}
		if r.doors != nil {
			r.doors.Close()
		}
		if r.peers != nil {
			r.peers.Close()
		}
		if r.links != nil {
			r.links.Close()
		}
		if r.console != nil {
			r.console.Close()
		}
		if r.downloads != nil {
			r.downloads.Close()
		}
		for _, l := range []net.Listener{r.opsLn, r.debugLn} {
			if l != nil {
				l.Close()
			}
		}
		if r.audit != nil {
			r.audit.Close()
		}
		err = r.dir.Close()
	})
	return err
}
