// Package frontdoor is where SaaS backends come in: the SOCKS5 door, the
// HTTP CONNECT door and CONNECT over TLS (which also serve plain HTTP
// proxy requests for http:// URLs), the relay-side forwards (listeners
// bound by an operator to one service and one backend), the
// authentication of backends
// (API keys, client certificates, OIDC bearer tokens), the authorization
// of each stream (grants and the tenant's limits), and the bridge that
// copies bytes between a backend's connection and the tunnel, auditing
// every stream and every refusal.
package frontdoor

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/metrics"
	"github.com/tetherhq/tether/relay/internal/policy"
	"github.com/tetherhq/tether/relay/internal/route"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/streammem"
	"github.com/tetherhq/tether/relay/internal/throttle"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// Config configures the front doors. An empty listen address leaves that
// door off.
type Config struct {
	SOCKSListen, ConnectListen, ConnectTLSListen string
	// HandshakeTimeout bounds a door's handshake (SOCKS5 greeting, CONNECT
	// request, TLS); StreamOpenTimeout the stream open behind it;
	// IdleTimeout closes tunnels idle in both directions.
	HandshakeTimeout, StreamOpenTimeout, IdleTimeout time.Duration
	// MaxPendingPerAddress and MaxPendingPerNetwork bound the connections
	// not yet authenticated (at a forward: whose stream is not open yet)
	// from one source address and network.
	MaxPendingPerAddress, MaxPendingPerNetwork int
	// Memory caps what the open tunnels may make the relay hold at their
	// worst case, shared with the streams the relay holds for other
	// relays of the cluster (peer.Server); a stream past it is refused
	// with unavailable. nil: no cap.
	Memory *streammem.Budget
	// OIDC, with an Issuer, accepts bearer tokens from that issuer;
	// JWKSCacheFile keeps its keys across restarts.
	OIDC          OIDCConfig
	JWKSCacheFile string
	// Throttle tunes the throttling of failed authentication per source
	// and per identity claimed (authlimit.go); the zero value is the
	// throttle package's defaults (10 failures, then one every 5s).
	Throttle throttle.Config
	// AuthAuditInterval is how long refused authentications are summed
	// before their audit record is written. Default 1 minute.
	AuthAuditInterval time.Duration
	// BackendCacheTTL is how long a backend's credential read from the
	// store is used before it is read again. Default 1 minute.
	BackendCacheTTL time.Duration
	// Outage, when set, reports whether the relay serves from what it
	// last read because its store is down for every relay it can ask
	// (relay.Config.StoreOutageGrace). Meanwhile the doors' store reads
	// are bounded by outageLookup, and a backend whose read fails because
	// the store is unreachable is authenticated from its credential last
	// read, however old (never one the store said does not exist, nor one
	// the change feed said changed), and a tenant that cannot be read
	// is taken to exist (its grant names it: routing finds its agents,
	// or answers no_agent).
	Outage func() bool

	Router    *route.Router
	Routes    *route.Table
	Store     *store.Store
	Policy    *policy.Policy
	Authority *trust.Authority
	TLS       *trust.Server
	Audit     *audit.Log
	Metrics   *metrics.Metrics
	// Fatal is told when a door's listener fails (the relay then shuts
	// down).
	Fatal  func(error)
	Logger *slog.Logger
	Now    func() time.Time
}

// Server is the front doors.
type Server struct {
	cfg      Config
	log      *slog.Logger
	backends backendCache
	bearer   *bearerAuth  // nil unless an OIDC issuer is configured
	oidc     *http.Client // fetches the issuer's keys
	src      *throttle.Sources
	guard    *authGuard  // throttling, logging and auditing of refused credentials (authlimit.go)
	front    *connSet    // open front-door connections, closed at shutdown
	shares   *copyShares // each tenant's copy slots (fairshare.go)

	socksLn, connectLn, connectTLSLn net.Listener
	proxy                            *httpProxy                  // plain HTTP proxy requests at the CONNECT doors
	mu                               sync.Mutex                  // guards connectSrvs, forwards and stopped
	connectSrvs                      []*http.Server              // the CONNECT doors' servers, once Run started them
	forwards                         map[string]*forwardListener // by Forward.Listen
	stopped                          bool                        // StopAccepting was called
	stop                             chan struct{}               // closed by StopAccepting
	forwardsChanged                  chan struct{}               // SetForwards added a listener (capacity 1)
	handlers                         sync.WaitGroup              // CONNECT handlers: a tunnel outlives the http.Server's tracking of its hijacked connection
	stopping                         sync.WaitGroup              // the CONNECT servers' shutdowns (StopAccepting)

	// LimitRefusals counts stream opens refused by a tenant limit;
	// SourceLimited connections closed for the bound per source.
	LimitRefusals, SourceLimited atomic.Int64
}

