package history

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func at(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

var (
	acme1   = Agent{"acme", "a1"}
	acme2   = Agent{"acme", "a2"}
	globex1 = Agent{"globex", "g1"}
)

// near reports whether got is want, to within float32 rounding.
func near(got, want float64) bool { return math.Abs(got-want) <= 1e-6*math.Max(1, math.Abs(want)) }

func lastOf(l Line) float64 { return l[len(l)-1] }

// Rates come from the counters' change over each interval, levels are
// taken as they are, and each tenant sees only its own agents.
func TestRatesAndLevels(t *testing.T) {
	r := New(Config{})
	r.Record(Reading{At: at(0),
		Agents: map[Agent]AgentReading{acme1: {Sessions: 1}, globex1: {Sessions: 2}},
		Opens:  map[Open]uint64{{"acme", "ok"}: 10, {"", "unauthenticated"}: 5},
		Relay:  RelayReading{SessionsOpened: 3, Store: map[string]StoreTotal{"audit_commit": {Count: 10, Time: 10 * time.Millisecond}}}})
	r.Record(Reading{At: at(10),
		Agents:     map[Agent]AgentReading{acme1: {Sessions: 1, ToService: 1000, FromService: 50_000, StreamsOpen: 3, RTT: 4 * time.Millisecond}, globex1: {Sessions: 2, RTT: 10 * time.Millisecond}},
		MaxStreams: map[string]int{"acme": 8},
		Opens:      map[Open]uint64{{"acme", "ok"}: 30, {"acme", "limit_exceeded"}: 5, {"", "unauthenticated"}: 25},
		Relay: RelayReading{SessionsOpened: 4, SessionsEnded: 1, Goroutines: 42,
			Store: map[string]StoreTotal{"audit_commit": {Count: 20, Time: 30 * time.Millisecond}}}})

	w := r.Window(Query{Relay: true, Agents: true})
	if len(w.Times) != 1 || !w.Times[0].Equal(at(10)) {
		t.Fatalf("times %v, want one sample at %v", w.Times, at(10))
	}
	if len(w.Tenants) != 2 || w.Tenants[0].Name != "acme" || w.Tenants[1].Name != "globex" {
		t.Fatalf("tenants %+v, want acme and globex", w.Tenants)
	}
	acme := w.Tenants[0]
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"acme to_service B/s", lastOf(acme.ToService), 100},
		{"acme from_service B/s", lastOf(acme.FromService), 5000},
		{"acme streams open", lastOf(acme.StreamsOpen), 3},
		{"acme max streams", lastOf(acme.MaxStreams), 8},
		{"acme agents", lastOf(acme.Agents), 1},
		{"acme rtt", lastOf(acme.RTT), 0.004},
		{"acme opens ok/s", lastOf(acme.Opens["ok"]), 2},
		{"acme limit refusals/s", lastOf(acme.Opens["limit_exceeded"]), 0.5},
		{"globex sessions", lastOf(w.Tenants[1].Sessions), 2},
		{"globex to_service", lastOf(w.Tenants[1].ToService), 0},
		{"relay unauthenticated/s", lastOf(w.Relay.Opens["unauthenticated"]), 2},
		{"relay ok/s", lastOf(w.Relay.Opens["ok"]), 2},
		{"relay agents", lastOf(w.Relay.Agents), 2},
		{"relay sessions", lastOf(w.Relay.Sessions), 3},
		{"relay sessions opened", lastOf(w.Relay.SessionsOpened), 1},
		{"relay sessions ended", lastOf(w.Relay.SessionsEnded), 1},
		{"relay goroutines", lastOf(w.Relay.Goroutines), 42},
		{"audit commit latency", lastOf(w.Relay.Store["audit_commit"]), 0.002},
	} {
		if !near(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if _, ok := acme.Opens["unauthenticated"]; ok {
		t.Error("refusals of an unknown tenant are counted as acme's")
	}
	if len(w.Agents) != 2 || w.Agents[0].Agent != acme1 || !near(lastOf(w.Agents[0].FromService), 5000) {
		t.Errorf("agents %+v", w.Agents)
	}

	one := r.Window(Query{Tenant: "globex", Agents: true, Events: 10})
	if len(one.Tenants) != 1 || one.Tenants[0].Name != "globex" || len(one.Agents) != 1 || one.Agents[0].Agent != globex1 {
		t.Errorf("globex's window holds %+v and %+v", one.Tenants, one.Agents)
	}
	if one.Relay.Opens != nil {
		t.Error("a tenant's window holds the relay's history")
	}
}

// Agents that come and go are events of their tenant, counted in the
// interval they happened in.
func TestConnectsAndDisconnects(t *testing.T) {
	r := New(Config{})
	r.Record(Reading{At: at(0), Agents: map[Agent]AgentReading{acme1: {Sessions: 1}}})
	r.Record(Reading{At: at(10), Agents: map[Agent]AgentReading{acme1: {Sessions: 2}, acme2: {Sessions: 1}, globex1: {Sessions: 1}}})
	r.Record(Reading{At: at(20), Agents: map[Agent]AgentReading{acme2: {Sessions: 1}, globex1: {Sessions: 1}}})

	w := r.Window(Query{Tenant: "acme", Events: 10})
	want := []Event{{At: at(20), Tenant: "acme", Agent: "a1"}, {At: at(10), Tenant: "acme", Agent: "a2", Connected: true}}
	if len(w.Events) != len(want) {
		t.Fatalf("events %+v, want %+v", w.Events, want)
	}
	for i := range want {
		if w.Events[i] != want[i] {
			t.Errorf("event %d = %+v, want %+v", i, w.Events[i], want[i])
		}
	}
	acme := w.Tenants[0]
	if acme.Connected[0] != 1 || acme.Disconnected[0] != 0 || acme.Connected[1] != 0 || acme.Disconnected[1] != 1 {
		t.Errorf("acme connected %v, disconnected %v; want [1 0] and [0 1]", acme.Connected, acme.Disconnected)
	}
	if got := r.Window(Query{Tenant: "acme", Agent: "a2", Events: 10}).Events; len(got) != 1 || got[0].Agent != "a2" {
		t.Errorf("a2's events: %+v", got)
	}
	if got := r.Window(Query{Tenant: "globex", Events: 10}).Events; len(got) != 1 || got[0].Tenant != "globex" {
		t.Errorf("globex's events: %+v", got)
	}
}

// The window keeps the last Samples intervals, oldest first, and drops a
// series that had nothing to show for a whole window.
func TestWindowWrapsAndForgets(t *testing.T) {
	r := New(Config{Samples: 4})
	r.Record(Reading{At: at(0)})
	for i := 1; i <= 6; i++ {
		rd := Reading{At: at(10 * i), Agents: map[Agent]AgentReading{}}
		if i <= 2 {
			rd.Agents[acme1] = AgentReading{Sessions: 1}
		}
		r.Record(rd)
	}
	w := r.Window(Query{Agents: true})
	if len(w.Times) != 4 || !w.Times[0].Equal(at(30)) || !w.Times[3].Equal(at(60)) {
		t.Errorf("times %v, want 30 s to 60 s", w.Times)
	}
	// a1 was last seen at 20 s, before the window: it is forgotten; its
	// disconnect at 30 s keeps acme.
	if len(w.Agents) != 0 {
		t.Errorf("agents %+v, want a1 forgotten", w.Agents)
	}
	if len(w.Tenants) != 1 || w.Tenants[0].Disconnected[0] != 1 || w.Tenants[0].Agents.Points() != 1 {
		t.Fatalf("tenants %+v, want acme with its disconnect at 30 s only", w.Tenants)
	}
	r.Record(Reading{At: at(70)})
	if w := r.Window(Query{Agents: true}); len(w.Tenants) != 0 || len(w.Agents) != 0 {
		t.Errorf("a window after the agent left: tenants %+v, agents %+v; want none", w.Tenants, w.Agents)
	}
}

// Series are bounded: tenants and agents past the bounds are counted,
// not kept, and events keep the newest.
func TestBounds(t *testing.T) {
	r := New(Config{MaxTenants: 1, MaxAgents: 2, MaxEvents: 2})
	r.Record(Reading{At: at(0)})
	r.Record(Reading{At: at(10), Agents: map[Agent]AgentReading{acme1: {Sessions: 1}, acme2: {Sessions: 1}, globex1: {Sessions: 1}}})
	w := r.Window(Query{Agents: true, Events: 10})
	if len(w.Tenants) != 1 || len(w.Agents) != 2 {
		t.Errorf("%d tenants and %d agents kept, want 1 and 2", len(w.Tenants), len(w.Agents))
	}
	if w.Untracked != 2 {
		t.Errorf("untracked = %d, want 2 (a tenant and an agent)", w.Untracked)
	}
	if len(w.Events) != 2 {
		t.Errorf("%d events kept, want 2", len(w.Events))
	}
}

// agentsOfTenant makes n connected agents of tenant, ids tenant-00 ….
func agentsOfTenant(tenant string, n int, into map[Agent]AgentReading) map[Agent]AgentReading {
	if into == nil {
		into = map[Agent]AgentReading{}
	}
	for i := range n {
		into[Agent{tenant, fmt.Sprintf("%s-%02d", tenant, i)}] = AgentReading{Sessions: 1, ToService: 100}
	}
	return into
}

// One tenant with many agents cannot leave another without agent
// series: the bound on agents is shared fairly, and the share does not
// swing back and forth. The count of agents without a series is each
// tenant's own.
func TestAgentSeriesSharedBetweenTenants(t *testing.T) {
	r := New(Config{MaxAgents: 4})
	r.Record(Reading{At: at(0)})
	// Big comes first and takes every series.
	r.Record(Reading{At: at(10), Agents: agentsOfTenant("big", 10, nil)})
	if w := r.Window(Query{Tenant: "big", Agents: true}); len(w.Agents) != 4 || w.Untracked != 6 {
		t.Fatalf("big alone: %d agents with a series, %d without; want 4 and 6", len(w.Agents), w.Untracked)
	}
	// Small's two agents connect: they get series, taken from big.
	both := agentsOfTenant("small", 2, agentsOfTenant("big", 10, nil))
	for i := 2; i <= 4; i++ {
		r.Record(Reading{At: at(10 * i), Agents: both})
	}
	small := r.Window(Query{Tenant: "small", Agents: true})
	if len(small.Agents) != 2 {
		t.Fatalf("small has %d agents with a series beside big's ten, want 2 (of a bound of 4)", len(small.Agents))
	}
	for _, a := range small.Agents {
		// Every sample since it connected, without a gap.
		if got := a.Sessions.Points(); got != 3 {
			t.Errorf("small's agent %s has %d points, want 3", a.ID, got)
		}
	}
	if small.Untracked != 0 {
		t.Errorf("small's page counts %d without history, want 0 (big's are not its own)", small.Untracked)
	}
	big := r.Window(Query{Tenant: "big", Agents: true})
	if len(big.Agents) != 2 || big.Untracked != 8 {
		t.Errorf("big: %d agents with a series, %d without; want 2 and 8", len(big.Agents), big.Untracked)
	}
	// Big keeps the same two (no swinging): each has a point at every
	// sample.
	for _, a := range big.Agents {
		if a.Sessions.Points() != 4 {
			t.Errorf("big's agent %s: %d points, want 4 (kept throughout)", a.ID, a.Sessions.Points())
		}
	}
	if all := r.Window(Query{Agents: true}); len(all.Agents) != 4 || all.Untracked != 8 {
		t.Errorf("the relay: %d agents with a series, %d without; want 4 and 8", len(all.Agents), all.Untracked)
	}

	// Three tenants wanting ten each share seven: none holds more than
	// one more than another.
	r = New(Config{MaxAgents: 7})
	r.Record(Reading{At: at(0)})
	three := agentsOfTenant("c", 10, agentsOfTenant("b", 10, agentsOfTenant("a", 10, nil)))
	for i := 1; i <= 3; i++ {
		r.Record(Reading{At: at(10 * i), Agents: three})
	}
	held := map[string]int{}
	for _, a := range r.Window(Query{Agents: true}).Agents {
		held[a.Tenant]++
	}
	if held["a"]+held["b"]+held["c"] != 7 || slices.Max([]int{held["a"], held["b"], held["c"]})-slices.Min([]int{held["a"], held["b"], held["c"]}) > 1 {
		t.Errorf("seven series among three tenants: %v, want 3, 2, 2 in some order", held)
	}
}

// One tenant whose agents keep connecting and disconnecting cannot push
// another tenant's connects and disconnects out of the history.
func TestEventsSharedBetweenTenants(t *testing.T) {
	r := New(Config{MaxEvents: 10})
	r.Record(Reading{At: at(0)})
	calm := Agent{"calm", "c1"}
	for i := 1; i <= 6; i++ {
		rd := Reading{At: at(10 * i), Agents: map[Agent]AgentReading{calm: {Sessions: 1}}}
		if i%2 == 1 {
			rd.Agents = agentsOfTenant("flappy", 20, rd.Agents) // 20 connects, then 20 disconnects
		}
		r.Record(rd)
	}
	if got := r.Window(Query{Tenant: "calm", Events: 10}).Events; len(got) != 1 || got[0].Agent != "c1" || !got[0].Connected {
		t.Errorf("calm's events after flappy's 120: %+v, want its one connect", got)
	}
	all := r.Window(Query{Events: 100}).Events
	if len(all) != 10 {
		t.Errorf("%d events kept, want the bound, 10", len(all))
	}
	if n := len(r.Window(Query{Tenant: "flappy", Events: 100}).Events); n != 9 {
		t.Errorf("flappy keeps %d events, want 9 (the rest of the bound)", n)
	}
}

// A live window ends with a provisional point from a reading taken now,
// which is not kept; a reading from before the last is ignored.
func TestLivePoint(t *testing.T) {
	var mu sync.Mutex
	now := Reading{At: at(0), Agents: map[Agent]AgentReading{acme1: {Sessions: 1}}}
	read := func() Reading {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	r := New(Config{Read: read})
	r.Record(read())
	if w := r.Window(Query{Live: true, Tenant: "acme"}); len(w.Times) != 0 {
		t.Errorf("a live window less than a second after the first reading has %d points", len(w.Times))
	}
	mu.Lock()
	now = Reading{At: at(4), Agents: map[Agent]AgentReading{acme1: {Sessions: 1, FromService: 4000}}}
	mu.Unlock()
	w := r.Window(Query{Live: true, Tenant: "acme", Agents: true})
	if len(w.Times) != 1 || !near(lastOf(w.Tenants[0].FromService), 1000) || !near(lastOf(w.Agents[0].FromService), 1000) {
		t.Fatalf("live window %+v, want one point of 1000 B/s", w)
	}
	if w := r.Window(Query{Tenant: "acme"}); len(w.Times) != 0 {
		t.Errorf("the provisional point was kept: %v", w.Times)
	}
	r.Record(Reading{At: at(-5)})
	if w := r.Window(Query{Tenant: "acme"}); len(w.Times) != 0 {
		t.Errorf("a reading from the past made a sample: %v", w.Times)
	}
}

// Run records at once and then every interval, and returns when its
// context ends.
func TestRun(t *testing.T) {
	readings := make(chan struct{}, 100)
	r := New(Config{Interval: time.Millisecond, Read: func() Reading {
		select {
		case readings <- struct{}{}:
		default:
		}
		return Reading{}
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	for range 3 {
		<-readings
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if w := r.Window(Query{Relay: true}); len(w.Times) < 2 {
		t.Errorf("%d samples after 3 readings", len(w.Times))
	}
}
