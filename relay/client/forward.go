package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tetherhq/tether/protocol/transport"
)

// Forward is a local port-forward through the relay, like kubectl
// port-forward: it listens on a local TCP address and turns every
// connection accepted there into a connection to one tenant service
// through the relay (a CONNECT request per connection), copying bytes
// both ways, with half-close, until both sides are done. Programs that
// speak no proxy protocol (psql, pg_dump, JDBC drivers, DBeaver, …) then
// reach the tenant service at a local address:
//
//	f := &client.Forward{Dialer: d, Target: "db.acme.tether:5432", Listen: "5432"}
//	err := f.Run(ctx) // psql -h 127.0.0.1 -p 5432 … until ctx ends
//
// A connection the relay refuses (no grant, no agent connected, …) is
// closed, and the refusal logged with its code and the relay's request id.
// The forward itself never gives up: while the relay is unreachable each
// new local connection waits for it at most RelayWait and is then closed,
// and connections accepted once the relay is back are served as usual.
//
// Zero values of the optional fields pick the documented defaults; a
// Forward must not be changed while it serves.
type Forward struct {
	// Dialer reaches the relay and holds the backend's credential.
	// Required.
	Dialer *Dialer
	// Target is the tenant service, "<service>.<tenant>.tether:<port>"
	// (the port is ignored by the relay). Required.
	Target string
	// Listen is the local address for Run: "PORT", ":PORT" or
	// "HOST:PORT"; a missing host is 127.0.0.1, so only this machine
	// can use the forward (anyone who can connect to it reaches the
	// service with the backend's rights). Port 0 picks a free port.
	// Serve takes a listener instead.
	Listen string
	// Logger receives a line when the forward starts and for every
	// connection refused or failed (at most a few a second, with a count
	// of those left out); per-connection success lines are Debug. Nil
	// discards.
	Logger *slog.Logger

	// RelayWait bounds how long a new local connection waits for a relay
	// it cannot reach (connection refused, reset, no route, a dial that
	// does not complete): the dial is retried with backoff until then,
	// and the local connection is closed when it runs out. Default 10s.
	// Once the relay has the request, its answer is bounded by the
	// Dialer's Timeout (default 30s; the relay answers by itself within
	// its stream-open timeout, 15s by default).
	RelayWait time.Duration
	// Spares is how many connections to the relay are kept ready, TCP
	// connected and TLS handshake done, so that a new local connection
	// pays only for its CONNECT request. Default 2; negative: none.
	Spares int
	// SpareMaxAge is how long a spare may wait unused before it is
	// closed (and replaced while the forward is in use): relays close a
	// connection that sends no request within their handshake timeout,
	// 10s by default. Default 5s.
	SpareMaxAge time.Duration
	// KeepWarm is how long after it started or last accepted a
	// connection the forward keeps spares; after that an unused forward
	// holds no connection to the relay until the next local connection.
	// Default 1m.
	KeepWarm time.Duration
	// Drain is how long connections in progress may continue after ctx
	// ends, before they are closed. Default 0: closed at once.
	Drain time.Duration
}

// Defaults of Forward's optional fields.
const (
	DefaultRelayWait   = 10 * time.Second
	DefaultSpares      = 2
	DefaultSpareMaxAge = 5 * time.Second
	DefaultKeepWarm    = time.Minute
)

