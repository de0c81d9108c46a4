// Package agent is Tether's connector. It runs inside a tenant's network,
// dials out to the relay (QUIC first, TLS over TCP when UDP is blocked),
// and serves the streams the relay opens: each names a service, which the
// agent looks up in its own allowlist, dials, and splices. Nothing inbound is
// ever opened on the tenant side.
package agent

import (
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
	// configErr is the last config file problem seen by the watcher.
	configErr atomic.Pointer[string]

	liveMu sync.Mutex            // guards live
	live   map[*session]struct{} // sessions serving now

	egress *egress // which relays are reached through an HTTP proxy

	fbMu     sync.Mutex           // guards fallback
	fallback map[string]time.Time // relay → time until which auto mode uses TCP

	bootID string // random per process; lets the relay drop a dead predecessor's sessions

	streamsOpen  atomic.Int64
	streamsTotal atomic.Uint64

	upd        *updater                     // self-update (update.go)
	restartErr atomic.Pointer[RestartError] // set when Run stops to restart
	refused    atomic.Pointer[RefusedError] // set when Run stops after a final refusal (refused.go)
	rep        *reporter                    // bytes, dial failures and change notices for reports (report.go)
	slots      slotTracker                  // what each connection slot is doing, for the status listener (status.go)
	alog       *accesslog.Log               // the access log; nil when disabled (accesslog.go)
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
	if cfg.Transport == TransportQUIC {
		for _, r := range cfg.Relays {
			if p := eg.forRelay(r); p != nil {
				return nil, fmt.Errorf("agent config: transport quic, but relay %s is reached through the HTTP proxy %s (from %s) and QUIC is unavailable through an HTTP proxy: use transport auto or tcp, exempt the relay with NO_PROXY, or set proxy: direct", r, p.Redacted(), eg.source)
			}
		}
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
	a.cert.Store(&st.Cert)
	a.certAt.Store(time.Now().UnixNano())
	a.roots.Store(st.Roots)
	a.rootList.Store(&st.RootCerts)
	svcs := cfg.Services
	if svcs == nil {
		svcs = map[string]Service{}
	}
	a.services.Store(&svcs)
	a.alog = a.newAccessLog()
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
	if a.egress.proxy == nil {
		return
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

// Run keeps cfg.Connections connections to the relays until ctx is
// cancelled. On cancellation each session tells the relay it is going away,
// waits up to DrainTimeout for its streams, and closes. Run returns only
// after every goroutine it started has exited; it returns nil after a
// cancellation. The access log is written from start to finish: its
// writer stops after the last stream has ended, so that a clean stop
// loses no line.
//
// When a relay refuses the agent's identity for good (revoked, unknown to
// it, certificate expired: finalRefusal), or the certificate has expired
// before Run starts, Run logs what to do and returns a *RefusedError.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.certExpired(); err != nil {
		e := a.refusedError(err)
		a.log.Error("this agent's certificate has expired: not starting", "code", e.Err.Code.String(), "err", e, "exit_status", ExitRefused)
		return e
	}
	a.log.Info("agent starting", "version", a.cfg.Version, "relays", a.cfg.Relays, "transport", a.cfg.Transport,
		"connections", a.cfg.Connections, "services", len(*a.services.Load()), "cert_not_after", a.NotAfter().Format(time.RFC3339))
	a.logEgress()
	if a.cfg.Transport != TransportTCP {
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
	var wg sync.WaitGroup
	if a.cfg.DebugListen != "" {
		if err := a.serveDebug(ctx, &wg); err != nil {
			return err
		}
	}
	if a.cfg.StatusListen != "" {
		if err := a.serveStatus(ctx, &wg); err != nil {
			return err
		}
	}
	refused := a.refusedBy(stop)
	for i := 0; i < a.cfg.Connections; i++ {
		wg.Go(func() { a.runSlot(ctx, i, &wg, refused) })
	}
	wg.Go(func() { a.renewLoop(ctx) })
	if !a.cfg.NoFileWatch {
		wg.Go(func() { a.watchFiles(ctx) })
	}
	wg.Go(func() { upd.run(ctx) })
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
// back off, repeat. A slot starts on relay i (mod the number of relays) and
// moves to the next relay after a failure. Sessions that drain after a
// relay's GoAway finish on wg while the slot reconnects. A refusal that no
// retry can fix (finalRefusal) goes to refused, which stops the agent, and
// ends the slot.
func (a *Agent) runSlot(ctx context.Context, slot int, wg *sync.WaitGroup, refused func(error)) {
	relayIdx := slot
	failures := 0
	busy := 0 // refusals for being busy in a row
	log := a.log.With("slot", slot)
	for ctx.Err() == nil {
		relay := a.cfg.Relays[relayIdx%len(a.cfg.Relays)]
		a.slots.set(slot, relay, StateConnecting, nil, nil)
		s, err := a.connect(ctx, relay, log)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if finalRefusal(err) {
				refused(err)
				return
			}
			relayIdx++
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
			logConnectError(log, relay, err, d)
			a.slots.set(slot, relay, StateRetrying, nil, err)
			if !sleep(ctx, d) {
				return
			}
			continue
		}
		busy = 0
		for s != nil {
			started := time.Now()
			a.slots.set(slot, s.relay, StateConnected, s, nil)
			a.setLive(s, true)
			why := s.serve(ctx)
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
				if err := old.send(&protocol.GoAway{Reason: "upgrade", Message: "moving to QUIC"}); err != nil {
					old.log.Debug("send goaway", "err", err)
				}
				until := time.Now().Add(a.cfg.DrainTimeout)
				wg.Go(func() { old.drainAndClose(ctx, until) })
				s.log.Info("connected to relay", "transport_why", s.why, "relay_version", s.welcome.RelayVersion)
			case endGoAway:
				// The relay asked us to leave: in-flight streams finish on
				// the old session — until the relay's drain deadline when
				// its GoAway gave one — while we connect again at once
				// (after a small jitter, so a fleet does not reconnect in
				// lockstep).
				old := s
				until := old.drainDeadline()
				wg.Go(func() { old.drainAndClose(ctx, until) })
				s = nil
				if !sleep(ctx, rand.N(500*time.Millisecond)) {
					return
				}
			case endShutdown:
				s.drainAndClose(ctx, time.Now().Add(a.cfg.DrainTimeout))
				return
			default:
				s.close()
				failures++
				d := a.cfg.Reconnect.delay(failures - 1)
				log.Warn("connection to relay lost; reconnecting", "relay", relay, "transport", s.transport, "reason", s.endErr(), "retry_in", d.Round(time.Millisecond))
				a.slots.set(slot, relay, StateRetrying, nil, s.endErr())
				if !sleep(ctx, d) {
					return
				}
				s = nil
			}
		}
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
