package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/policy"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/relay/internal/credential"
	"github.com/tetherhq/tether/relay/internal/store"
)

// TargetSuffix ends every address a backend can ask for:
// <service>.<tenant>.tether, with any port.
const TargetSuffix = ".tether"

// Target is a parsed backend request address.
type Target struct {
	Service string
	Tenant  string
}

// ParseTarget parses "<service>.<tenant>.tether" with an optional ":port"
// (the port is ignored: the agent's allowlist names the real address; it
// must still be a number from 0 to 65535 when given).
func ParseTarget(addr string) (Target, error) {
	host := addr
	if h, port, err := net.SplitHostPort(addr); err == nil {
		if _, err := strconv.ParseUint(port, 10, 16); err != nil && port != "" {
			return Target{}, protocol.Errorf(protocol.CodeBadRequest, "address %q: port %q is not a number from 0 to 65535", addr, port)
		}
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	rest, ok := strings.CutSuffix(host, TargetSuffix)
	if !ok {
		return Target{}, protocol.Errorf(protocol.CodeBadRequest, "address %q is not of the form <service>.<tenant>%s", addr, TargetSuffix)
	}
	svc, tenant, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(tenant, ".") {
		return Target{}, protocol.Errorf(protocol.CodeBadRequest, "address %q is not of the form <service>.<tenant>%s", addr, TargetSuffix)
	}
	if err := identity.ValidateName("service", svc); err != nil {
		return Target{}, protocol.Errorf(protocol.CodeBadRequest, "%v", err)
	}
	if err := identity.ValidateName("tenant", tenant); err != nil {
		return Target{}, protocol.Errorf(protocol.CodeBadRequest, "%v", err)
	}
	return Target{Service: svc, Tenant: tenant}, nil
}

// caller is an authenticated backend.
type caller struct {
	name   string
	grants []policy.Grant
	// via is how it proved who it is: api_key, certificate or jwt.
	via string
	// tenants, when not nil, narrows the grants to these tenants (the
	// tenant claim of a bearer token).
	tenants []string
}

// Identity is how the caller is named in stream headers and logs.
func (c *caller) Identity() string { return "backend:" + c.name }

// Ways a backend authenticates, as recorded in audit records.
const (
	viaAPIKey      = "api_key"
	viaCertificate = "certificate"
	viaJWT         = "jwt"
)

// authenticate checks a backend name and API key. Unknown names and wrong
// keys get the same answer.
func (r *Relay) authenticate(ctx context.Context, name, key string) (*caller, error) {
	if name == "" || key == "" {
		return nil, protocol.Errorf(protocol.CodeUnauthenticated, "backend credentials required (backend name and API key)")
	}
	b, err := r.backends.get(ctx, name, r.loadBackend)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, protocol.Errorf(protocol.CodeInternal, "look up backend: %v", err)
	}
	if err != nil || !credential.Matches(key, b.KeyHash) {
		return nil, protocol.Errorf(protocol.CodeUnauthenticated, "wrong backend name or API key")
	}
	return &caller{name: b.Name, grants: b.Grants, via: viaAPIKey}, nil
}

// loadBackend reads a backend from the store, timing it.
func (r *Relay) loadBackend(ctx context.Context, name string) (store.Backend, error) {
	start := time.Now()
	defer r.metrics.storeOp("backend_lookup", start)
	return r.st.store.Backend(ctx, name)
}

// authorize checks that c may reach service t.Service of tenant t.Tenant,
// and that the tenant exists. A backend without a grant learns nothing,
// not even whether the tenant exists.
func (r *Relay) authorize(ctx context.Context, c *caller, t Target) error {
	if !policy.Allows(c.grants, t.Tenant, t.Service) {
		return protocol.Errorf(protocol.CodeNotAllowed, "backend %q may not reach service %q of tenant %q (no grant)", c.name, t.Service, t.Tenant)
	}
	if c.tenants != nil && !slices.Contains(c.tenants, t.Tenant) {
		return protocol.Errorf(protocol.CodeNotAllowed, "backend %q's token does not name tenant %q", c.name, t.Tenant)
	}
	if r.reg.connected(t.Tenant) > 0 {
		return nil // a tenant with a connected agent exists
	}
	if _, err := r.st.store.Tenant(ctx, t.Tenant); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return protocol.Errorf(protocol.CodeUnknownTenant, "no tenant %q", t.Tenant)
		}
		return protocol.Errorf(protocol.CodeInternal, "look up tenant: %v", err)
	}
	return nil
}

// tunnel is an open stream to a service through an agent, after the agent
// answered OK.
type tunnel struct {
	st        transport.Stream
	agent     *agentConn
	requestID string
	target    Target
	caller    *caller
	opened    time.Time
	release   func() // uncounts the stream from its tenant's limit
}

// abandon closes a tunnel that will not be bridged.
func (t *tunnel) abandon() {
	t.st.Close()
	t.agent.open.Add(-1)
	t.release()
}

// maxRouteAttempts is how many agent connections a stream open tries when
// connections fail underneath it (a relay restart, a dying agent).
const maxRouteAttempts = 3