// ListenAddr turns a Forward.Listen value ("PORT", ":PORT" or
// "HOST:PORT") into the address to listen on, with 127.0.0.1 for a
// missing host.
func ListenAddr(spec string) (string, error) {
	host, port := "", spec
	if strings.Contains(spec, ":") {
		var err error
		if host, port, err = net.SplitHostPort(spec); err != nil {
			return "", fmt.Errorf("listen address %q: want PORT or HOST:PORT", spec)
		}
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
		return "", fmt.Errorf("listen address %q: port %q is not a number from 0 to 65535", spec, port)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// Run listens on Listen and serves until ctx ends (see Serve).
func (f *Forward) Run(ctx context.Context) error {
	if err := f.Check(); err != nil {
		return err
	}
	addr, err := ListenAddr(f.Listen)
	if err != nil {
		return err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("tether: forward: %w", err)
	}
	return f.Serve(ctx, ln)
}

// Serve accepts connections on ln and forwards each to Target until ctx
// ends. It owns ln and closes it. When ctx ends it stops accepting, drops
// connections still waiting for their tunnel, lets tunnels in progress
// continue for Drain, closes the rest, and returns nil once every
// goroutine it started has ended. It returns an error at once for an
// incomplete Forward or Dialer, and when accepting fails for a reason
// other than ln being closed (after ending its connections as above).
func (f *Forward) Serve(ctx context.Context, ln net.Listener) error {
	defer ln.Close()
	if err := f.Check(); err != nil {
		return err
	}
	s := &forwardServer{
		f:     f,
		log:   logger(f.Logger).With("listen", ln.Addr().String(), "target", f.Target),
		relay: strings.Join(f.Dialer.relays(), ","),
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	// hard ends the tunnels: at once when accepting fails, Drain after
	// ctx ends.
	hard, endTunnels := context.WithCancel(context.WithoutCancel(ctx))
	defer endTunnels()

	var wg sync.WaitGroup // the spare pool
	n := f.Spares
	if n == 0 {
		n = DefaultSpares
	}
	if n > 0 {
		s.pool = &sparePool{
			dial: func(ctx context.Context) (net.Conn, error) {
				ctx, cancel := context.WithTimeout(ctx, orDefault(f.RelayWait, DefaultRelayWait))
				defer cancel()
				return f.Dialer.dialRelay(ctx)
			},
			max:     n,
			maxAge:  orDefault(f.SpareMaxAge, DefaultSpareMaxAge),
			warm:    orDefault(f.KeepWarm, DefaultKeepWarm),
			log:     s.log,
			wake:    make(chan struct{}, 1),
			lastUse: time.Now(),
		}
		wg.Go(func() { s.pool.run(ctx) })
	}
	s.log.Info("forwarding", "relay", s.relay, "spares", max(n, 0))

	closeLn := context.AfterFunc(ctx, func() { ln.Close() })
	defer closeLn()
	err := s.accept(ctx, hard, ln)
	stop()
	if err == nil && f.Drain > 0 {
		drained := make(chan struct{})
		wg.Go(func() {
			s.conns.Wait()
			close(drained)
		})
		t := time.NewTimer(f.Drain)
		select {
		case <-drained:
		case <-t.C:
			s.log.Info("drain time over; closing connections", "open", s.tunnels.Load())
		}
		t.Stop()
	}
	endTunnels()
	s.conns.Wait()
	wg.Wait()
	return err
}

// Check reports what Serve would refuse: a missing Dialer, a Dialer
// without a relay or with no single credential, a Target that is not
// "<service>.<tenant>.tether:<port>". It does not contact the relay.
func (f *Forward) Check() error {
	if f.Dialer == nil {
		return errors.New("tether: Forward needs a Dialer")
	}
	if err := f.Dialer.check(); err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(f.Target)
	if err != nil {
		host = f.Target
	}
	if f.Target == "" || strings.ContainsAny(f.Target, "\r\n /") || strings.Count(strings.TrimSuffix(host, "."), ".") < 2 || !strings.HasSuffix(strings.TrimSuffix(host, "."), ".tether") {
		return fmt.Errorf("tether: Forward target %q: want <service>.<tenant>.tether:<port>", f.Target)
	}
	return nil
}

// forwardServer is one Serve call's state.
type forwardServer struct {
	f     *Forward
	log   *slog.Logger
	logs  logLimit
	relay string
	pool  *sparePool // nil without spares

	conns   sync.WaitGroup // one per accepted connection
	tunnels atomic.Int64   // tunnels open
}

// accept accepts connections until ctx ends (nil) or accepting fails.
func (s *forwardServer) accept(ctx, hard context.Context, ln net.Listener) error {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !temporaryAccept(err) {
				s.log.Error("accept failed; forward stopped", "err", err)
				return fmt.Errorf("tether: forward: accept: %w", err)
			}
			// Out of file descriptors, say: wait and try again, as
			// net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.logs.do(func(extra ...any) {
				s.log.Warn("accept failed; retrying", append(extra, "err", err, "retry_in", delay)...)
			})
			if !sleepCtx(ctx, delay) {
				return nil
			}
			continue
		}
		delay = 0
		s.conns.Go(func() { s.serve(ctx, hard, c) })
	}
}

