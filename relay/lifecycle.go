package relay

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"

	"golang.org/x/time/rate"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/store"
)

// renew answers an agent's RenewRequest on its control stream: a new
// certificate for the session's own identity, to the fresh key in the CSR.
func (r *Relay) renew(ctx context.Context, ac *agentConn, req *protocol.RenewRequest) *protocol.RenewResponse {
	resp, notAfter, root, err := r.renewCert(ctx, ac.id, req)
	rec := audit.Record{Kind: audit.Renew, Outcome: audit.OutcomeOK, Tenant: ac.id.Tenant, Agent: ac.id.ID, Actor: "agent",
		Detail: map[string]any{"session": ac.sessionID}}
	if err != nil {
		ac.log.Warn("certificate renewal refused", "err", err)
		rec.Outcome = protocol.CodeOf(err).String()
		rec.Detail["error"] = err.Error()
		r.audit.Add(rec)
		rep := protocol.ReplyFor(err)
		return &protocol.RenewResponse{Code: rep.Code.String(), Message: rep.Message}
	}
	// The agent's sessions now stand on the new certificate: it proved it
	// holds the new key (the CSR's signature) over a session the old one
	// authenticated. Its other sessions (it keeps two) are the same agent
	// process and move with it, so none is cut when the old one expires.
	r.reg.renewed(ac.id, notAfter, root.ID())
	rec.Detail["not_after"] = notAfter
	rec.Detail["ca_root"] = root.ID()
	r.audit.Add(rec)
	ac.log.Info("certificate renewed", "not_after", notAfter.Format(time.RFC3339), "ca_root", root.ID())
	return resp
}