// New binds the doors of cfg. Call Run, or Close if Run will not be
// called.
func New(cfg Config) (*Server, error) {
	fd := &Server{cfg: cfg, log: cfg.Logger, front: newConnSet(), guard: newAuthGuard(cfg), shares: newCopyShares(),
		src:  throttle.NewSources(cfg.MaxPendingPerAddress, cfg.MaxPendingPerNetwork),
		stop: make(chan struct{}), forwardsChanged: make(chan struct{}, 1)}
	fd.proxy = newHTTPProxy(fd)
	fd.backends.ttl = cfg.BackendCacheTTL
	fd.backends.stale = func(err error) bool { return fd.outage() && cfg.Store.Unreachable(err) }
	if cfg.OIDC.Issuer != "" {
		fd.oidc = &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, TLSHandshakeTimeout: keyFetchTimeout, ResponseHeaderTimeout: keyFetchTimeout}}
		fd.bearer = newBearerAuth(cfg.OIDC, cfg.JWKSCacheFile, cfg.Now, fd.oidc)
	}
	var err error
	if cfg.SOCKSListen != "" {
		if fd.socksLn, err = listenDoor(cfg.SOCKSListen, "SOCKS5 front door"); err != nil {
			fd.Close()
			return nil, err
		}
	}
	if cfg.ConnectListen != "" {
		if fd.connectLn, err = listenDoor(cfg.ConnectListen, "CONNECT front door"); err != nil {
			fd.Close()
			return nil, err
		}
	}
	if cfg.ConnectTLSListen != "" {
		ln, err := listenDoor(cfg.ConnectTLSListen, "CONNECT front door (TLS)")
		if err != nil {
			fd.Close()
			return nil, err
		}
		fd.connectTLSLn = tls.NewListener(ln, cfg.TLS.Front())
	}
	fd.warnPlaintextDoors()
	return fd, nil
}

// warnPlaintextDoors warns about each plain-text front door that listens
// beyond loopback: API keys and bearer tokens cross it in the clear.
func (fd *Server) warnPlaintextDoors() {
	for _, d := range []struct{ door, key, addr string }{
		{"SOCKS5", "socks_listen", fd.cfg.SOCKSListen},
		{"HTTP CONNECT", "connect_listen", fd.cfg.ConnectListen},
	} {
		if d.addr == "" || IsLoopback(d.addr) {
			continue
		}
		fd.log.Warn("a plain-text front door listens beyond loopback: backends' API keys and bearer tokens cross the network in the clear; "+
			"across hosts, give backends the TLS door (connect_tls_listen) and keep this one on loopback", "door", d.door, "listen", d.addr, "setting", d.key)
	}
}

func addrOf(l net.Listener) net.Addr {
	if l == nil {
		return nil
	}
	return l.Addr()
}

// SOCKSAddr, ConnectAddr and ConnectTLSAddr are the doors' addresses, nil
// for a door that is off.
func (fd *Server) SOCKSAddr() net.Addr      { return addrOf(fd.socksLn) }
func (fd *Server) ConnectAddr() net.Addr    { return addrOf(fd.connectLn) }
func (fd *Server) ConnectTLSAddr() net.Addr { return addrOf(fd.connectTLSLn) }

// Open is how many backend connections are open at the doors.
func (fd *Server) Open() int { return fd.front.len() }

// Unauthenticated reports how many source addresses have front-door
// connections that have not yet authenticated.
func (fd *Server) Unauthenticated() int { return fd.src.Held() }

// Forget drops a backend's cached credential (it changed).
func (fd *Server) Forget(backend string) { fd.backends.forget(backend) }

// ReloadBackends reads every backend's credential again, in place of
// those held, when the relay reads its whole state again (it may have
// missed changes). When that fails, those held are read again at their
// next use; while the store cannot be reached they are kept for that
// read's failure (Config.Outage: the store may be down for every
// relay), otherwise forgotten.
func (fd *Server) ReloadBackends(ctx context.Context) error {
	fd.backends.expireAll() // read again as they are used meanwhile
	filled, err := fd.loadBackends(ctx)
	if !filled && (err == nil || !fd.cfg.Store.Unreachable(err)) {
		fd.backends.forgetAll()
	}
	return err
}