// temporaryAccept reports whether an accept error may go away by itself
// (EMFILE, ENFILE, ECONNABORTED, a timeout).
func temporaryAccept(err error) bool {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Temporary()
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// serve forwards one local connection.
func (s *forwardServer) serve(ctx, hard context.Context, local net.Conn) {
	start := time.Now()
	up, err := s.open(ctx)
	if err != nil {
		local.Close()
		if ctx.Err() != nil {
			return // stopping: not worth a line per connection
		}
		s.logFailure(local, err, time.Since(start))
		return
	}
	s.tunnels.Add(1)
	defer s.tunnels.Add(-1)
	setup := time.Since(start)
	requestID := up.RequestID
	// Cut when the drain is over: resets both ways, never a clean end
	// (a FIN would tell the local client that the service's answer
	// ended, and the service that the client's request did).
	end := context.AfterFunc(hard, func() {
		transport.Abort(localStream(local))
		up.abort()
	})
	res, err := transport.Splice(localStream(local), up.spliceStream(), 0)
	end()
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("connection closed", "remote", local.RemoteAddr().String(), "request", requestID,
			"bytes_to_service", res.AToB, "bytes_from_service", res.BToA,
			"setup_ms", float64(setup.Microseconds())/1000, "duration", time.Since(start).Round(time.Millisecond).String(), "err", errOrNil(err))
	}
}

func errOrNil(err error) any {
	if err == nil || transport.IsClosedErr(err) {
		return nil
	}
	return err.Error()
}

// logFailure logs why a local connection was closed without a tunnel.
func (s *forwardServer) logFailure(local net.Conn, err error, waited time.Duration) {
	s.logs.do(func(extra ...any) {
		attrs := append(extra, "remote", local.RemoteAddr().String())
		var r *Refusal
		if errors.As(err, &r) {
			attrs = append(attrs, "code", r.Err.Code.String(), "request", r.RequestID, "err", r.Err.Message)
			if r.RetryAfter > 0 {
				attrs = append(attrs, "retry_after", r.RetryAfter.String())
			}
			s.log.Warn("relay refused the connection; closed it", attrs...)
			return
		}
		attrs = append(attrs, "relay", s.relay, "waited", waited.Round(time.Millisecond), "err", err)
		if transient(err) {
			s.log.Warn("relay unreachable; closed the connection", attrs...)
			return
		}
		s.log.Error("cannot open a tunnel; closed the connection", attrs...)
	})
}

// open gets a tunnel to the target: on a spare connection to the relay
// when one is ready, else on a new one, retrying a relay it cannot reach
// for up to RelayWait.
func (s *forwardServer) open(ctx context.Context) (*Conn, error) {
	d := s.f.Dialer
	ctx, cancel := context.WithTimeout(ctx, d.timeout())
	defer cancel()
	relayDeadline := time.Now().Add(orDefault(s.f.RelayWait, DefaultRelayWait))
	useSpare := s.pool != nil
	for attempt := 0; ; attempt++ {
		var conn net.Conn
		var err error
		fromSpare := false
		if useSpare {
			conn = s.pool.take()
			fromSpare = conn != nil
		}
		if conn == nil {
			dctx, dcancel := context.WithDeadline(ctx, relayDeadline)
			conn, err = d.dialRelay(dctx)
			dcancel()
		}
		if err == nil {
			var up *Conn
			if up, err = d.request(ctx, conn, s.f.Target); err == nil {
				return up, nil
			}
			if fromSpare && transient(err) && ctx.Err() == nil {
				// The relay closed the spare (it restarted, or its
				// handshake timeout is shorter than SpareMaxAge): the
				// others went the same way. Dial afresh at once.
				s.pool.flush()
				useSpare = false
				continue
			}
		}
		if !transient(err) || ctx.Err() != nil || !time.Now().Before(relayDeadline) {
			return nil, err
		}
		// The relay is unreachable: wait (full jitter) and try again.
		wait := min(time.Until(relayDeadline), backoff(attempt, 50*time.Millisecond, time.Second))
		if !sleepCtx(ctx, wait) {
			return nil, err
		}
	}
}