// dial authenticates nothing: the front door has already. It authorizes c
// for target, picks an agent connection and opens a stream to the service.
func (r *Relay) dial(ctx context.Context, c *caller, addr string) (*tunnel, error) {
	t, err := ParseTarget(addr)
	if err != nil {
		return nil, err
	}
	if err := r.authorize(ctx, c, t); err != nil {
		return nil, err
	}
	// The tenant's bulkheads: they count and refuse only its own streams.
	release, err := r.pol.AdmitStream(t.Tenant, c.name)
	if err != nil {
		r.limitRefusals.Add(1)
		r.metrics.limitRefusals.WithLabelValues(t.Tenant).Inc()
		return nil, err
	}
	start := time.Now()
	tun, err := r.route(ctx, c, t)
	if err != nil {
		release()
		return nil, err
	}
	r.metrics.openSeconds.Observe(time.Since(start).Seconds())
	r.metrics.streamOpened(t, protocol.CodeOK)
	tun.release = release
	return tun, nil
}

// route picks an agent connection of t's tenant and opens the stream.
func (r *Relay) route(ctx context.Context, c *caller, t Target) (*tunnel, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.StreamOpenTimeout)
	defer cancel()
	hdr := protocol.StreamHeader{Service: t.Service, Backend: c.Identity(), RequestID: newRequestID()}
	tried := map[*agentConn]bool{}
	var lastErr error
	lastStalled := false // lastErr came from a connection whose agent stopped answering
	for attempt := 0; attempt < maxRouteAttempts; attempt++ {
		ac := r.reg.pick(t.Tenant, r.cfg.HeartbeatInterval, tried)
		if ac == nil && attempt == 0 {
			// Just restarted: the tenant's agent may be on its way back.
			ac = r.awaitAgent(ctx, t.Tenant, r.cfg.HeartbeatInterval, tried)
		}
		if ac == nil {
			break
		}
		tried[ac] = true
		st, err := r.openOn(ctx, ac, hdr, func() bool { return r.reg.pick(t.Tenant, r.cfg.HeartbeatInterval, tried) != nil })
		if err == nil {
			return &tunnel{st: st, agent: ac, requestID: hdr.RequestID, target: t, caller: c, opened: time.Now()}, nil
		}
		var pe *protocol.Error
		if errors.As(err, &pe) {
			return nil, err // the agent answered: do not ask another
		}
		if ctx.Err() != nil {
			return nil, protocol.Errorf(protocol.CodeTimeout, "no answer from tenant %q's agent within %v", t.Tenant, r.cfg.StreamOpenTimeout)
		}
		ac.log.Warn("open stream failed; trying another connection", "request", hdr.RequestID, "err", err)
		lastErr, lastStalled = err, ac.stalled.Load()
	}
	if lastStalled {
		// The transport gave up on the connection (yamux aborts a stream
		// open the agent does not acknowledge) after the agent had
		// stopped answering: the agent did not answer in time.
		return nil, protocol.Errorf(protocol.CodeTimeout, "tenant %q's agent stopped answering: %v", t.Tenant, lastErr)
	}
	if lastErr != nil {
		return nil, protocol.Errorf(protocol.CodeNoAgent, "tenant %q's agent connections failed: %v", t.Tenant, lastErr)
	}
	if r.reg.connected(t.Tenant) > 0 {
		return nil, protocol.Errorf(protocol.CodeNoAgent, "tenant %q's agents are connected but none is healthy (draining, or not answering heartbeats)", t.Tenant)
	}
	return nil, protocol.Errorf(protocol.CodeNoAgent, "tenant %q has no agent connected", t.Tenant)
}

// auditRefusal records a stream the relay or the agent refused.
func (r *Relay) auditRefusal(door, remote string, c *caller, addr string, err error) {
	if len(addr) > 512 {
		addr = addr[:512]
	}
	rec := audit.Record{Kind: audit.Stream, Outcome: protocol.CodeOf(err).String(), Backend: c.name, Actor: c.Identity(),
		Detail: map[string]any{"door": door, "remote": remote, "target": addr, "auth": c.via, "error": err.Error()}}
	t, perr := ParseTarget(addr)
	if perr == nil {
		rec.Tenant = t.Tenant
		rec.Detail["service"] = t.Service
	}
	r.metrics.streamOpened(t, protocol.CodeOf(err))
	r.audit.Add(rec)
}

// auditUnauthenticated records a front-door connection whose credentials
// were refused. The name it claimed is kept apart from Backend, which only
// ever holds an authenticated identity.
func (r *Relay) auditUnauthenticated(door, remote, claimed string, err error) {
	if len(claimed) > 255 {
		claimed = claimed[:255]
	}
	r.metrics.streamOpened(Target{}, protocol.CodeOf(err))
	r.audit.Add(audit.Record{Kind: audit.Stream, Outcome: protocol.CodeOf(err).String(), Actor: "unauthenticated",
		Detail: map[string]any{"door": door, "remote": remote, "claimed_backend": claimed, "error": err.Error()}})
}

