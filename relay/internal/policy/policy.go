// Package policy decides what the relay allows beyond identity: which
// backends reach which services (grants.go), the tenants' limits (agents,
// networks, concurrent streams, open rates) and which agents were revoked.
// Its state is read from the store and kept current by the change feed;
// the checks themselves touch no store.
package policy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/store"
)

// RevokedError is the refusal of agent a, which was revoked.
func RevokedError(a store.Agent) error {
	msg := fmt.Sprintf("agent %s was revoked at %s", a.ID, a.RevokedAt.Format(time.RFC3339))
	if a.RevokedReason != "" {
		msg += " (" + a.RevokedReason + ")"
	}
	return protocol.Errorf(protocol.CodeRevoked, "%s: enrol it again with a new join token if it should serve", msg)
}

// Limits is a tenant's limits as the relay enforces them.
type Limits struct {
	store.Limits
	nets []netip.Prefix
}

// Allows reports whether an agent may connect from addr.
func (l *Limits) Allows(addr net.Addr) bool {
	if len(l.nets) == 0 {
		return true
	}
	ip, ok := AddrIP(addr)
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

// AddrIP is the IP address of a TCP or UDP address, IPv4-mapped IPv6
// addresses unmapped.
func AddrIP(a net.Addr) (netip.Addr, bool) {
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

// Policy is the relay's live view of limits and revocations, and the
// counters its limits are enforced with.
type Policy struct {
	log    *slog.Logger
	limits atomic.Pointer[map[string]*Limits]

	mu       sync.Mutex               // guards streams and limiters
	streams  map[string]*atomic.Int64 // tenant → streams open through this relay
	limiters map[limiterKey]*limiterEntry

	revoked sync.Map // agent id → error: revocations applied since start
}

type limiterKey struct{ tenant, backend string }

type limiterEntry struct {
	lim         *rate.Limiter
	rate        float64
	burst       int
	lastTouched atomic.Int64
}

// New returns a policy without limits or revocations; LoadLimits reads
// them.
func New(log *slog.Logger) *Policy {
	p := &Policy{log: log, streams: map[string]*atomic.Int64{}, limiters: map[limiterKey]*limiterEntry{}}
	empty := map[string]*Limits{}
	p.limits.Store(&empty)
	return p
}

// LimitsOf returns tenant's limits, or nil when it has none.
func (p *Policy) LimitsOf(tenant string) *Limits { return (*p.limits.Load())[tenant] }

// LoadLimits reads every tenant's limits from st and applies them. A
// tenant whose stored network list does not parse is refused every agent
// connection (fail closed) and logged.
func (p *Policy) LoadLimits(ctx context.Context, st *store.Store) error {
	all, err := st.AllLimits(ctx)
	if err != nil {
		return fmt.Errorf("read tenant limits: %w", err)
	}
	m := make(map[string]*Limits, len(all))
	for t, l := range all {
		nets, err := ParseCIDRs(l.CIDRs)
		if err != nil {
			p.log.Error("tenant limits: bad network list; refusing the tenant's agent connections", "tenant", t, "err", err)
			nets = []netip.Prefix{netip.PrefixFrom(netip.IPv6Unspecified(), 128)}
		}
		m[t] = &Limits{Limits: l, nets: nets}
	}
	p.limits.Store(&m)
	return nil
}

// AdmitStream applies the tenant's limits to a stream backend opens: the
// backend's open rate, then the tenant's concurrent streams. The returned
// func uncounts the stream.
func (p *Policy) AdmitStream(tenant, backend string) (func(), error) {
	l := p.LimitsOf(tenant)
	if err := p.allowOpen(tenant, backend, l); err != nil {
		return nil, err
	}
	return p.openStream(tenant, l)
}

// openStream counts a stream open for tenant; the returned func uncounts it.
// It refuses when the tenant's stream limit is reached.
func (p *Policy) openStream(tenant string, l *Limits) (func(), error) {
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
func (p *Policy) allowOpen(tenant, backend string, l *Limits) error {
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

// limiterIdle is how long a backend's rate limiter for a tenant is kept
// unused before Tidy forgets it.
const limiterIdle = 10 * time.Minute

// Tidy forgets rate limiters unused for a while, so that backends that
// come and go do not grow the map without bound.
func (p *Policy) Tidy(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, e := range p.limiters {
		if now.Sub(time.Unix(0, e.lastTouched.Load())) > limiterIdle {
			delete(p.limiters, k)
		}
	}
}

// Revoke records that agent was revoked, with the refusal it gets from
// now on. It reports whether the revocation is new to this relay.
func (p *Policy) Revoke(agent string, why error) bool {
	_, seen := p.revoked.LoadOrStore(agent, why)
	return !seen
}

// Revoked returns the refusal of an agent revoked since start, or nil.
func (p *Policy) Revoked(agent string) error {
	why, ok := p.revoked.Load(agent)
	if !ok {
		return nil
	}
	return why.(error)
}