// LoadBackends reads every backend's credential into memory, in place of
// those held: the relay calls it as it starts (and ReloadBackends when
// it reads its whole state again), and the change feed keeps them
// current (Forget). Authentication then reads the store only for a
// credential older than a minute, or a name the relay does not hold; a
// source throttled for failed attempts has a name the relay does not
// hold refused without a read (authenticate), so that every registered
// backend's valid key works from it. A change told by the feed while it
// read leaves the credentials to be read as they are used.
func (fd *Server) LoadBackends(ctx context.Context) error {
	_, err := fd.loadBackends(ctx)
	return err
}

// loadBackends is LoadBackends; filled reports whether what it read
// replaced what the cache held (no backend was forgotten meanwhile).
func (fd *Server) loadBackends(ctx context.Context) (filled bool, _ error) {
	fd.backends.mu.Lock()
	gen := fd.backends.gen
	fd.backends.mu.Unlock()
	start := time.Now()
	bs, err := fd.cfg.Store.BackendCredentials(ctx)
	if fd.cfg.Metrics != nil {
		fd.cfg.Metrics.StoreOp("backend_lookup", start)
	}
	if err != nil {
		return false, fmt.Errorf("read backends: %w", err)
	}
	return fd.backends.fill(gen, bs), nil
}

// Close releases the listeners of a server whose Run was never called.
func (fd *Server) Close() {
	for _, l := range []net.Listener{fd.socksLn, fd.connectLn, fd.connectTLSLn} {
		if l != nil {
			l.Close()
		}
	}
	fd.mu.Lock()
	defer fd.mu.Unlock()
	fd.closeForwardsLocked()
}

// Run serves the doors until StopAccepting; the streams opened through
// them use ctx, which the relay keeps alive while it drains. A door whose
// listener fails is reported to Config.Fatal. Run returns once every
// connection has ended (Drain, CloseAll) and every goroutine it started
// has exited.
func (fd *Server) Run(ctx context.Context) error {
	// The guard writes its last sums once every connection has ended.
	guardCtx, stopGuard := context.WithCancel(context.WithoutCancel(ctx))
	var guardWG sync.WaitGroup
	guardWG.Go(func() { fd.guard.run(guardCtx) })
	defer guardWG.Wait()
	defer stopGuard()
	var wg sync.WaitGroup
	fatal := func(err error) {
		if err != nil && fd.cfg.Fatal != nil {
			fd.cfg.Fatal(err)
		}
	}
	if fd.socksLn != nil {
		wg.Go(func() { fatal(fd.acceptSOCKS(ctx, &wg)) })
	}
	wg.Go(func() { fd.runForwards(ctx, &wg) })
	for _, ln := range []net.Listener{fd.connectLn, fd.connectTLSLn} {
		if ln == nil {
			continue
		}
		srv := fd.connectServer(ctx)
		fd.mu.Lock()
		if fd.stopped {
			// StopAccepting came first: the server is closed before it
			// serves, and Serve returns at once.
			srv.Close()
		}
		fd.connectSrvs = append(fd.connectSrvs, srv)
		fd.mu.Unlock()
		fl := frontListener{Listener: ln, fd: fd, tlsDoor: ln == fd.connectTLSLn, deadline: fd.cfg.HandshakeTimeout}
		wg.Go(func() {
			err := srv.Serve(fl)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			fatal(err)
		})
	}
	wg.Wait()
	fd.stopping.Wait()
	fd.handlers.Wait()
	fd.proxy.close()
	if fd.oidc != nil {
		fd.oidc.CloseIdleConnections()
	}
	return nil
}

// StopAccepting closes the doors and the forwards; open tunnels go on. It returns at once:
// CONNECT requests still choosing an agent finish on their own, within
// the stream-open timeout (Run waits for them).
func (fd *Server) StopAccepting(ctx context.Context, drain time.Duration) {
	if fd.socksLn != nil {
		fd.socksLn.Close()
	}
	fd.mu.Lock()
	defer fd.mu.Unlock()
	if !fd.stopped {
		close(fd.stop)
	}
	fd.stopped = true
	fd.closeForwardsLocked()
	for _, srv := range fd.connectSrvs {
		fd.stopping.Go(func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drain+fd.cfg.StreamOpenTimeout)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				fd.log.Warn("CONNECT front door: handlers still running at shutdown", "err", err)
				srv.Close()
			}
		})
	}
}

// Drain waits up to d for the open tunnels to end and reports whether
// they did.
func (fd *Server) Drain(d time.Duration) bool { return fd.front.waitEmpty(d) }

// CloseAll closes the connections still open.
func (fd *Server) CloseAll() { fd.front.closeAll() }
