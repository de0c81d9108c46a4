// Package history keeps the relay's recent past in memory for the
// console's charts. Every Interval (10 s) the relay hands it a Reading of
// its cumulative counters and live levels; it keeps, for the last Samples
// intervals (an hour), the rates and levels of every tenant, of every
// agent, and of the relay itself, and the agents' connects and
// disconnects. Nothing is written anywhere: a restarted relay starts a new
// history.
//
// What it keeps is bounded whatever the fleet does: series for at most
// MaxTenants tenants and MaxAgents agents (each an array of float32 per
// value and interval: about 20 KiB a tenant and 6 KiB an agent with the
// defaults, 26 MiB at the very most), at most MaxEvents events, and a
// series is dropped once it had nothing to show for a whole window.
package history

import (
	"cmp"
	"context"
	"math"
	"slices"
	"sync"
	"time"
)

// Config configures a Recorder. The zero value works, but Run needs Read.
type Config struct {
	// Interval is how often Run takes a reading. Default 10s.
	Interval time.Duration
	// Samples is how many intervals are kept. Default 360 (an hour of
	// 10 s intervals).
	Samples int
	// MaxTenants and MaxAgents bound the tenants and agents with series
	// of their own (default 1000 each); MaxEvents the connects and
	// disconnects kept (default 1000).
	MaxTenants, MaxAgents, MaxEvents int
	// Read takes a reading of the relay; Run calls it every Interval,
	// Window for a provisional last point.
	Read func() Reading
	// Now is the clock for readings without a time. Default time.Now.
	Now func() time.Time
}

// Agent names an agent.
type Agent struct{ Tenant, ID string }

// Reading is the relay at one moment: counters since it started (which
// never go down) and levels now.
type Reading struct {
	At time.Time
	// Agents are the agents connected now and those whose streams moved
	// bytes since the relay started.
	Agents map[Agent]AgentReading
	// MaxStreams is each tenant's limit on open streams (absent or 0:
	// none).
	MaxStreams map[string]int
	// Opens counts stream opens by tenant ("" when not known to exist)
	// and outcome.
	Opens map[Open]uint64
	Relay RelayReading
}

// AgentReading is one agent in a Reading.
type AgentReading struct {
	// ToService and FromService are the bytes its streams moved through
	// this relay, those still open included.
	ToService, FromService uint64
	// Sessions connected to this relay now (0: not connected) and the
	// streams open on them.
	Sessions    int
	StreamsOpen int64
	// RTT is the mean round-trip time last measured on its sessions; 0
	// when none was measured.
	RTT time.Duration
}

// Open is a tenant and an outcome of stream opens.
type Open struct{ Tenant, Outcome string }

// RelayReading is the relay's own counters and levels.
type RelayReading struct {
	// SessionsOpened and SessionsEnded count agent sessions admitted and
	// ended; HandshakesRefused those that failed or were turned away.
	SessionsOpened, SessionsEnded, HandshakesRefused uint64
	// Store is how many store operations ran, by op, and their time.
	Store map[string]StoreTotal
	// Levels now.
	Goroutines       int
	HeapInuse        uint64
	FrontConnections int
}

// StoreTotal is a count of store operations and their total time.
type StoreTotal struct {
	Count uint64
	Time  time.Duration
}

// Event is an agent that connected to this relay (its first session) or
// disconnected (its last), as seen between two readings.
type Event struct {
	At        time.Time `json:"at"`
	Tenant    string    `json:"tenant"`
	Agent     string    `json:"agent"`
	Connected bool      `json:"connected"`
}

// Recorder keeps the history. Create it with New; Run feeds it.
type Recorder struct {
	cfg Config

	mu   sync.Mutex // guards everything below
	prev Reading    // the last reading recorded; At is zero before the first
	tick uint64     // samples recorded
	at   []time.Time
	// series by tenant, by agent, and the relay's.
	tenants   map[string]*series
	agents    map[Agent]*series
	relay     *series
	events    []Event // oldest first, at most MaxEvents
	untracked int     // tenants and agents refused a series at the last sample
}

// New returns a recorder with cfg's defaults filled in.
func New(cfg Config) *Recorder {
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.Samples <= 0 {
		cfg.Samples = 360
	}
	cfg.MaxTenants = cmp.Or(max(cfg.MaxTenants, 0), 1000)
	cfg.MaxAgents = cmp.Or(max(cfg.MaxAgents, 0), 1000)
	cfg.MaxEvents = cmp.Or(max(cfg.MaxEvents, 0), 1000)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Recorder{cfg: cfg, at: make([]time.Time, cfg.Samples), tenants: map[string]*series{}, agents: map[Agent]*series{}, relay: newSeries()}
}

