// Package agent is Tether's connector. It runs inside a tenant's network,
// dials out to the relay (QUIC first, TLS over TCP when UDP is blocked),
// and serves the streams the relay opens: each names a service, which the
// agent looks up in its own allowlist, dials, and splices. Nothing inbound is
// ever opened on the tenant side.
package agent

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/agent/accesslog"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport/quic"
)

// Agent is a running connector. Create it with New and run it with Run.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	state *State

	cert     atomic.Pointer[tls.Certificate]     // replaced by renewals
	certAt   atomic.Int64                        // Unix nanoseconds: when cert was obtained or loaded
	roots    atomic.Pointer[x509.CertPool]       // the relay CA roots; replaced by renewals
	rootList atomic.Pointer[[]*x509.Certificate] // the certificates in roots
	renewNow chan renewRequest                   // early renewals the relay asked for (buffered)
	services atomic.Pointer[map[string]Service]
	// served are the streams connected to a service now, which a
	// reload of the config cuts when it no longer allows them.
	servedMu sync.Mutex
	served   map[*servedStream]struct{}
	// configErr is the last config file problem seen by the watcher.
	configErr atomic.Pointer[string]
	// proxyCAErr is the last proxy_ca_file problem seen by the watcher.
	proxyCAErr atomic.Pointer[string]
	hashKey    []byte // keys ConfigHash (confighash.go)

	// rootRefused says why the last renewal answer's CA roots were
	// refused (checkEndorsed); nil once an answer is accepted.
	rootRefused atomic.Pointer[string]

	liveMu sync.Mutex            // guards live
	live   map[*session]struct{} // sessions serving now

	egress *egress     // which relays are reached through an HTTP proxy
	guard  *relayGuard // which addresses of the relays' list are dialled (relayaddr.go)

	fbMu     sync.Mutex           // guards fallback
	fallback map[string]time.Time // relay → time until which auto mode uses TCP

	bootID string // random per process; lets the relay drop a dead predecessor's sessions

	streamsOpen  atomic.Int64
	streamsTotal atomic.Uint64
	// streamsOverLimit counts the streams refused because their session
	// had maxStreamsPerSession open (session.go).
	streamsOverLimit atomic.Uint64
	// renewAskedAt is when (Unix nanoseconds) a relay's RenewNow last went
	// to renewNow (earlyRenewalAllowed, session.go).
	renewAskedAt atomic.Int64

	upd *updater // self-update (update.go)
	// updState is upd for the status, which may be asked for from
	// other goroutines before Run sets upd.
	updState    atomic.Pointer[updater]
	restartErr  atomic.Pointer[RestartError] // set when Run stops to restart
	refused     atomic.Pointer[RefusedError] // set when Run stops after a final refusal (refused.go)
	rep         *reporter                    // bytes, dial failures and change notices for reports (report.go)
	slots       slotTracker                  // what each connection slot is doing, for the status listener (status.go)
	view        *relayView                   // the cluster's relays and what each slot holds (cluster.go)
	alog        *accesslog.Log               // the access log; nil when disabled (accesslog.go)
	logKey      ed25519.PrivateKey           // signs the access log's checkpoints (logkey.go) at start, until the writer replaces it; nil when the log is disabled
	logKeySince time.Time                    // when logKey was put in force
}