// doorOf finds the front door's name in a stream's log attributes.
func doorOf(attrs []any) string {
	for i := 0; i+1 < len(attrs); i += 2 {
		if attrs[i] == "door" {
			if s, ok := attrs[i+1].(string); ok {
				return s
			}
		}
	}
	return ""
}

// errStalled ends a stream open on a connection that stalled (its agent
// stopped answering pings) while another connection could take it.
var errStalled = errors.New("the agent stopped answering on this connection")

// openOn opens a stream on ac, sends hdr and waits for the agent's reply.
// A refusal by the agent comes back as *protocol.Error; anything else is a
// transport failure worth retrying on another connection.
//
// A reply slower than activeTick is watched: if ac stalls meanwhile (its
// agent answers no ping, see agentConn.beat) and elsewhere reports another
// usable connection, the open is abandoned with errStalled, to be tried
// there. Without one it waits on, as the agent may yet answer.
func (r *Relay) openOn(ctx context.Context, ac *agentConn, hdr protocol.StreamHeader, elsewhere func() bool) (transport.Stream, error) {
	if ac.open.Add(1) == 1 {
		ac.wake(activeTick) // watch the connection closely while streams use it
	}
	ac.opening.Add(1)
	defer ac.opening.Add(-1)
	st, err := ac.sess.OpenStream(ctx)
	if err != nil {
		ac.open.Add(-1)
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			st.Close()
			ac.open.Add(-1)
		}
	}()
	dl, hasDeadline := ctx.Deadline()
	if hasDeadline {
		st.SetDeadline(dl)
	}
	var gaveUp atomic.Bool
	answered, watched := make(chan struct{}), make(chan struct{})
	watch := time.AfterFunc(activeTick, func() {
		defer close(watched)
		select {
		case <-ac.stalls():
			if elsewhere() {
				gaveUp.Store(true)
				st.SetDeadline(time.Now()) // ends ReadReply below
			}
		case <-answered:
		}
	})
	rep, err := writeHeaderReadReply(st, hdr)
	close(answered)
	if !watch.Stop() {
		<-watched
	}
	if err != nil {
		if gaveUp.Load() {
			return nil, fmt.Errorf("%w (no answer to a ping within %v)", errStalled, probeWait)
		}
		// The stream's deadline is ctx's: either may be first to expire.
		if ctx.Err() != nil || (hasDeadline && !time.Now().Before(dl)) {
			return nil, protocol.Errorf(protocol.CodeTimeout, "agent did not answer within %v", r.cfg.StreamOpenTimeout)
		}
		return nil, err
	}
	if err := rep.Err(); err != nil {
		return nil, err
	}
	st.SetDeadline(time.Time{})
	ac.total.Add(1)
	ok = true
	return st, nil
}

// writeHeaderReadReply sends a stream header and reads the agent's reply.
func writeHeaderReadReply(st transport.Stream, hdr protocol.StreamHeader) (protocol.Reply, error) {
	if err := protocol.WriteStreamHeader(st, hdr); err != nil {
		return protocol.Reply{}, fmt.Errorf("send stream header: %w", err)
	}
	return protocol.ReadReply(st)
}

// bridge copies between a front-door connection and a tunnel until both
// directions end, then releases the tunnel.
func (r *Relay) bridge(front transport.Stream, t *tunnel, attrs []any) {
	res, err := transport.Splice(front, t.st, r.cfg.IdleTimeout)
	t.agent.open.Add(-1)
	t.release()
	r.metrics.streamBytes.WithLabelValues(t.target.Tenant, "to_service").Add(float64(res.AToB))
	r.metrics.streamBytes.WithLabelValues(t.target.Tenant, "from_service").Add(float64(res.BToA))
	outcome := audit.OutcomeOK
	if errors.Is(err, transport.ErrIdle) {
		outcome = "idle_timeout"
	} else if err != nil && !transport.IsClosedErr(err) {
		outcome = "error"
	}
	// The stream is over: its record need not hold this goroutine.
	r.audit.Record(audit.Record{Kind: audit.Stream, Outcome: outcome, Tenant: t.target.Tenant, Agent: t.agent.id.ID, Backend: t.caller.name, Actor: t.caller.Identity(),
		Detail: map[string]any{"service": t.target.Service, "request": t.requestID, "bytes_to_service": res.AToB, "bytes_from_service": res.BToA,
			"duration_ms": time.Since(t.opened).Milliseconds(), "door": doorOf(attrs), "auth": t.caller.via}})
	log := r.log
	attrs = with(attrs, "request", t.requestID, "agent", t.agent.id.ID, "bytes_to_service", res.AToB, "bytes_from_service", res.BToA, "duration", time.Since(t.opened).Round(time.Microsecond))
	switch {
	case errors.Is(err, transport.ErrIdle):
		log.Info("stream closed: idle timeout", attrs...)
	case err != nil && !transport.IsClosedErr(err):
		log.Info("stream ended with error", append(attrs, "err", err)...)
	default:
		log.Debug("stream closed", attrs...)
	}
}
