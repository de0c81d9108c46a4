package throttle

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Refusal reasons every door uses; doors may add their own.
const (
	ReasonThrottled = "throttled" // refused by a Limiter before the credential was checked
)

// Summary is an audit record's worth of refusals: those of one door,
// source and reason. The first refusal of each in an interval is told at
// once (Count 1, Opening), the rest together at the interval's end.
type Summary struct {
	Door, Source, Reason string
	// Tenant is the tenant the refusals are of (AddFor), "" for none.
	Tenant      string
	Count       int
	First, Last time.Time
	// Identities are the claimed identities seen (token ids, certificate
	// serials, subjects), at most MaxIdentities of them.
	Identities []string
	// Opening marks the summary of the first refusal of the interval.
	Opening bool
}

// MaxIdentities bounds Summary.Identities.
const MaxIdentities = 5

// Detail is the detail of the audit record of s: door, source, reason,
// count, first and last (RFC 3339, UTC), the identities claimed when
// there are any, and summed: true for the sum of an interval (not its
// opening refusal).
func (s Summary) Detail() map[string]any {
	d := map[string]any{"door": s.Door, "source": s.Source, "reason": s.Reason, "count": s.Count,
		"first": s.First.UTC().Format(time.RFC3339Nano), "last": s.Last.UTC().Format(time.RFC3339Nano)}
	if len(s.Identities) > 0 {
		d["identities"] = s.Identities
	}
	if !s.Opening {
		d["summed"] = true
	}
	return d
}

// TallyConfig configures a Tally. The zero value works but records
// nothing.
type TallyConfig struct {
	// MaxKeys bounds the door, source and reason combinations summed in
	// one interval; refusals beyond are summed under the source "*".
	// Default 1000.
	MaxKeys int
	// Record is told each summary (typically: write an audit record). It
	// is called without the tally's lock held.
	Record func(Summary)
	// Refusals, when set, counts every refusal by door and reason
	// (NewRefusals).
	Refusals *prometheus.CounterVec
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Tally sums refusals per door, source and reason over an interval, so a
// flood of failed attempts costs at most two audit records per source
// and reason per interval. Its owner calls Flush at the end of each
// interval (and when it stops). It is safe for concurrent use.
type Tally struct {
	cfg TallyConfig

	mu   sync.Mutex // guards sums
	sums map[tallyKey]*Summary
}

type tallyKey struct{ tenant, door, source, reason string }

// NewTally returns a Tally.
func NewTally(cfg TallyConfig) *Tally {
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = 1000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Record == nil {
		cfg.Record = func(Summary) {}
	}
	return &Tally{cfg: cfg, sums: map[tallyKey]*Summary{}}
}

// NewRefusals returns the counter of refusals by door and reason,
// tether_auth_refusals_total, for one registry: every door shares it.
func NewRefusals() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tether_auth_refusals_total",
		Help: "Failed and throttled authentication attempts, by door (admin_api, login, sso, socks5, connect, connect-tls, http-proxy, http-proxy-tls, enrol; renew for refused renewals) and reason.",
	}, []string{"door", "reason"})
}

// Add counts one refusal at door of an attempt from source (Source) for
// reason, claiming identity ("" if none).
func (t *Tally) Add(door, source, reason, identity string) {
	t.AddFor("", door, source, reason, identity)
}

// AddFor is Add for a refusal of tenant's: it is summed apart from the
// other tenants' (Summary.Tenant), so that its audit record may go into
// the tenant's trail.
func (t *Tally) AddFor(tenant, door, source, reason, identity string) {
	if t.cfg.Refusals != nil {
		t.cfg.Refusals.WithLabelValues(door, reason).Inc()
	}
	now := t.cfg.Now()
	k := tallyKey{tenant, door, source, reason}
	t.mu.Lock()
	s := t.sums[k]
	if s == nil && len(t.sums) >= t.cfg.MaxKeys {
		k.source = "*"
		s = t.sums[k]
	}
	if s == nil {
		// The first of the interval is told at once; the sum starts
		// after it.
		t.sums[k] = &Summary{Tenant: tenant, Door: door, Source: k.source, Reason: reason}
		t.mu.Unlock()
		first := Summary{Tenant: tenant, Door: door, Source: k.source, Reason: reason, Count: 1, First: now, Last: now, Opening: true}
		if identity != "" {
			first.Identities = []string{identity}
		}
		t.cfg.Record(first)
		return
	}
	if s.Count == 0 {
		s.First = now
	}
	s.Count++
	s.Last = now
	if identity != "" && len(s.Identities) < MaxIdentities && !slices.Contains(s.Identities, identity) {
		s.Identities = append(s.Identities, identity)
	}
	t.mu.Unlock()
}

// Count counts a refusal at door for reason in the metric only, for a
// refusal its door audits on its own.
func (t *Tally) Count(door, reason string) {
	if t.cfg.Refusals != nil {
		t.cfg.Refusals.WithLabelValues(door, reason).Inc()
	}
}

// Flush tells the sums of the interval that ends now and starts another.
func (t *Tally) Flush() {
	t.mu.Lock()
	sums := t.sums
	t.sums = map[tallyKey]*Summary{}
	t.mu.Unlock()
	out := make([]Summary, 0, len(sums))
	for _, s := range sums {
		if s.Count > 0 {
			out = append(out, *s)
		}
	}
	slices.SortFunc(out, func(a, b Summary) int { return a.First.Compare(b.First) })
	for _, s := range out {
		t.cfg.Record(s)
	}
}

// Keep writes t's sums and tidies the limiters every interval until ctx
// ends, then writes what is left: the upkeep a door's throttling needs,
// run by its owner on a goroutine it waits for.
func (t *Tally) Keep(ctx context.Context, interval time.Duration, limiters ...*Limiter) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			t.Flush()
			return
		case <-tick.C:
			t.Flush()
			for _, l := range limiters {
				l.Tidy()
			}
		}
	}
}
