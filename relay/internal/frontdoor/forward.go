package frontdoor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/relay/internal/credential"
	"github.com/tetherhq/tether/relay/internal/route"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/throttle"
)

// Forward is a relay-side forward: a listener, set up by an operator, whose
// every connection becomes a stream to one tenant service, opened as one
// registered backend. Its grants decide, at each connection, exactly as at
// the other doors; nothing is asked of the connecting client. Anyone who
// can reach Listen acts as Backend: bind it where only that backend's
// hosts reach it.
type Forward struct {
	// Listen is the address to listen on, host:port.
	Listen string `json:"listen" yaml:"listen"`
	// Target is the service: <service>.<tenant>, or with the ".tether"
	// suffix and a port, which is ignored.
	Target string `json:"target" yaml:"target"`
	// Backend is the registered backend the streams are opened as.
	Backend string `json:"backend" yaml:"backend"`
}

// ParseForward parses LISTEN=SERVICE.TENANT@BACKEND (such as
// "10.1.0.5:15432=db.acme@billing") and checks it (Forward.Check).
func ParseForward(s string) (Forward, error) {
	const form = "want LISTEN=SERVICE.TENANT@BACKEND, such as 127.0.0.1:15432=db.acme@billing"
	if len(s) > 512 {
		return Forward{}, fmt.Errorf("forward of %d bytes: %s", len(s), form)
	}
	listen, rest, ok := strings.Cut(s, "=")
	if !ok {
		return Forward{}, fmt.Errorf("forward %s: no \"=\": %s", quoteClipped(s), form)
	}
	target, backend, ok := strings.Cut(rest, "@")
	if !ok {
		return Forward{}, fmt.Errorf("forward %s names no backend (@BACKEND): a forward opens its streams as a registered backend, whose grants decide; %s", quoteClipped(s), form)
	}
	f := Forward{Listen: strings.TrimSpace(listen), Target: strings.TrimSpace(target), Backend: strings.TrimSpace(backend)}
	if err := f.Check(); err != nil {
		return Forward{}, err
	}
	return f, nil
}

// String is f in ParseForward's form.
func (f Forward) String() string { return f.Listen + "=" + f.Target + "@" + f.Backend }

// Check reports what is wrong with f: a listen address that is not
// host:port, a target that names no tenant service, a backend name that
// cannot be one.
func (f Forward) Check() error {
	var errs []error
	if _, port, err := net.SplitHostPort(f.Listen); err != nil || port == "" {
		errs = append(errs, fmt.Errorf("listen address %s is not host:port", quoteClipped(f.Listen)))
	}
	if _, err := f.target(); err != nil {
		errs = append(errs, err)
	}
	if err := identity.ValidateName("backend", f.Backend); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("forward %s: %w", quoteClipped(f.String()), errors.Join(errs...))
	}
	return nil
}

// target parses the forward's target.
func (f Forward) target() (route.Target, error) {
	host := f.Target
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(host, ".")
	if !strings.HasSuffix(strings.ToLower(host), route.TargetSuffix) {
		host += route.TargetSuffix
	}
	t, err := route.ParseTarget(host)
	if err != nil {
		return route.Target{}, fmt.Errorf("target %s: want SERVICE.TENANT: %w", quoteClipped(f.Target), err)
	}
	return t, nil
}

// address is the forward's target as the other doors take it, and as its
// logs and audit records name it: with no port, since a forward names
// none (the agent's config gives the service's address).
func (f Forward) address() string {
	t, _ := f.target() // checked when the forward was applied
	return t.Service + "." + t.Tenant + route.TargetSuffix
}

// forwardListener is one forward's listener. Its Forward can change
// (another target or backend on the same address) without a new
// listener.
type forwardListener struct {
	ln      net.Listener
	fwd     atomic.Pointer[Forward]
	started bool // an accept loop runs for it; guarded by Server.mu
}