// Interval is the time between samples.
func (r *Recorder) Interval() time.Duration { return r.cfg.Interval }

// Run records a reading at once and then every Interval until ctx ends.
// It returns nil when ctx ends.
func (r *Recorder) Run(ctx context.Context) error {
	r.Record(r.cfg.Read())
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			r.Record(r.cfg.Read())
		}
	}
}

// Record adds a reading: the interval since the previous one becomes a
// sample. The first reading only sets the start.
func (r *Recorder) Record(rd Reading) {
	if rd.At.IsZero() {
		rd.At = r.cfg.Now()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.prev.At.IsZero() {
		r.prev = rd
		return
	}
	if !rd.At.After(r.prev.At) {
		return // a clock step backwards: wait for a later reading
	}
	s := between(r.prev, rd)
	r.prev = rd
	r.storeLocked(s)
}

// Value names of series (the keys of a series' columns).
const (
	vTo, vFrom         = "to_service", "from_service"
	vRTT, vRTTMax      = "rtt", "rtt_max"
	vStreams, vLimit   = "streams_open", "max_streams"
	vAgents, vSessions = "agents", "sessions"
	vConn, vDisc       = "connected", "disconnected"
	vOpened, vEnded    = "sessions_opened", "sessions_ended"
	vRefused           = "handshakes_refused"
	vGoroutines, vHeap = "goroutines", "heap_inuse"
	vFront             = "front_connections"
	pOpens, pStore     = "opens/", "store/"
)

// sample is what happened in one interval: values by name for the relay,
// each tenant and each agent, and the connects and disconnects.
type sample struct {
	at      time.Time
	relay   map[string]float64
	tenants map[string]map[string]float64
	agents  map[Agent]map[string]float64
	events  []Event
}

// between works out the sample of the interval from a to b.
func between(a, b Reading) sample {
	dt := b.At.Sub(a.At).Seconds()
	s := sample{at: b.At, relay: map[string]float64{}, tenants: map[string]map[string]float64{}, agents: map[Agent]map[string]float64{}}
	tenant := func(name string) map[string]float64 {
		t := s.tenants[name]
		if t == nil {
			t = map[string]float64{}
			s.tenants[name] = t
		}
		return t
	}
	type rtt struct {
		sum, max float64
		n        int
	}
	rtts := map[string]*rtt{}
	var agents, sessions float64
	for id, cur := range b.Agents {
		old := a.Agents[id]
		to, from := rate(old.ToService, cur.ToService, dt), rate(old.FromService, cur.FromService, dt)
		connected := cur.Sessions > 0
		if !connected && to == 0 && from == 0 {
			continue
		}
		v := map[string]float64{vTo: to, vFrom: from, vSessions: float64(cur.Sessions)}
		t := tenant(id.Tenant)
		t[vTo] += to
		t[vFrom] += from
		if connected {
			t[vAgents]++
			t[vSessions] += float64(cur.Sessions)
			t[vStreams] += float64(cur.StreamsOpen)
			agents++
			sessions += float64(cur.Sessions)
			if cur.RTT > 0 {
				v[vRTT] = cur.RTT.Seconds()
				x := rtts[id.Tenant]
				if x == nil {
					x = &rtt{}
					rtts[id.Tenant] = x
				}
				x.sum += cur.RTT.Seconds()
				x.max = max(x.max, cur.RTT.Seconds())
				x.n++
			}
		}
		s.agents[id] = v
	}
	for name, x := range rtts {
		s.tenants[name][vRTT] = x.sum / float64(x.n)
		s.tenants[name][vRTTMax] = x.max
	}
	// Connects and disconnects: agents whose first session came or whose
	// last went between the readings.
	for id, cur := range b.Agents {
		if cur.Sessions > 0 && a.Agents[id].Sessions == 0 {
			s.events = append(s.events, Event{At: b.At, Tenant: id.Tenant, Agent: id.ID, Connected: true})
			tenant(id.Tenant)[vConn]++
		}
	}
	for id, old := range a.Agents {
		if old.Sessions > 0 && b.Agents[id].Sessions == 0 {
			s.events = append(s.events, Event{At: b.At, Tenant: id.Tenant, Agent: id.ID})
			tenant(id.Tenant)[vDisc]++
		}
	}
	slices.SortFunc(s.events, func(x, y Event) int {
		return cmp.Or(cmp.Compare(x.Tenant, y.Tenant), cmp.Compare(x.Agent, y.Agent))
	})
	for o, n := range b.Opens {
		r := rate(a.Opens[o], n, dt)
		if r == 0 {
			continue
		}
		s.relay[pOpens+o.Outcome] += r
		if o.Tenant != "" {
			tenant(o.Tenant)[pOpens+o.Outcome] += r
		}
	}
	for name, t := range s.tenants {
		t[vLimit] = float64(b.MaxStreams[name])
		// Present, as zero, in every sample of a tenant with something
		// to show.
		for _, k := range []string{vTo, vFrom, vAgents, vSessions, vStreams, vConn, vDisc} {
			if _, ok := t[k]; !ok {
				t[k] = 0
			}
		}
	}
	ra, rb := a.Relay, b.Relay
	s.relay[vAgents] = agents
	s.relay[vSessions] = sessions
	s.relay[vOpened] = float64(delta(ra.SessionsOpened, rb.SessionsOpened))
	s.relay[vEnded] = float64(delta(ra.SessionsEnded, rb.SessionsEnded))
	s.relay[vRefused] = float64(delta(ra.HandshakesRefused, rb.HandshakesRefused))
	s.relay[vGoroutines] = float64(rb.Goroutines)
	s.relay[vHeap] = float64(rb.HeapInuse)
	s.relay[vFront] = float64(rb.FrontConnections)
	var streams float64
	for _, t := range s.tenants {
		streams += t[vStreams]
	}
	s.relay[vStreams] = streams
	for op, cur := range rb.Store {
		old := ra.Store[op]
		if n := delta(old.Count, cur.Count); n > 0 && cur.Time >= old.Time {
			s.relay[pStore+op] = (cur.Time - old.Time).Seconds() / float64(n)
		}
	}
	return s
}

// delta is b-a for a counter, 0 if it went down (it never should).
func delta(a, b uint64) uint64 {
	if b < a {
		return 0
	}
	return b - a
}

// rate is the counter's change from a to b per second over dt seconds.
func rate(a, b uint64, dt float64) float64 {
	if dt <= 0 {
		return 0
	}
	return float64(delta(a, b)) / dt
}

// series is one tenant's, agent's or the relay's values, a column of
// float32 per name with one slot per sample (NaN: none).
type series struct {
	last uint64 // the tick it was last written at
	cols map[string][]float32
}

func newSeries() *series { return &series{cols: map[string][]float32{}} }

var nan32 = float32(math.NaN())

// set writes v at slot, making the column when it is new.
func (s *series) set(name string, slot, n int, v float64) {
	c := s.cols[name]
	if c == nil {
		c = make([]float32, n)
		for i := range c {
			c[i] = nan32
		}
		s.cols[name] = c
	}
	c[slot] = float32(v)
}

func (s *series) clear(slot int) {
	for _, c := range s.cols {
		c[slot] = nan32
	}
}

// storeLocked adds s as the next sample, overwriting the oldest once the
// window is full, and drops series with nothing in the window.
func (r *Recorder) storeLocked(s sample) {
	n := r.cfg.Samples
	slot := int(r.tick % uint64(n))
	r.tick++
	r.at[slot] = s.at
	r.relay.clear(slot)
	for k, v := range s.relay {
		r.relay.set(k, slot, n, v)
	}
	r.untracked = 0
	put := func(get func() (*series, bool), add func(*series), full bool, values map[string]float64) {
		se, ok := get()
		if !ok {
			if full {
				r.untracked++
				return
			}
			se = newSeries()
			add(se)
		}
		se.last = r.tick
		for k, v := range values {
			se.set(k, slot, n, v)
		}
	}
	for _, se := range r.tenants {
		se.clear(slot)
	}
	for _, se := range r.agents {
		se.clear(slot)
	}
	for name, v := range s.tenants {
		put(func() (*series, bool) { se, ok := r.tenants[name]; return se, ok }, func(se *series) { r.tenants[name] = se },
			len(r.tenants) >= r.cfg.MaxTenants, v)
	}
	for id, v := range s.agents {
		put(func() (*series, bool) { se, ok := r.agents[id]; return se, ok }, func(se *series) { r.agents[id] = se },
			len(r.agents) >= r.cfg.MaxAgents, v)
	}
	for name, se := range r.tenants {
		if r.tick-se.last >= uint64(n) {
			delete(r.tenants, name)
		}
	}
	for id, se := range r.agents {
		if r.tick-se.last >= uint64(n) {
			delete(r.agents, id)
		}
	}
	r.events = append(r.events, s.events...)
	if extra := len(r.events) - r.cfg.MaxEvents; extra > 0 {
		r.events = slices.Delete(r.events, 0, extra)
	}
}
