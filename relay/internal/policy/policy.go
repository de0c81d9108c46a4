// Package policy decides what the relay allows beyond identity: which
// backends reach which services (grants.go), the tenants' limits (agents,
// networks, concurrent streams, open rates, bandwidth) and which agents
// were revoked.
// Its state is read from the store and kept current by the change feed;
// the checks themselves touch no store.
package policy

import (
	"context"
	"errors"
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

// StoreStalled is the refusal of a step of an agent's handshake or
// renewal (what) whose store call, bounded by ctx's deadline of limit
// (the handshake's time), failed with err because the store did not
// answer in time: unavailable, saying so, so that the agent tries again
// later or at another relay. It is nil for any other failure, which the
// caller maps itself.
func StoreStalled(ctx context.Context, what string, limit time.Duration, err error) error {
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
		return protocol.Errorf(protocol.CodeUnavailable, "%s: this relay's store did not answer within the handshake's %v: try again, or another relay", what, limit)
	}
	return nil
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

	bwMu      sync.Mutex            // guards bandwidth
	bandwidth map[string]*Bandwidth // tenant → its limiters, for tenants with a bandwidth limit

	revoked sync.Map // agent id → error: revocations applied since start
}

// Bandwidth is a tenant's bandwidth limit as token buckets of bytes, one
// for each direction, shared by all the tenant's streams through this
// relay. A change of the limit changes the buckets in place, so streams
// already open follow it; a limit lifted makes them unlimited (rate.Inf).
type Bandwidth struct {
	// ToService limits the bytes the tenant's backends send to its
	// services; FromService the bytes that come back.
	ToService, FromService *rate.Limiter
}

// bandwidthBurst is the bucket size for a limit of bps bytes per second: a
// tenth of a second's worth, at least 4 KiB and at most 4 MiB. A stream
// that has waited moves at most this much at once, so the rate holds to
// within a tenth of a second; small requests within it do not wait.
func bandwidthBurst(bps int64) int {
	return int(min(max(bps/10, 4<<10), 4<<20))
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
	p := &Policy{log: log, streams: map[string]*atomic.Int64{}, limiters: map[limiterKey]*limiterEntry{}, bandwidth: map[string]*Bandwidth{}}
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
	p.setBandwidth(m)
	return nil
}

// setBandwidth makes the bandwidth limiters match limits: new ones for
// tenants that gained a limit, the same ones changed in place for those
// whose limit changed, and those of tenants whose limit was lifted made
// unlimited (for the streams that hold them) and forgotten.
func (p *Policy) setBandwidth(limits map[string]*Limits) {
	p.bwMu.Lock()
	defer p.bwMu.Unlock()
	for t, bw := range p.bandwidth {
		if l := limits[t]; l == nil || l.Bandwidth <= 0 {
			for _, lim := range []*rate.Limiter{bw.ToService, bw.FromService} {
				lim.SetLimit(rate.Inf)
			}
			delete(p.bandwidth, t)
			p.log.Info("tenant bandwidth limit lifted", "tenant", t)
		}
	}
	for t, l := range limits {
		if l.Bandwidth <= 0 {
			continue
		}
		r, burst := rate.Limit(l.Bandwidth), bandwidthBurst(l.Bandwidth)
		bw := p.bandwidth[t]
		if bw == nil {
			p.bandwidth[t] = &Bandwidth{ToService: rate.NewLimiter(r, burst), FromService: rate.NewLimiter(r, burst)}
			p.log.Info("tenant bandwidth limit set", "tenant", t, "bytes_per_second", l.Bandwidth)
			continue
		}
		if bw.ToService.Limit() == r && bw.ToService.Burst() == burst {
			continue
		}
		for _, lim := range []*rate.Limiter{bw.ToService, bw.FromService} {
			lim.SetLimit(r)
			lim.SetBurst(burst)
		}
		p.log.Info("tenant bandwidth limit set", "tenant", t, "bytes_per_second", l.Bandwidth)
	}
}

// BandwidthOf returns tenant's bandwidth limiters, or nil when its
// bandwidth is unlimited.
func (p *Policy) BandwidthOf(tenant string) *Bandwidth {
	p.bwMu.Lock()
	defer p.bwMu.Unlock()
	return p.bandwidth[tenant]
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

// OpenBurst is the burst of stream opens a tenant's limits allow a backend
// at once, with open_rate rate (> 0) and open_burst burst: burst, or when
// that is not set (0) the rate, at least 1.
func OpenBurst(rate float64, burst int) int {
	if burst > 0 {
		return burst
	}
	return max(1, int(rate))
}

// allowOpen takes a token from backend's bucket for tenant.
func (p *Policy) allowOpen(tenant, backend string, l *Limits) error {
	if l == nil || l.OpenRate <= 0 {
		return nil
	}
	burst := OpenBurst(l.OpenRate, l.OpenBurst)
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