// New validates cfg and loads the agent's identity from cfg.StateDir.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	cfg.setDefaults()
	st, err := LoadState(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	if len(cfg.Relays) == 0 {
		if st.Relay == "" {
			return nil, errors.New("agent config: no relays configured and none recorded at enrolment")
		}
		cfg.Relays = []string{st.Relay}
	}
	eg, err := newEgress(cfg.Proxy, cfg.NoProxy, os.Getenv)
	if err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	if err := eg.trustProxyCAs(cfg.ProxyCAFile); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	for _, r := range cfg.Relays {
		if err := eg.check(r); err != nil {
			return nil, fmt.Errorf("agent config: %w", err)
		}
	}
	if cfg.Transport == TransportQUIC {
		for _, r := range cfg.Relays {
			if p := eg.forRelay(r); p != nil {
				return nil, fmt.Errorf("agent config: transport quic, but relay %s is reached through the HTTP proxy %s (from %s) and QUIC is unavailable through an HTTP proxy: use transport auto or tcp, exempt the relay with NO_PROXY, or set proxy: direct", r, p.Redacted(), eg.source)
			}
		}
	}
	nets, err := parseRelayNetworks(cfg.RelayNetworks)
	if err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	if cfg.DialService == nil {
		d := &net.Dialer{KeepAlive: 30 * time.Second}
		cfg.DialService = d.DialContext
	}
	a := &Agent{
		cfg:      cfg,
		log:      cfg.Logger.With("tenant", st.Tenant, "agent", st.AgentID),
		state:    st,
		egress:   eg,
		fallback: make(map[string]time.Time),
		live:     make(map[*session]struct{}),
		bootID:   fmt.Sprintf("%016x", rand.Uint64()),
		renewNow: make(chan renewRequest, 1),
		rep:      newReporter(),
	}
	a.guard = newRelayGuard(cfg.Relays, nets, a.log)
	a.view = newRelayView(st.Tenant+"/"+st.AgentID, cfg.Reconnect, a.log, a.rep.change)
	a.cert.Store(&st.Cert)
	a.certAt.Store(time.Now().UnixNano())
	a.roots.Store(st.Roots)
	a.rootList.Store(&st.RootCerts)
	svcs := cfg.Services
	if svcs == nil {
		svcs = map[string]Service{}
	}
	a.services.Store(&svcs)
	if !cfg.AccessLog.Disabled && cfg.UpdateTrial == "" {
		lk, err := prepareLogKey(cfg.StateDir, cfg.AccessLogPath(), a.log)
		if err != nil {
			return nil, err
		}
		a.logKey, a.logKeySince = lk.key, lk.since
		if lk.made {
			a.log.Info("made the access log's key, which signs its checkpoints: record its fingerprint to verify the log anywhere (tether-agent access-log --verify --key FINGERPRINT); it stays the pin when the agent replaces the key",
				"file", filepath.Join(cfg.StateDir, LogKeyFile), "fingerprint", accesslog.Fingerprint(lk.key.Public().(ed25519.PublicKey)))
		}
	}
	a.alog = a.newAccessLog()
	a.hashKey = loadConfigHashKey(cfg.StateDir, a.log)
	return a, nil
}

// requestRestart stops Run, which then returns e (nil: returns nil).
func (a *Agent) requestRestart(stop context.CancelFunc) func(*RestartError) {
	return func(e *RestartError) {
		if e != nil {
			e.Mode = restartMode(a.cfg.Update.Restart, os.Getenv, runtime.GOOS)
			a.restartErr.Store(e)
		}
		stop()
	}
}

// NotAfter is when the agent's current certificate expires.
func (a *Agent) NotAfter() time.Time { return a.cert.Load().Leaf.NotAfter }

// certExpired returns a refusal when the agent's certificate has expired:
// no relay will accept it, and only a new enrolment helps.
func (a *Agent) certExpired() error {
	if na := a.NotAfter(); time.Now().After(na) {
		return protocol.Errorf(protocol.CodeCertExpired, "this agent's certificate expired at %s (it was offline longer than the certificate lived): enrol it again with a new join token (tether-agent enroll)", na.Format(time.RFC3339))
	}
	return nil
}

