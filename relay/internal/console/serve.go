package console

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/throttle"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// Config configures the admin listener.
type Config struct {
	// Listen is the address of the admin listener (HTTPS).
	Listen string
	// CertFile and KeyFile are its certificate and key (PEM), read again
	// when they change; empty: the relay's own certificate (tlsSrv).
	CertFile, KeyFile string
	// SessionTTL bounds browser sessions opened at /login (never beyond
	// the operator token's expiry).
	SessionTTL time.Duration
	// HandshakeTimeout bounds reading a request's headers.
	HandshakeTimeout time.Duration
	// SSO lets people sign in with OpenID Connect (sso.go); the zero
	// value has it off.
	SSO SSOConfig
	// SSOClient is the HTTP client for the identity providers; nil: one
	// with 10 s timeouts that honours HTTPS_PROXY.
	SSOClient *http.Client
	// Throttle tunes the throttling of failed authentication per source
	// and per identity (authlimit.go); zero fields take throttle's
	// defaults: a burst of 10, then one attempt every 5 s.
	Throttle throttle.Config
	// AuthAuditInterval is how long failed authentications are summed
	// per door, source and reason before their audit record is written
	// (the first of each is written at once), and an operator's refusals
	// by its scope beyond ScopeRefusals' burst alike. Default 1m.
	AuthAuditInterval time.Duration
	// ScopeRefusals tunes how many refusals by its scope of one operator
	// are audited one by one (authlimit.go): zero fields take a burst of
	// 20, then one every 5 s; beyond, they are summed per operator and
	// outcome over AuthAuditInterval.
	ScopeRefusals throttle.Config
	// Limits bounds the connections the listener holds open per source
	// address, per source network and in all (throttle.LimitListener);
	// zero fields take DefaultLimits'.
	Limits throttle.ListenerLimits
	// Refused, when set, is told the reason of each connection the
	// listener closed at accept for being beyond Limits.
	Refused func(reason string)
	// AuthRefusals, when set, counts failed and throttled
	// authentications by door and reason (throttle.NewRefusals).
	AuthRefusals *prometheus.CounterVec
	// Relay is the running relay's history, health and addresses, for
	// the dashboard's charts, health panel and install commands; nil
	// leaves them out.
	Relay  Relay
	Logger *slog.Logger
	Now    func() time.Time
}

// DefaultLimits are the admin listener's bounds on connections held open
// (Config.Limits): 64 from one address, 256 from one network, 512 in all.
// A browser holds up to 6 connections to the console, and tetherctl one
// per command, so one address (often a NAT or proxy in front of a team)
// has room for about ten people at once; the total bounds what the
// listener can take of the relay's file descriptors, which the agent
// port and the front doors need.
func DefaultLimits() throttle.ListenerLimits {
	return throttle.ListenerLimits{PerAddress: 64, PerNetwork: 256, Total: 512}
}

// shutdownGrace is how long requests in progress get to finish when Run's
// context ends.
const shutdownGrace = 5 * time.Second

// New binds the admin listener (TLS) on cfg.Listen; adm performs what it is
// asked, tlsSrv provides the relay's certificate. Call Run, or Close if Run
// will not be called.
func New(cfg Config, adm *admin.Admin, tlsSrv *trust.Server) (*Server, error) {
	if cfg.AuthAuditInterval <= 0 {
		cfg.AuthAuditInterval = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Limits = cfg.Limits.Or(DefaultLimits())
	if cfg.Throttle.Now == nil {
		cfg.Throttle.Now = cfg.Now
	}
	if cfg.ScopeRefusals.Burst <= 0 {
		cfg.ScopeRefusals.Burst = defaultScopeRefusalBurst
	}
	if cfg.ScopeRefusals.Now == nil {
		cfg.ScopeRefusals.Now = cfg.Now
	}
	sso, err := newSSOFlow(cfg.SSO, cfg.SSOClient, cfg.Logger, cfg.Now)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, adm: adm, sso: sso, guard: newAuthGuard(cfg, adm)}
	var tc *tls.Config
	if cfg.CertFile != "" {
		cf, err := trust.LoadCertFile(cfg.CertFile, cfg.KeyFile, cfg.Logger, cfg.Now)
		if err != nil {
			return nil, fmt.Errorf("admin certificate: %w", err)
		}
		s.cert = cf
	}
	tc = tlsSrv.Admin(s.cert)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	s.ln = tls.NewListener(throttle.LimitListener(ln, cfg.Limits, cfg.Refused), tc)
	return s, nil
}

// Addr is the admin listener's address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// CertReloads is how many times the certificate from files was replaced.
func (s *Server) CertReloads() int64 {
	if s.cert == nil {
		return 0
	}
	return s.cert.Reloads()
}

// Close releases a server whose Run was never called.
func (s *Server) Close() error { return s.ln.Close() }

// Run serves until ctx ends, then gives requests in progress a few seconds
// to finish, and returns once every goroutine it started has exited. It
// returns an error only when the listener fails.
func (s *Server) Run(ctx context.Context) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.cfg.HandshakeTimeout,
		ReadTimeout:       time.Minute,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       time.Minute, // a person reading a page; the next click makes a new connection
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug), // TLS handshake failures and the like
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	var wg sync.WaitGroup
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer func() {
		stopWatch()
		wg.Wait()
	}()
	if s.cert != nil {
		wg.Go(func() { s.cert.Watch(watchCtx) })
	}
	// The guard outlives the listener by its last flush: every refusal
	// is audited.
	guardCtx, stopGuard := context.WithCancel(context.WithoutCancel(ctx))
	guarded := make(chan struct{})
	go func() {
		defer close(guarded)
		s.guard.run(guardCtx)
	}()
	defer func() {
		stopGuard()
		<-guarded
	}()
	served := make(chan error, 1)
	wg.Go(func() { served <- srv.Serve(s.ln) })
	select {
	case err := <-served:
		return fmt.Errorf("admin listener: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-served
	return nil
}
