package history

import (
	"cmp"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// Line is one value over a Window: one number per Window.Times, NaN where
// there is none.
type Line []float64

// Points counts the values of l that are not NaN.
func (l Line) Points() int {
	n := 0
	for _, v := range l {
		if !math.IsNaN(v) {
			n++
		}
	}
	return n
}

// Window is a copy of part of the history, for one page.
type Window struct {
	// Times are the ends of the intervals, oldest first. With
	// Query.Live the last is now, an interval shorter than the others.
	Times []time.Time
	// Relay is the relay's own history (Query.Relay).
	Relay RelayHistory
	// Tenants are the tenants asked for that have a series, by name.
	Tenants []TenantHistory
	// Agents are the agents asked for that have a series, by tenant and
	// id.
	Agents []AgentHistory
	// Events are the connects and disconnects asked for, newest first.
	Events []Event
	// Interval is the time between samples.
	Interval time.Duration
	// Untracked counts the tenants and agents that had something to show
	// in the last interval but no series, the Recorder's bounds being
	// reached: of the tenant asked for (Query.Tenant), or of every tenant.
	Untracked int
}

// RelayHistory is the relay's values over a Window.
type RelayHistory struct {
	// Opens are stream opens per second by outcome, of every tenant and
	// of requests whose tenant is not known.
	Opens map[string]Line
	// SessionsOpened, SessionsEnded and HandshakesRefused count agent
	// sessions in each interval.
	SessionsOpened, SessionsEnded, HandshakesRefused Line
	// Levels at the end of each interval.
	Agents, Sessions, StreamsOpen, FrontConnections, Goroutines, HeapInuse Line
	// Store is the mean latency of store operations in each interval, in
	// seconds, by op.
	Store map[string]Line
}

// TenantHistory is one tenant's values over a Window.
type TenantHistory struct {
	Name string
	// ToService and FromService are bytes per second through this relay.
	ToService, FromService Line
	// StreamsOpen on its agents' sessions; MaxStreams its limit (0: none).
	StreamsOpen, MaxStreams Line
	// Agents and Sessions connected to this relay.
	Agents, Sessions Line
	// RTT is the mean round-trip time of its connected agents, RTTMax the
	// largest, in seconds.
	RTT, RTTMax Line
	// Opens are stream opens per second by outcome.
	Opens map[string]Line
	// Connected and Disconnected count its agents that came and went in
	// each interval.
	Connected, Disconnected Line
}

// AgentHistory is one agent's values over a Window.
type AgentHistory struct {
	Agent
	// ToService and FromService are bytes per second through this relay.
	ToService, FromService Line
	// RTT is the mean round-trip time of its sessions, in seconds.
	RTT      Line
	Sessions Line
}

// Query says what a Window holds.
type Query struct {
	// Relay asks for the relay's own history.
	Relay bool
	// Tenant "" asks for every tenant, else for one.
	Tenant string
	// Agents asks for the agents of the tenants asked for; Agent, with
	// Tenant, for that one agent only.
	Agents bool
	Agent  string
	// Events asks for at most this many connects and disconnects of the
	// tenants (and agent) asked for.
	Events int
	// Live adds a provisional last point, from a reading taken now, when
	// at least a second has passed since the last sample.
	Live bool
}

// Window copies what q asks for.
func (r *Recorder) Window(q Query) Window {
	var now Reading
	live := q.Live && r.cfg.Read != nil
	if live {
		now = r.cfg.Read()
		if now.At.IsZero() {
			now.At = r.cfg.Now()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var extra *sample
	if live && !r.prev.At.IsZero() && now.At.Sub(r.prev.At) >= time.Second {
		s := between(r.prev, now)
		extra = &s
	}
	n := r.cfg.Samples
	count := int(min(r.tick, uint64(n)))
	slots := make([]int, count) // oldest first
	for i := range slots {
		slots[i] = int((r.tick - uint64(count) + uint64(i)) % uint64(n))
	}
	w := Window{Interval: r.cfg.Interval, Untracked: r.untracked[q.Tenant]}
	if q.Tenant == "" {
		w.Untracked = 0
		for _, n := range r.untracked {
			w.Untracked += n
		}
	}
	for _, s := range slots {
		w.Times = append(w.Times, r.at[s])
	}
	if extra != nil {
		w.Times = append(w.Times, extra.at)
	}
	// line reads one value of se (nil: none recorded) and of the
	// provisional sample's values (nil: none).
	line := func(se *series, name string, last map[string]float64) Line {
		l := make(Line, len(w.Times))
		var c []float32
		if se != nil {
			c = se.cols[name]
		}
		for i, s := range slots {
			l[i] = math.NaN()
			if c != nil {
				l[i] = float64(c[s])
			}
		}
		if extra != nil {
			l[len(l)-1] = math.NaN()
			if v, ok := last[name]; ok {
				l[len(l)-1] = v
			}
		}
		return l
	}
	// prefixed reads every value of se and last named prefix+key, by key.
	prefixed := func(se *series, prefix string, last map[string]float64) map[string]Line {
		keys := map[string]bool{}
		if se != nil {
			for k := range se.cols {
				if rest, ok := strings.CutPrefix(k, prefix); ok {
					keys[rest] = true
				}
			}
		}
		for k := range last {
			if rest, ok := strings.CutPrefix(k, prefix); ok {
				keys[rest] = true
			}
		}
		out := map[string]Line{}
		for k := range keys {
			out[k] = line(se, prefix+k, last)
		}
		return out
	}
	if q.Relay {
		var last map[string]float64
		if extra != nil {
			last = extra.relay
		}
		se := r.relay
		w.Relay = RelayHistory{
			Opens:          prefixed(se, pOpens, last),
			SessionsOpened: line(se, vOpened, last), SessionsEnded: line(se, vEnded, last), HandshakesRefused: line(se, vRefused, last),
			Agents: line(se, vAgents, last), Sessions: line(se, vSessions, last), StreamsOpen: line(se, vStreams, last),
			FrontConnections: line(se, vFront, last), Goroutines: line(se, vGoroutines, last), HeapInuse: line(se, vHeap, last),
			Store: prefixed(se, pStore, last),
		}
	}
	// Tenants.
	names := map[string]bool{}
	for name := range r.tenants {
		names[name] = true
	}
	if extra != nil {
		for name := range extra.tenants {
			names[name] = true
		}
	}
	for _, name := range slices.Sorted(maps.Keys(names)) {
		if q.Tenant != "" && name != q.Tenant {
			continue
		}
		var last map[string]float64
		if extra != nil {
			last = extra.tenants[name]
		}
		se := r.tenants[name]
		w.Tenants = append(w.Tenants, TenantHistory{Name: name,
			ToService: line(se, vTo, last), FromService: line(se, vFrom, last),
			StreamsOpen: line(se, vStreams, last), MaxStreams: line(se, vLimit, last),
			Agents: line(se, vAgents, last), Sessions: line(se, vSessions, last),
			RTT: line(se, vRTT, last), RTTMax: line(se, vRTTMax, last),
			Opens:     prefixed(se, pOpens, last),
			Connected: line(se, vConn, last), Disconnected: line(se, vDisc, last),
		})
	}
	// Agents.
	if q.Agents || q.Agent != "" {
		ids := map[Agent]bool{}
		for id := range r.agents {
			ids[id] = true
		}
		if extra != nil {
			for id := range extra.agents {
				ids[id] = true
			}
		}
		sorted := slices.SortedFunc(maps.Keys(ids), func(a, b Agent) int {
			return cmp.Or(cmp.Compare(a.Tenant, b.Tenant), cmp.Compare(a.ID, b.ID))
		})
		for _, id := range sorted {
			if (q.Tenant != "" && id.Tenant != q.Tenant) || (q.Agent != "" && id.ID != q.Agent) {
				continue
			}
			var last map[string]float64
			if extra != nil {
				last = extra.agents[id]
			}
			se := r.agents[id]
			w.Agents = append(w.Agents, AgentHistory{Agent: id,
				ToService: line(se, vTo, last), FromService: line(se, vFrom, last), RTT: line(se, vRTT, last), Sessions: line(se, vSessions, last)})
		}
	}
	// Events, newest first.
	if q.Events > 0 {
		match := func(e Event) bool {
			return (q.Tenant == "" || e.Tenant == q.Tenant) && (q.Agent == "" || e.Agent == q.Agent)
		}
		if extra != nil {
			for i := len(extra.events) - 1; i >= 0 && len(w.Events) < q.Events; i-- {
				if match(extra.events[i]) {
					w.Events = append(w.Events, extra.events[i])
				}
			}
		}
		for i := len(r.events) - 1; i >= 0 && len(w.Events) < q.Events; i-- {
			if match(r.events[i]) {
				w.Events = append(w.Events, r.events[i])
			}
		}
	}
	return w
}
