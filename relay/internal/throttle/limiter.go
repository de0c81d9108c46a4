// Package throttle slows down failed authentication so that a guesser
// gains nothing from speed and cannot make the relay do unbounded work or
// write unbounded audit records: Limiter keeps a token bucket of failures
// per key (a source network, a claimed identity), and Tally turns
// refusals into a bounded number of audit records per interval, counting
// each in a metric. Both are for every door that authenticates: the admin
// API and the console's login today, the front doors and enrolment later.
// Sources bounds the unauthenticated work in progress per source address
// and network, at the agent port, the front doors and the relay-to-relay
// listener; Gate bounds it overall, at the agent port and the
// relay-to-relay listener.
package throttle

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// Config configures a Limiter. The zero value works.
type Config struct {
	// Burst is how many attempts a key may spend at once before it must
	// wait. Default 10.
	Burst int
	// Every is how long a key waits for one more attempt once its burst
	// is spent. Default 5s.
	Every time.Duration
	// MaxKeys bounds the keys the limiter remembers; the attempts of new
	// keys beyond it share one bucket (so a flood from very many sources
	// is slowed as one). Default 65536.
	MaxKeys int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Limiter is a token bucket per key: Take spends an attempt (a failure),
// Wait asks whether a key has one left without spending it. A key that
// never spends one costs nothing to remember: only keys with attempts
// spent are kept until their bucket fills again. It is safe for
// concurrent use.
type Limiter struct {
	burst   float64
	every   time.Duration
	maxKeys int
	now     func() time.Time

	mu       sync.Mutex         // guards keys and overflow
	keys     map[string]*bucket // keys with attempts outstanding
	overflow bucket             // shared by new keys when keys is full
}

// bucket holds the attempts a key has left as of at.
type bucket struct {
	tokens float64
	at     time.Time
}

// New returns a Limiter.
func New(cfg Config) *Limiter {
	if cfg.Burst <= 0 {
		cfg.Burst = 10
	}
	if cfg.Every <= 0 {
		cfg.Every = 5 * time.Second
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = 65536
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &Limiter{burst: float64(cfg.Burst), every: cfg.Every, maxKeys: cfg.MaxKeys, now: cfg.Now, keys: map[string]*bucket{}}
	l.overflow = bucket{tokens: l.burst, at: cfg.Now()}
	return l
}

// refill brings b up to now.
func (l *Limiter) refill(b *bucket, now time.Time) {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(l.burst, b.tokens+float64(d)/float64(l.every))
	}
	b.at = now
}

// bucketLocked returns key's bucket, making one when add is set (nil
// when the key has none and add is not set).
func (l *Limiter) bucketLocked(key string, now time.Time, add bool) *bucket {
	if b := l.keys[key]; b != nil {
		return b
	}
	if !add {
		if len(l.keys) >= l.maxKeys {
			return &l.overflow
		}
		return nil
	}
	if len(l.keys) >= l.maxKeys {
		l.tidyLocked(now)
	}
	if len(l.keys) >= l.maxKeys {
		return &l.overflow
	}
	b := &bucket{tokens: l.burst, at: now}
	l.keys[key] = b
	return b
}

// Take spends one attempt of key and returns 0, or, when key has none
// left, spends nothing and returns how long until it has one (for a
// Retry-After).
func (l *Limiter) Take(key string) time.Duration {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucketLocked(key, now, true)
	l.refill(b, now)
	if b.tokens >= 1 {
		b.tokens--
		return 0
	}
	return l.waitLocked(b)
}

// Wait returns how long until key has an attempt left, without spending
// one: 0 when it has.
func (l *Limiter) Wait(key string) time.Duration {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucketLocked(key, now, false)
	if b == nil {
		return 0
	}
	l.refill(b, now)
	if b.tokens >= 1 {
		return 0
	}
	return l.waitLocked(b)
}

func (l *Limiter) waitLocked(b *bucket) time.Duration {
	return time.Duration((1 - b.tokens) * float64(l.every))
}

// Tidy forgets the keys whose bucket has filled up again. Keys are also
// tidied when the limiter is full; call Tidy now and then to give the
// memory back sooner.
func (l *Limiter) Tidy() {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tidyLocked(now)
}

func (l *Limiter) tidyLocked(now time.Time) {
	for k, b := range l.keys {
		if l.refill(b, now); b.tokens >= l.burst {
			delete(l.keys, k)
		}
	}
}

// Len is how many keys the limiter remembers.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys)
}

// Source is the key of the network an attempt comes from, given its
// address as host:port (http.Request.RemoteAddr) or as a bare IP: the
// IPv4 address, or the /64 of an IPv6 address (one host usually holds a
// whole /64). Anything else is returned as it is.
func Source(addr string) string {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return addr
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is4() {
		return ip.String()
	}
	p, _ := ip.Prefix(64)
	return p.String()
}