// transient reports whether err is the relay being unreachable or the
// connection to it breaking, as opposed to a refusal, an ended context,
// or a failure no retry mends (a certificate the relay rejects, a reply
// that is not HTTP).
func transient(err error) bool {
	var r *Refusal
	if err == nil || errors.As(err, &r) || errors.Is(err, context.Canceled) {
		return false
	}
	var oe *net.OpError
	return errors.As(err, &oe) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// backoff is a full-jitter exponential backoff: a random wait up to
// base·2^attempt, at most limit.
func backoff(attempt int, base, limit time.Duration) time.Duration {
	ceil := limit
	if attempt < 20 {
		ceil = min(base<<attempt, limit)
	}
	return rand.N(ceil) + time.Millisecond
}

// sleepCtx waits d, or until ctx ends (false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// localStream is the local connection as a stream Splice can half-close.
// A connection without CloseWrite (from a listener that is neither TCP nor
// Unix) cannot pass the service's EOF on: it ends when both directions do.
func localStream(c net.Conn) transport.Stream {
	if s, ok := c.(transport.Stream); ok {
		return s
	}
	return noHalfClose{c}
}

type noHalfClose struct{ net.Conn }

func (noHalfClose) CloseWrite() error { return nil }

// spliceStream is the stream to copy the tunnel through: the TCP
// connection itself when nothing is buffered in front of it (Splice then
// uses its direct path), else c.
func (c *Conn) spliceStream() transport.Stream {
	if c.r == nil || c.r.Buffered() == 0 {
		if tc, ok := c.Conn.(*net.TCPConn); ok {
			return tc
		}
	}
	return c
}

// logLimit rate-limits per-connection log lines (logsPerSecond in any
// second) and counts those it left out, so a client retrying in a tight
// loop cannot flood the log.
type logLimit struct {
	mu      sync.Mutex // guards the fields below
	window  time.Time  // start of the current second
	n       int        // lines logged in it
	dropped int64      // lines left out since the last one logged
}

const logsPerSecond = 5

// do calls log, with a "suppressed" count of the lines left out since the
// last one, if the rate allows.
func (l *logLimit) do(log func(extra ...any)) {
	now := time.Now()
	l.mu.Lock()
	if now.Sub(l.window) >= time.Second {
		l.window, l.n = now, 0
	}
	if l.n >= logsPerSecond {
		l.dropped++
		l.mu.Unlock()
		return
	}
	l.n++
	dropped := l.dropped
	l.dropped = 0
	l.mu.Unlock()
	if dropped > 0 {
		log("suppressed", dropped)
		return
	}
	log()
}

// sparePool keeps up to max connections to the relay dialled ahead of
// need, while the forward is in use (see Forward.Spares). One goroutine,
// run, dials them one at a time and closes those older than maxAge.
type sparePool struct {
	dial   func(ctx context.Context) (net.Conn, error)
	max    int
	maxAge time.Duration
	warm   time.Duration
	log    *slog.Logger
	wake   chan struct{} // a spare was taken: refill

	mu      sync.Mutex // guards ready and lastUse
	ready   []spare    // oldest first
	lastUse time.Time
}

type spare struct {
	conn net.Conn
	at   time.Time
}

// take returns a spare young enough to use, or nil, and marks the forward
// as in use.
func (p *sparePool) take() net.Conn {
	now := time.Now()
	var c net.Conn
	var stale []net.Conn
	p.mu.Lock()
	p.lastUse = now
	for c == nil && len(p.ready) > 0 {
		s := p.ready[0]
		p.ready = p.ready[1:]
		if now.Sub(s.at) < p.maxAge {
			c = s.conn
		} else {
			stale = append(stale, s.conn)
		}
	}
	p.mu.Unlock()
	for _, s := range stale {
		s.Close()
	}
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return c
}

// flush closes every spare.
func (p *sparePool) flush() {
	p.mu.Lock()
	ready := p.ready
	p.ready = nil
	p.mu.Unlock()
	for _, s := range ready {
		s.conn.Close()
	}
}

// run keeps the pool filled while the forward is in use, until ctx ends;
// then it closes the spares.
func (p *sparePool) run(ctx context.Context) {
	defer p.flush()
	failures := 0
	for {
		now := time.Now()
		var stale []net.Conn
		p.mu.Lock()
		for len(p.ready) > 0 && now.Sub(p.ready[0].at) >= p.maxAge {
			stale = append(stale, p.ready[0].conn)
			p.ready = p.ready[1:]
		}
		need := len(p.ready) < p.max && now.Sub(p.lastUse) < p.warm
		var next time.Time // the oldest spare's expiry
		if len(p.ready) > 0 {
			next = p.ready[0].at.Add(p.maxAge)
		}
		p.mu.Unlock()
		for _, c := range stale {
			c.Close()
		}

		if need {
			c, err := p.dial(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				failures++
				p.log.Debug("spare connection to the relay failed", "err", err)
				if !sleepCtx(ctx, backoff(failures, 100*time.Millisecond, 5*time.Second)) {
					return
				}
				continue
			}
			failures = 0
			p.mu.Lock()
			p.ready = append(p.ready, spare{conn: c, at: time.Now()})
			p.mu.Unlock()
			continue
		}

		var expire <-chan time.Time
		var t *time.Timer
		if !next.IsZero() {
			t = time.NewTimer(time.Until(next))
			expire = t.C
		}
		select {
		case <-ctx.Done():
		case <-p.wake:
		case <-expire:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	}
}