// SetForwards makes the relay's forwards fwds: it listens on the
// addresses new to it, stops listening on those no longer there (the
// connections they accepted go on until they end) and points those whose
// target or backend changed at the new one. Every backend named must be
// registered. It applies all of fwds or, on any problem (a forward that
// does not check, two on one address, an unknown backend, an address it
// cannot listen on), none, and says what is wrong. Before Run, the
// listeners wait for it; during Run, they accept at once.
func (fd *Server) SetForwards(ctx context.Context, fwds []Forward) error {
	want := make(map[string]Forward, len(fwds))
	var errs []error
	for _, f := range fwds {
		if err := f.Check(); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := want[f.Listen]; dup {
			errs = append(errs, fmt.Errorf("two forwards listen on %s", f.Listen))
			continue
		}
		want[f.Listen] = f
		if _, err := fd.cfg.Store.Backend(ctx, f.Backend); errors.Is(err, store.ErrNotFound) {
			errs = append(errs, fmt.Errorf("forward %s: backend %q is not registered (tether-relay backend add)", f, f.Backend))
		} else if err != nil {
			errs = append(errs, fmt.Errorf("forward %s: look up backend: %w", f, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}

	fd.mu.Lock()
	defer fd.mu.Unlock()
	if fd.stopped {
		return errors.New("set forwards: the front doors are shutting down")
	}
	// Listen on the new addresses first: if one fails, nothing changes.
	added := map[string]*forwardListener{}
	for addr, f := range want {
		if _, ok := fd.forwards[addr]; ok {
			continue
		}
		ln, err := listenDoor(addr, "forward "+f.String())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fl := &forwardListener{ln: ln}
		fl.fwd.Store(&f)
		added[addr] = fl
	}
	if len(errs) > 0 {
		for _, fl := range added {
			fl.ln.Close()
		}
		return errors.Join(errs...)
	}
	for addr, fl := range fd.forwards {
		f, ok := want[addr]
		switch {
		case !ok:
			fl.ln.Close() // its accept loop ends; its connections go on
			delete(fd.forwards, addr)
			fd.log.Info("forward removed", "listen", addr, "target", fl.fwd.Load().Target, "backend", fl.fwd.Load().Backend)
		case *fl.fwd.Load() != f:
			was := fl.fwd.Load()
			fl.fwd.Store(&f)
			fd.log.Info("forward changed", "listen", addr, "target", f.Target, "backend", f.Backend, "was_target", was.Target, "was_backend", was.Backend)
		}
	}
	if fd.forwards == nil {
		fd.forwards = map[string]*forwardListener{}
	}
	for addr, fl := range added {
		fd.forwards[addr] = fl
		f := fl.fwd.Load()
		fd.log.Info("forward listening", "listen", fl.ln.Addr().String(), "target", f.Target, "backend", f.Backend)
		if !IsLoopback(addr) {
			fd.log.Warn("a forward listens beyond loopback: anyone who can reach it acts as its backend, with that backend's grants, and no credential is asked; "+
				"bind it to an address only that backend's hosts can reach (or loopback)", "listen", addr, "target", f.Target, "backend", f.Backend)
		}
	}
	if len(added) > 0 {
		select {
		case fd.forwardsChanged <- struct{}{}:
		default:
		}
	}
	return nil
}

// ForwardAddrs returns the address each forward listens on, by its Listen.
func (fd *Server) ForwardAddrs() map[string]net.Addr {
	fd.mu.Lock()
	defer fd.mu.Unlock()
	out := make(map[string]net.Addr, len(fd.forwards))
	for addr, fl := range fd.forwards {
		out[addr] = fl.ln.Addr()
	}
	return out
}

// runForwards starts an accept loop, in wg, for every forward listener,
// and for each one SetForwards adds later, until StopAccepting.
func (fd *Server) runForwards(ctx context.Context, wg *sync.WaitGroup) {
	for {
		fd.mu.Lock()
		for _, fl := range fd.forwards {
			if !fl.started {
				fl.started = true
				wg.Go(func() { fd.acceptForward(ctx, fl, wg) })
			}
		}
		stopped := fd.stopped
		fd.mu.Unlock()
		if stopped {
			return
		}
		select {
		case <-fd.forwardsChanged:
		case <-fd.stop:
		}
	}
}

// closeForwards closes every forward listener; mu must be held.
func (fd *Server) closeForwardsLocked() {
	for addr, fl := range fd.forwards {
		fl.ln.Close()
		delete(fd.forwards, addr)
	}
}

func (fd *Server) acceptForward(ctx context.Context, fl *forwardListener, wg *sync.WaitGroup) {
	var backoff throttle.AcceptBackoff
	for {
		c, err := fl.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			if backoff.Retry(ctx, err, fd.log, "forward listener "+fl.ln.Addr().String()) || ctx.Err() != nil {
				continue
			}
			// One forward's listener failing leaves the others and the
			// doors serving.
			fd.log.Error("forward stopped accepting", "listen", fl.ln.Addr().String(), "err", err)
			return
		}
		backoff.Accepted()
		// A forward asks nothing of its client: until its stream opens, a
		// connection counts against its source's bound, as the other
		// doors' unauthenticated connections do (and with them).
		leave, ok := fd.src.Enter(c.RemoteAddr())
		if !ok {
			fd.SourceLimited.Add(1)
			fd.log.Debug("front-door connection closed: too many connections in progress from its address or network", "door", "forward", "listen", fl.ln.Addr().String(), "remote", c.RemoteAddr().String())
			c.Close()
			continue
		}
		f := *fl.fwd.Load()
		fd.front.add(c)
		wg.Go(func() {
			defer fd.front.remove(c)
			fd.serveForward(ctx, c, f, leave)
		})
	}
}

// viaForward: the caller is the backend a forward is bound to; the
// connection proved nothing.
const viaForward = "forward"

// serveForward opens a stream for one connection to forward f, as f's
// backend, and bridges the two; a refusal is logged and audited with the
// connection's request id (refusedForward) and the connection closed.
// opened is called once the stream is open or refused (it uncounts the
// connection from its source's bound).
func (fd *Server) serveForward(ctx context.Context, c net.Conn, f Forward, opened func()) {
	id := credential.NewRequestID()
	remote := c.RemoteAddr().String()
	addr := f.address()
	attrs := []any{"door", "forward", "request", id, "remote", remote, "listen", f.Listen, "backend", f.Backend, "target", addr}
	who, err := fd.registeredCaller(ctx, f.Backend, viaForward, nil)
	if err != nil {
		opened()
		fd.refusedForward(ctx, remote, id, nil, f, addr, err, attrs)
		c.Close()
		return
	}
	first := gatherFirstBytes(c)
	tun, err := fd.dial(ctx, who, addr, id, first)
	opened()
	early, ferr := first.stop()
	if err != nil {
		fd.refusedForward(ctx, remote, id, who, f, addr, err, attrs)
		c.Close()
		return
	}
	if ferr != nil {
		// The client went away, or the stream failed, while it opened.
		tun.early = early
		fd.abandon(tun, "forward", ferr)
		c.Close()
		fd.log.Info("stream closed before it was bridged", with(attrs, "err", ferr)...)
		return
	}
	tun.early = early
	st, ok := c.(transport.Stream)
	if !ok {
		fd.abandon(tun, "forward", fmt.Errorf("a %T cannot half-close", c))
		c.Close()
		fd.log.Error("forward connection cannot half-close", with(attrs, "type", fmt.Sprintf("%T", c))...)
		return
	}
	fd.bridge(st, tun, with(attrs, "tenant", tun.target.Tenant, "service", tun.target.Service))
}

// refusedForward logs and audits the refusal (err) of the stream of
// request requestID, from remote, to forward f as who (nil when f's
// backend could not be found). Anyone who reaches a forward causes its
// refusals, with nothing to prove: as refused authentications are
// (refusedAuth), a source's first refusals (10, then one every 5 s,
// from the budget its refusals at the other doors share) are logged at
// info level and audited one by one (in the tenant's trail when the
// backend has a grant for it, as auditRefusal decides); the rest are
// logged at debug level and summed per tenant, source and refusal in
// stream records of the door forward (count, first, last, summed). Each
// is counted in tether_streams_opened_total. Streams that open are
// audited one by one, as at every door.
func (fd *Server) refusedForward(ctx context.Context, remote, requestID string, who *caller, f Forward, addr string, err error, attrs []any) {
	attrs = with(targetAttrs(attrs, addr), "code", protocol.CodeOf(err).String(), "err", err)
	if fd.guard.logged(remote) {
		fd.log.Info("refused", attrs...)
		if who == nil {
			fd.auditUnauthenticated("forward", remote, requestID, f.Backend, err)
		} else {
			fd.auditRefusal("forward", remote, requestID, who, addr, err)
		}
		return
	}
	fd.log.Log(ctx, slog.LevelDebug, "refused", attrs...)
	// As auditRefusal counts and attributes them.
	var t route.Target
	var trail, backend string
	if who != nil {
		backend = who.name
		if t, _ = route.ParseTarget(addr); who.grantedTenant(t.Tenant) {
			trail = t.Tenant
		}
	}
	if fd.cfg.Metrics != nil {
		fd.cfg.Metrics.StreamOpened(t.Tenant, t.Service, backend, protocol.CodeOf(err))
	}
	fd.guard.streams.AddFor(trail, "forward", throttle.Source(remote), protocol.CodeOf(err).String(), f.Backend)
}

// IsLoopback reports whether the listen address hostport accepts only
// connections from this machine (an empty host listens on all).
func IsLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil || host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