// logEgress says once, at start, how each relay is reached when a proxy is
// configured.
func (a *Agent) logEgress() {
	if err := a.egress.unusable; err != nil {
		// New refused it when a configured relay would go through it.
		a.log.Warn("ignoring the HTTP proxy of the environment: the agent cannot use it, and NO_PROXY (or no_proxy) exempts every configured relay from it", "variable", a.egress.source, "err", err)
	}
	if a.egress.proxy == nil {
		if a.cfg.ProxyCAFile != "" {
			a.log.Warn("proxy_ca_file is set, but the agent uses no proxy (proxy unset and no HTTPS_PROXY in its environment): it verifies nothing", "proxy_ca_file", a.cfg.ProxyCAFile)
		}
		return
	}
	if p := a.egress.proxy; p.Scheme == "http" && a.cfg.ProxyCAFile != "" {
		// Only the environment's proxy gets here: Validate refuses
		// proxy_ca_file with an http:// proxy key.
		a.log.Warn("proxy_ca_file is set, but the proxy of the environment is http://, to which the agent speaks no TLS: it verifies nothing", "proxy", p.Redacted(), "proxy_from", a.egress.source, "proxy_ca_file", a.cfg.ProxyCAFile)
	}
	if p := a.egress.proxy; p.Scheme == "http" && p.User != nil {
		a.log.Warn("the HTTP proxy's user name and password travel unencrypted to the proxy (Basic authentication over http://): use an https:// proxy URL if the proxy supports TLS", "proxy", p.Redacted(), "proxy_from", a.egress.source)
	}
	seen := map[string]bool{}
	for _, r := range a.cfg.Relays {
		if seen[r] {
			continue
		}
		seen[r] = true
		p := a.egress.forRelay(r)
		switch {
		case p == nil:
			a.log.Info("relay reached directly: exempt from the HTTP proxy (NO_PROXY, no_proxy or a loopback address)", "relay", r, "proxy", a.egress.proxy.Redacted(), "proxy_from", a.egress.source)
		case a.cfg.Transport == TransportAuto:
			a.log.Warn("QUIC is unavailable through an HTTP proxy: this relay is reached over TLS over TCP through the proxy", "relay", r, "proxy", p.Redacted(), "proxy_from", a.egress.source)
		default:
			a.log.Info("relay reached over TLS over TCP through an HTTP proxy", "relay", r, "proxy", p.Redacted(), "proxy_from", a.egress.source)
		}
	}
}

// quicPossible reports whether the agent may dial a configured relay over
// QUIC: not in transport tcp, nor when every one is reached through the
// HTTP proxy.
func (a *Agent) quicPossible() bool {
	if a.cfg.Transport == TransportTCP {
		return false
	}
	for _, r := range a.cfg.Relays {
		if a.egress.forRelay(r) == nil {
			return true
		}
	}
	return false
}

// logUDPBuffers learns what buffers the QUIC sockets get (quic-go dials
// from sockets of its own, so a probe socket stands in for them) and warns
// with what to do when they are small.
func (a *Agent) logUDPBuffers() {
	recv, send, err := quic.ProbeBuffers()
	quic.LogBuffers(a.log, recv, send, err)
}

// setLive records whether s is serving (and so can carry a renewal).
func (a *Agent) setLive(s *session, live bool) {
	a.liveMu.Lock()
	defer a.liveMu.Unlock()
	if live {
		a.live[s] = struct{}{}
	} else {
		delete(a.live, s)
	}
}

// ID returns the agent's id and tenant.
func (a *Agent) ID() (agentID, tenant string) { return a.state.AgentID, a.state.Tenant }