// renewCert issues the new certificate from the CA's signing root (the new
// root during a rotation) and answers with every active root, so that the
// agent trusts the relay's server certificate before and after the old
// root is retired.
func (r *Relay) renewCert(ctx context.Context, id identity.Agent, req *protocol.RenewRequest) (*protocol.RenewResponse, time.Time, *ca.Root, error) {
	rec, err := r.st.store.Agent(ctx, id.ID)
	switch {
	case errors.Is(err, store.ErrNotFound) || (err == nil && rec.Tenant != id.Tenant):
		return nil, time.Time{}, nil, protocol.Errorf(protocol.CodeUnknownAgent, "agent %s is not registered with this relay", id.ID)
	case err != nil:
		return nil, time.Time{}, nil, protocol.Errorf(protocol.CodeInternal, "look up agent: %v", err)
	case !rec.RevokedAt.IsZero():
		return nil, time.Time{}, nil, revokedError(rec)
	}
	csr, err := ca.CheckCSR(req.CSR)
	if err != nil {
		return nil, time.Time{}, nil, err
	}
	now := r.cfg.Now()
	authority := r.st.CA()
	root := authority.Signer()
	cert, err := authority.SignAgent(root, csr, id, r.cfg.AgentCertLifetime, now)
	if err != nil {
		return nil, time.Time{}, nil, protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	if err := r.st.store.SetAgentCert(ctx, id.ID, cert.SerialNumber.Text(16), cert.NotAfter, root.ID()); err != nil {
		return nil, time.Time{}, nil, protocol.Errorf(protocol.CodeInternal, "record certificate: %v", err)
	}
	var chain bytes.Buffer
	pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	return &protocol.RenewResponse{Certificate: chain.String(), CACertificates: string(authority.BundlePEM())}, cert.NotAfter, root, nil
}

func revokedError(a store.Agent) error {
	msg := fmt.Sprintf("agent %s was revoked at %s", a.ID, a.RevokedAt.Format(time.RFC3339))
	if a.RevokedReason != "" {
		msg += " (" + a.RevokedReason + ")"
	}
	return protocol.Errorf(protocol.CodeRevoked, "%s: enrol it again with a new join token if it should serve", msg)
}

// tenantLimits is a tenant's limits as the relay enforces them.
type tenantLimits struct {
	store.Limits
	nets []netip.Prefix
}

// allows reports whether an agent may connect from addr.
func (l *tenantLimits) allows(addr net.Addr) bool {
	if len(l.nets) == 0 {
		return true
	}
	ip, ok := addrIP(addr)
	if !ok {
		return false
	}
	for _, n := range l.nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

func addrIP(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, ok := netip.AddrFromSlice(a.IP)
		return ip.Unmap(), ok
	case *net.UDPAddr:
		ip, ok := netip.AddrFromSlice(a.IP)
		return ip.Unmap(), ok
	}
	ap, err := netip.ParseAddrPort(a.String())
	return ap.Addr().Unmap(), err == nil
}

// ParseCIDRs parses a list of networks ("10.0.0.0/8", "2001:db8::/32", or a
// single address).
func ParseCIDRs(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("network %q: want an address or CIDR such as 10.0.0.0/8", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// policy is what the relay re-reads from the store every PolicyPoll:
// tenant limits, and revocations made by admin commands. (The CA's roots
// are re-read at the same pace: refreshCA.)
type policy struct {
	limits atomic.Pointer[map[string]*tenantLimits]

	mu       sync.Mutex
	streams  map[string]*atomic.Int64 // tenant → streams open through this relay
	limiters map[limiterKey]*limiterEntry

	revoked sync.Map // agent id → error: revocations seen since start
}

type limiterKey struct{ tenant, backend string }

type limiterEntry struct {
	lim         *rate.Limiter
	rate        float64
	burst       int
	lastTouched atomic.Int64
}

func newPolicy() *policy {
	p := &policy{streams: map[string]*atomic.Int64{}, limiters: map[limiterKey]*limiterEntry{}}
	empty := map[string]*tenantLimits{}
	p.limits.Store(&empty)
	return p
}

// limitsOf returns tenant's limits, or nil when it has none.
func (p *policy) limitsOf(tenant string) *tenantLimits { return (*p.limits.Load())[tenant] }

// admitStream applies the tenant's limits to a stream backend opens: the
// backend's open rate, then the tenant's concurrent streams. The returned
// func uncounts the stream.
func (p *policy) admitStream(tenant, backend string, l *tenantLimits) (func(), error) {
	if err := p.allowOpen(tenant, backend, l); err != nil {
		return nil, err
	}
	return p.openStream(tenant, l)
}

// openStream counts a stream open for tenant; the returned func uncounts it.
// It refuses when the tenant's stream limit is reached.
func (p *policy) openStream(tenant string, l *tenantLimits) (func(), error) {
	p.mu.Lock()
	n := p.streams[tenant]
	if n == nil {
		n = new(atomic.Int64)
		p.streams[tenant] = n
	}
	p.mu.Unlock()
	if v := n.Add(1); l != nil && l.MaxStreams > 0 && v > int64(l.MaxStreams) {
		n.Add(-1)
		return nil, protocol.Errorf(protocol.CodeLimitExceeded, "tenant %q has %d streams open, its limit", tenant, l.MaxStreams)
	}
	var once sync.Once
	return func() { once.Do(func() { n.Add(-1) }) }, nil
}

// allowOpen takes a token from backend's bucket for tenant.
func (p *policy) allowOpen(tenant, backend string, l *tenantLimits) error {
	if l == nil || l.OpenRate <= 0 {
		return nil
	}
	burst := l.OpenBurst
	if burst <= 0 {
		burst = max(1, int(l.OpenRate))
	}
	k := limiterKey{tenant, backend}
	p.mu.Lock()
	e := p.limiters[k]
	if e == nil || e.rate != l.OpenRate || e.burst != burst {
		e = &limiterEntry{lim: rate.NewLimiter(rate.Limit(l.OpenRate), burst), rate: l.OpenRate, burst: burst}
		p.limiters[k] = e
	}
	p.mu.Unlock()
	e.lastTouched.Store(time.Now().UnixNano())
	if !e.lim.Allow() {
		return protocol.Errorf(protocol.CodeLimitExceeded, "backend %q exceeded tenant %q's limit of %g stream opens per second", backend, tenant, l.OpenRate)
	}
	return nil
}

// tidy forgets rate limiters unused for a while, so that backends that come
// and go do not grow the map without bound.
func (p *policy) tidy(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, e := range p.limiters {
		if now.Sub(time.Unix(0, e.lastTouched.Load())) > 10*time.Minute {
			delete(p.limiters, k)
		}
	}
}

// watchPolicy re-reads the CA's roots, tenant limits and revocations every
// PolicyPoll until ctx ends. Revoked agents' live sessions are closed.
func (r *Relay) watchPolicy(ctx context.Context) {
	t := time.NewTicker(r.cfg.PolicyPoll)
	defer t.Stop()
	since := r.started.Add(-time.Second)
	for n := 0; ; n++ {
		r.refreshCA(ctx)
		r.refreshPolicy(ctx, since)
		if n%600 == 599 {
			r.pol.tidy(time.Now())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *Relay) refreshPolicy(ctx context.Context, revokedSince time.Time) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	defer r.metrics.storeOp("policy_poll", time.Now())
	if all, err := r.st.store.AllLimits(qctx); err != nil {
		if ctx.Err() == nil {
			r.log.Warn("read tenant limits", "err", err)
		}
	} else {
		m := make(map[string]*tenantLimits, len(all))
		for t, l := range all {
			nets, err := ParseCIDRs(l.CIDRs)
			if err != nil {
				// Fail closed: no network is allowed rather than all.
				r.log.Error("tenant limits: bad network list; refusing the tenant's agent connections", "tenant", t, "err", err)
				nets = []netip.Prefix{netip.PrefixFrom(netip.IPv6Unspecified(), 128)}
			}
			m[t] = &tenantLimits{Limits: l, nets: nets}
		}
		r.pol.limits.Store(&m)
	}
	revs, err := r.st.store.RevokedSince(qctx, revokedSince)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("read revocations", "err", err)
		}
		return
	}
	for _, rv := range revs {
		if _, seen := r.pol.revoked.Load(rv.Agent); seen {
			continue
		}
		rec, err := r.st.store.Agent(qctx, rv.Agent)
		if err != nil {
			rec = store.Agent{ID: rv.Agent, Tenant: rv.Tenant, RevokedAt: rv.At}
		}
		why := revokedError(rec)
		// Mark first, then close: serveAgent adds a session to the
		// registry, then checks the mark, so no session slips between.
		r.pol.revoked.Store(rv.Agent, why)
		if n := r.reg.sessionsOf(rv.Tenant, rv.Agent); n > 0 {
			// Audited before the sessions close: what an operator
			// sees happen is always in the trail.
			r.audit.Add(audit.Record{Kind: audit.Disconnect, Outcome: protocol.CodeRevoked.String(), Tenant: rv.Tenant, Agent: rv.Agent, Actor: "relay",
				Detail: map[string]any{"sessions": n, "revoked_at": rv.At}})
		}
		if n := r.reg.closeAgent(rv.Tenant, rv.Agent, why); n > 0 {
			r.log.Info("closed a revoked agent's sessions", "tenant", rv.Tenant, "agent", rv.Agent, "sessions", n)
		}
	}
}
