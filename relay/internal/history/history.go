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
//
// The agents' series and the events are shared fairly between tenants,
// not first come, first served: one tenant with many agents, or with
// agents that keep reconnecting, cannot leave another without any. A
// tenant's new agent takes a series from the tenant holding the most when
// that one holds at least two more than its own tenant, so no tenant
// holds more than one series more than a tenant with an agent left
// without one (each of T tenants with agents to show has at least
// MaxAgents/T - 1). Events beyond MaxEvents are dropped oldest first from
// the tenants with the most, down to a level every tenant keeps. The
// bounds themselves are unchanged: the worst case is still MaxAgents
// agent series, MaxTenants tenant series and MaxEvents events, plus, for
// the last sample, a count per tenant of what had no series (no more
// tenants than the reading named).
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
	// disconnects kept (default 1000). Agents' series and events are
	// shared fairly between tenants (see the package's doc).
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
	tenants map[string]*series
	agents  map[Agent]*series
	// agentsOf counts the agents' series by tenant (tenants with none
	// are absent): at most MaxAgents entries.
	agentsOf map[string]int
	relay    *series
	events   []Event // oldest first, at most MaxEvents
	// untracked counts, by tenant, the tenant's own series and its
	// agents' that had something to show at the last sample but no
	// series, the bounds being reached.
	untracked map[string]int
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
	return &Recorder{cfg: cfg, at: make([]time.Time, cfg.Samples), tenants: map[string]*series{}, agents: map[Agent]*series{},
		agentsOf: map[string]int{}, relay: newSeries(), untracked: map[string]int{}}
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
	clear(r.untracked)
	write := func(se *series, values map[string]float64) {
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
		se, ok := r.tenants[name]
		if !ok {
			if len(r.tenants) >= r.cfg.MaxTenants {
				r.untracked[name]++
				continue
			}
			se = newSeries()
			r.tenants[name] = se
		}
		write(se, v)
	}
	// Agents with a series go on; the others are given one in turns, a
	// tenant at a time, while there is room or a fairer share to take.
	var fresh []Agent
	for id, v := range s.agents {
		if se, ok := r.agents[id]; ok {
			write(se, v)
		} else {
			fresh = append(fresh, id)
		}
	}
	most := -1 // the most series a tenant holds; -1 until needed
	for _, id := range inTurns(fresh) {
		if len(r.agents) >= r.cfg.MaxAgents {
			if most < 0 {
				most = maxCount(r.agentsOf)
			}
			if most < r.agentsOf[id.Tenant]+2 || !r.evictAgentLocked(id.Tenant) {
				r.untracked[id.Tenant]++
				continue
			}
			most = -1
		}
		se := newSeries()
		r.agents[id] = se
		r.agentsOf[id.Tenant]++
		if most >= 0 {
			most = max(most, r.agentsOf[id.Tenant])
		}
		write(se, s.agents[id])
	}
	for name, se := range r.tenants {
		if r.tick-se.last >= uint64(n) {
			delete(r.tenants, name)
		}
	}
	for id, se := range r.agents {
		if r.tick-se.last >= uint64(n) {
			r.dropAgentLocked(id)
		}
	}
	r.events = append(r.events, s.events...)
	r.events = fairTrim(r.events, r.cfg.MaxEvents)
}

// inTurns orders agents a tenant at a time (tenants by name, each
// tenant's agents by id): every tenant's first, then every tenant's
// second, and so on.
func inTurns(ids []Agent) []Agent {
	if len(ids) < 2 {
		return ids
	}
	slices.SortFunc(ids, func(a, b Agent) int { return cmp.Or(cmp.Compare(a.Tenant, b.Tenant), cmp.Compare(a.ID, b.ID)) })
	turn := make([]int, len(ids)) // each agent's place among its tenant's
	for i := 1; i < len(ids); i++ {
		if ids[i].Tenant == ids[i-1].Tenant {
			turn[i] = turn[i-1] + 1
		}
	}
	order := make([]int, len(ids))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(turn[a], turn[b]) })
	out := make([]Agent, len(ids))
	for i, j := range order {
		out[i] = ids[j]
	}
	return out
}

// maxCount is the largest count of m, 0 when it is empty.
func maxCount(m map[string]int) int {
	most := 0
	for _, c := range m {
		most = max(most, c)
	}
	return most
}

// evictAgentLocked makes room for an agent of tenant: it drops the series
// of the tenant holding the most (the first by name among equals), if
// that one holds at least two more than tenant, that was written longest
// ago (the first by id among equals), and reports whether it did. A
// series written at this sample had something to show: its agent counts
// as untracked.
func (r *Recorder) evictAgentLocked(tenant string) bool {
	richest, most := "", 0
	for t, c := range r.agentsOf {
		if c > most || (c == most && t < richest) {
			richest, most = t, c
		}
	}
	if most < r.agentsOf[tenant]+2 {
		return false
	}
	var victim Agent
	var oldest *series
	for id, se := range r.agents {
		if id.Tenant != richest {
			continue
		}
		if oldest == nil || se.last < oldest.last || (se.last == oldest.last && id.ID < victim.ID) {
			victim, oldest = id, se
		}
	}
	if oldest.last == r.tick {
		r.untracked[richest]++
	}
	r.dropAgentLocked(victim)
	return true
}

// dropAgentLocked forgets an agent's series.
func (r *Recorder) dropAgentLocked(id Agent) {
	delete(r.agents, id)
	if r.agentsOf[id.Tenant]--; r.agentsOf[id.Tenant] <= 0 {
		delete(r.agentsOf, id.Tenant)
	}
}

// fairTrim keeps at most limit of events (oldest first): when there are
// more, every tenant keeps its newest, up to the largest number each can
// keep within limit, and the tenants with more lose their oldest.
func fairTrim(events []Event, limit int) []Event {
	if len(events) <= limit {
		return events
	}
	counts := map[string]int{}
	for _, e := range events {
		counts[e.Tenant]++
	}
	within := func(level int) bool {
		sum := 0
		for _, c := range counts {
			sum += min(c, level)
		}
		return sum <= limit
	}
	lo, hi := 0, limit // within(lo) holds; the level is at most limit
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		if within(mid) {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	kept := map[string]int{}
	keep := make([]bool, len(events))
	for i := len(events) - 1; i >= 0; i-- {
		if t := events[i].Tenant; kept[t] < lo {
			kept[t]++
			keep[i] = true
		}
	}
	out := events[:0]
	for i, e := range events {
		if keep[i] {
			out = append(out, e)
		}
	}
	clear(events[len(out):]) // no stale strings kept past the slice's end
	return out
}