// Run keeps cfg.RelayConnections connections to relays until ctx is
// cancelled, each to a different relay of the cluster where the relays
// send its list (cluster.go). On cancellation each session tells the relay it is going away,
// waits up to DrainTimeout for its streams, and closes. Run returns only
// after every goroutine it started has exited; it returns nil after a
// cancellation. The access log is written from start to finish: its
// writer stops after the last stream has ended, so that a clean stop
// loses no line.
//
// When a relay refuses the agent's identity for good (revoked, unknown to
// it, certificate expired: finalRefusal), or the certificate has expired
// before Run starts, Run logs what to do and returns a *RefusedError.
func (a *Agent) Run(ctx context.Context) (err error) {
	if err := a.certExpired(); err != nil {
		e := a.refusedError(err)
		a.log.Error("this agent's certificate has expired: not starting", "code", e.Err.Code.String(), "err", e, "exit_status", ExitRefused)
		return e
	}
	a.log.Info("agent starting", "version", a.cfg.Version, "relays", a.cfg.Relays, "transport", a.cfg.Transport,
		"relay_connections", a.cfg.RelayConnections, "services", len(*a.services.Load()), "cert_not_after", a.NotAfter().Format(time.RFC3339))
	a.logEgress()
	if a.quicPossible() {
		a.logUDPBuffers()
	}
	if a.alog != nil {
		// The writer outlives ctx: streams that end while the sessions
		// drain are still logged. It stops when Run returns.
		a.alog.Open()
		logCtx, stopLog := context.WithCancel(context.WithoutCancel(ctx))
		var logWG sync.WaitGroup
		logWG.Go(func() { a.alog.Run(logCtx) })
		defer func() {
			stopLog()
			logWG.Wait()
		}()
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	upd, err := newUpdater(a, a.requestRestart(stop))
	if err != nil {
		return fmt.Errorf("self-update: %w", err)
	}
	a.upd = upd
	a.updState.Store(upd)
	upd.begin()
	if e := a.restartErr.Load(); e != nil {
		// begin brought the previous binary back: start it.
		return e
	}
	defer func() {
		// A stop or restart asked for, or a relay's final refusal, is a
		// clean stop; an error return is not, and counts at the next
		// start of a new version as a crash does (begin).
		if a.cfg.UpdateTrial == "" && (err == nil || errors.As(err, new(*RestartError)) || errors.As(err, new(*RefusedError))) {
			upd.stoppedCleanly()
		}
	}()
	var wg sync.WaitGroup
	// A trial of a new binary runs with the running agent's own config,
	// whose agent still holds these listeners' addresses: it opens
	// neither, or it would fail at once on an address in use and the new
	// version would be rolled back, and refused for good, for no fault of
	// its own.
	trial := a.cfg.UpdateTrial != ""
	if a.cfg.DebugListen != "" && !trial {
		if err := a.serveDebug(ctx, &wg); err != nil {
			return err
		}
	}
	if a.cfg.StatusListen != "" && !trial {
		if err := a.serveStatus(ctx, &wg); err != nil {
			return err
		}
	}
	refused := a.refusedBy(stop)
	for i := 0; i < a.cfg.RelayConnections; i++ {
		wg.Go(func() { a.runSlot(ctx, i, &wg, refused) })
	}
	wg.Go(func() { a.renewLoop(ctx) })
	if !a.cfg.NoFileWatch {
		wg.Go(func() { a.watchFiles(ctx) })
	}
	wg.Go(func() { upd.run(ctx) })
	if trial {
		wg.Go(func() { upd.watchTrial(ctx, stop) })
	}
	wg.Wait()
	if e := a.refused.Load(); e != nil {
		return e // logged by refusedBy
	}
	if e := a.restartErr.Load(); e != nil {
		a.log.Info("agent stopped to restart", "why", e.Why, "mode", e.Mode)
		return e
	}
	a.log.Info("agent stopped")
	return nil
}

// runSlot keeps one connection up: connect, serve until the session ends,
// back off, repeat. Where it connects is the relay view's choice (a relay
// of the cluster's list no other slot holds: cluster.go); without a list,
// a slot starts on configured relay i (mod their number) and moves to the
// next after a failure. Sessions that drain after a relay's GoAway, or
// that the slot left for another relay, finish on wg while the slot goes
// on. A refusal that no retry can fix (finalRefusal) goes to refused,
// which stops the agent, and ends the slot.
func (a *Agent) runSlot(ctx context.Context, slot int, wg *sync.WaitGroup, refused func(error)) {
	v := a.view
	defer v.release(slot)
	cfgIdx := slot
	failures := 0
	busy := 0 // refusals for being busy in a row
	log := a.log.With("slot", slot)
	// hold, when not nil, keeps a session whose relay is leaving open
	// until this slot holds a connection elsewhere.
	var hold chan struct{}
	releaseHold := func() {
		if hold != nil {
			close(hold)
			hold = nil
		}
	}
	defer releaseHold()
	if slot > 0 && len(a.cfg.Relays) == 1 {
		// One configured address, likely a name shared by the relays of
		// a cluster: the first connection's relay may send the list, and
		// then this slot goes to another relay of it at once rather than
		// land, perhaps, on the same one.
		v.waitReady(ctx, firstWait)
	}
	for ctx.Err() == nil {
		tgt, listed := v.pick(slot)
		if !listed {
			tgt = target{addr: a.cfg.Relays[cfgIdx%len(a.cfg.Relays)]}
			v.claim(slot, tgt)
		}
		a.slots.set(slot, tgt.addr, StateConnecting, nil, nil)
		s, err := a.connect(ctx, tgt.addr, log)
		if err != nil {
			v.failed(slot, tgt)
			if ctx.Err() != nil {
				return
			}
			if isRelayRefused(err) {
				// Logged once by the guard; the slot picks another at
				// once.
				v.refuse(tgt)
				continue
			}
			if finalRefusal(err) {
				refused(err)
				return
			}
			if !listed {
				cfgIdx++
			}
			var d time.Duration
			if isRelayBusy(err) {
				// The relay turned this handshake away at its door
				// because too many were in progress (a fleet reconnecting
				// after a restart). A refusal costs it one packet, and it
				// frees slots quickly, so retry soon — at a random point
				// of a short window that spreads the fleet — rather than
				// climb the reconnect backoff. Each refusal in a row
				// doubles the window (up to the backoff's maximum): a
				// relay still busy after several tries has more agents
				// waiting than it can take, and every try costs the agent
				// a fresh key exchange.
				busy++
				d = rand.N(busyWindow(busy, a.cfg.Reconnect.Max) + 1)
			} else {
				busy = 0
				failures++
				d = a.cfg.Reconnect.delay(failures - 1)
			}
			if isPermanent(err) {
				// Retrying soon cannot help (our certificate or our
				// version is refused); keep trying, slowly, in case the
				// operator fixes the relay side.
				d = a.cfg.Reconnect.Max/2 + rand.N(a.cfg.Reconnect.Max/2+1)
			}
			logConnectError(log, tgt.addr, err, d)
			a.slots.set(slot, tgt.addr, StateRetrying, nil, err)
			if !sleep(ctx, d) {
				return
			}
			continue
		}
		busy = 0
		s.relayID = cmp.Or(s.relayID, tgt.id)
		v.connected(slot, s, s.sendsList())
		releaseHold()
		for s != nil {
			started := time.Now()
			a.slots.set(slot, s.relay, StateConnected, s, nil)
			a.setLive(s, true)
			why := a.serveSlot(ctx, slot, s)
			a.setLive(s, false)
			if time.Since(started) > 30*time.Second {
				failures = 0
			}
			switch why {
			case endUpgrade:
				// QUIC works again: new streams go to the QUIC session;
				// the TCP one tells the relay it is going away and drains.
				old := s
				s = old.next
				s.relayID = cmp.Or(s.relayID, old.relayID)
				until := time.Now().Add(a.cfg.DrainTimeout)
				wg.Go(func() {
					old.goAway(protocol.GoAwayUpgrade, "moving to QUIC")
					old.drainAndClose(ctx, until, nil)
				})
				v.connected(slot, s, s.sendsList())
				s.log.Info("connected to relay", "transport_why", s.why, "relay_version", s.welcome.RelayVersion)
			case endMove:
				// This slot holds a connection to another relay now (the
				// old one drains, has left the list, or another slot is on
				// it): new streams go there; the old session tells its
				// relay it is going away and keeps the streams in flight
				// until they end — until the relay's drain deadline if it
				// drains, at most an hour.
				old := s
				s = old.next
				until := time.Now().Add(protocol.MaxGoAwayDrain)
				wg.Go(func() {
					old.goAway(protocol.GoAwayMoving, "this agent holds a connection to another relay of the cluster now")
					old.drainAndClose(ctx, until, nil)
				})
				v.connected(slot, s, s.sendsList())
				old.log.Info("left this relay for another; its streams in flight finish here", "to", s.relay, "to_relay_id", s.relayID, "streams", old.open.Load())
			case endGoAway:
				// The relay asked us to leave: in-flight streams finish on
				// the old session — until the relay's drain deadline when
				// its GoAway gave one — while we connect again at once
				// (after a small jitter, so a fleet does not reconnect in
				// lockstep). A relay that is leaving the cluster is
				// passed over, and its session stays open until this slot
				// holds a connection elsewhere.
				old := s
				until := old.drainDeadline()
				var h chan struct{}
				if old.goawayReason == protocol.GoAwayLeaving {
					v.leavingRelay(old.relayID, until)
					releaseHold()
					hold = make(chan struct{})
					h = hold
				}
				wg.Go(func() { old.drainAndClose(ctx, until, h) })
				v.release(slot)
				s = nil
				if !sleep(ctx, rand.N(500*time.Millisecond)) {
					return
				}
			case endShutdown:
				s.drainAndClose(ctx, time.Now().Add(a.cfg.DrainTimeout), nil)
				return
			default:
				s.close()
				v.failed(slot, target{id: s.relayID, addr: s.relay})
				failures++
				d := a.cfg.Reconnect.delay(failures - 1)
				log.Warn("connection to relay lost; reconnecting", "relay", s.relay, "relay_id", s.relayID, "transport", s.transport, "reason", s.endErr(), "retry_in", d.Round(time.Millisecond))
				a.slots.set(slot, s.relay, StateRetrying, nil, s.endErr())
				if !sleep(ctx, d) {
					return
				}
				s = nil
			}
		}
	}
}

// serveSlot serves s for slot and, meanwhile, watches whether the slot
// should move to another relay of the cluster (moveWatch).
func (a *Agent) serveSlot(ctx context.Context, slot int, s *session) endReason {
	mctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { a.moveWatch(mctx, slot, s) })
	why := s.serve(ctx)
	stop()
	wg.Wait()
	return why
}

// moveWatch moves slot, connected through s, to another relay when the
// relay view says it should (its relay drains or left the list, or it
// shares its relay with a lower slot while another relay has none of the
// agent's connections): it connects to the new relay first and then hands
// the new session to s.serve, which ends with endMove. It returns when
// ctx is done or the move is handed over.
func (a *Agent) moveWatch(ctx context.Context, slot int, s *session) {
	v := a.view
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		changed := v.changes()
		tgt, why, at, ok := v.moveTarget(slot)
		if ok {
			s.log.Info("moving this connection to another relay", "why", why, "to", tgt.addr, "to_relay_id", tgt.id)
			ns, err := a.connect(ctx, tgt.addr, s.baseLog)
			if err == nil {
				ns.relayID = cmp.Or(ns.relayID, tgt.id)
				if ns.relayID == s.relayID {
					err = fmt.Errorf("the address %s of relay %s leads to relay %s, where this connection is already", tgt.addr, tgt.id, ns.relayID)
					ns.close()
				}
			}
			if err != nil {
				v.moveDone(slot, tgt, true)
				if ctx.Err() != nil {
					return
				}
				if isRelayRefused(err) {
					v.refuse(tgt) // logged once by the guard
					continue
				}
				s.log.Warn("cannot move this connection to another relay; staying", "to", tgt.addr, "err", err)
				continue
			}
			select {
			case s.moveTo <- ns:
				return // runSlot records the move
			case <-ctx.Done():
				ns.close()
				v.moveDone(slot, tgt, false)
				return
			}
		}
		if !at.IsZero() {
			retry.Reset(time.Until(at))
		}
		select {
		case <-changed:
		case <-retry.C:
		case <-ctx.Done():
			return
		}
		retry.Stop()
	}
}

// busyRetryWindow bounds the wait after a relay refused a handshake for
// being busy; it doubles with each refusal in a row (busyWindow).
const busyRetryWindow = 5 * time.Second

// busyWindow is the window of the random wait after the n-th refusal in a
// row (n ≥ 1) for being busy: busyRetryWindow doubled n-1 times, at most
// limit.
func busyWindow(n int, limit time.Duration) time.Duration {
	w := busyRetryWindow
	for i := 1; i < n && w < limit; i++ {
		w *= 2
	}
	return min(w, limit)
}

// delay returns the wait before attempt n (0-based): full jitter over an
// exponentially growing cap.
func (b Backoff) delay(n int) time.Duration {
	ceil := b.Max
	if n < 30 {
		if c := b.Initial << n; c > 0 && c < ceil {
			ceil = c
		}
	}
	if ceil <= 0 {
		return 0
	}
	return rand.N(ceil + 1)
}

// sleep waits d or until ctx is done; it reports whether the wait completed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
