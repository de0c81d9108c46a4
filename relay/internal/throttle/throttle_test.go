package throttle

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a hand-moved clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClock() *clock { return &clock{t: time.Unix(1_800_000_000, 0)} }

func TestLimiterBurstThenWait(t *testing.T) {
	c := newClock()
	l := New(Config{Burst: 3, Every: 2 * time.Second, Now: c.now})
	for i := range 3 {
		if w := l.Take("a"); w != 0 {
			t.Fatalf("attempt %d: wait %v, want none within the burst", i+1, w)
		}
	}
	if w := l.Take("a"); w != 2*time.Second {
		t.Fatalf("attempt 4: wait %v, want 2s", w)
	}
	if w := l.Wait("a"); w != 2*time.Second {
		t.Fatalf("Wait: %v, want 2s", w)
	}
	// Other keys are not affected.
	if w := l.Take("b"); w != 0 {
		t.Fatalf("another key: wait %v, want none", w)
	}
	c.add(time.Second)
	if w := l.Take("a"); w != time.Second {
		t.Fatalf("after 1s: wait %v, want 1s", w)
	}
	c.add(time.Second)
	if w := l.Take("a"); w != 0 {
		t.Fatalf("after 2s: wait %v, want one attempt", w)
	}
	if w := l.Take("a"); w != 2*time.Second {
		t.Fatalf("after that attempt: wait %v, want 2s", w)
	}
}

func TestLimiterTidy(t *testing.T) {
	c := newClock()
	l := New(Config{Burst: 2, Every: time.Minute, Now: c.now})
	if w := l.Wait("never-seen"); w != 0 || l.Len() != 0 {
		t.Fatalf("Wait of an unknown key: %v, and it is remembered (%d keys)", w, l.Len())
	}
	l.Take("bad")
	l.Take("bad")
	if w := l.Take("bad"); w == 0 {
		t.Fatal("a third failure within the burst of 2 was allowed")
	}
	if n := l.Len(); n != 1 {
		t.Fatalf("the limiter remembers %d keys, want 1", n)
	}
	c.add(2 * time.Minute)
	l.Tidy()
	if n := l.Len(); n != 0 {
		t.Fatalf("after the bucket filled up again and Tidy: %d keys, want 0", n)
	}
}

// Beyond MaxKeys, new keys share one bucket: a flood from many sources is
// slowed as one, and the memory stays bounded.
func TestLimiterMaxKeys(t *testing.T) {
	c := newClock()
	l := New(Config{Burst: 1, Every: time.Minute, MaxKeys: 10, Now: c.now})
	for i := range 10 {
		if w := l.Take(fmt.Sprint("k", i)); w != 0 {
			t.Fatalf("key %d: wait %v", i, w)
		}
	}
	if w := l.Take("k10"); w != 0 {
		t.Fatalf("the first key beyond MaxKeys: wait %v, want the shared bucket's attempt", w)
	}
	if w := l.Take("k11"); w == 0 {
		t.Fatal("the second key beyond MaxKeys had an attempt of its own")
	}
	if w := l.Wait("k12"); w == 0 {
		t.Fatal("Wait of a new key while full and the shared bucket is spent: 0")
	}
	if n := l.Len(); n != 10 {
		t.Fatalf("the limiter remembers %d keys, want at most 10", n)
	}
	c.add(2 * time.Minute)
	if w := l.Take("k13"); w != 0 {
		t.Fatalf("after the buckets filled up: wait %v", w)
	}
}

func TestLimiterConcurrent(t *testing.T) {
	l := New(Config{Burst: 50, Every: time.Hour})
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for range 8 {
		wg.Go(func() {
			for range 100 {
				if l.Take("k") == 0 {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if allowed != 50 {
		t.Fatalf("%d attempts allowed from 800 concurrent ones, want exactly the burst of 50", allowed)
	}
}

func TestSource(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"192.0.2.7:4321", "192.0.2.7"},
		{"192.0.2.7", "192.0.2.7"},
		{"[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:ffff::1]:1", "2001:db8:1:2::/64"},
		{"[::ffff:192.0.2.7]:80", "192.0.2.7"},
		{"[fe80::1%eth0]:80", "fe80::/64"},
		{"not an address", "not an address"},
		{"", ""},
	} {
		if got := Source(tc.in); got != tc.want {
			t.Errorf("Source(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func FuzzSource(f *testing.F) {
	for _, s := range []string{"192.0.2.7:1", "[::1]:2", "[fe80::1%lo]:3", "x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got := Source(s); got == "" && s != "" {
			t.Fatalf("Source(%q) is empty", s)
		}
	})
}

// A flood of refusals becomes at most two summaries per door, source and
// reason per interval: the first at once, the rest summed at the
// interval's end; every refusal is counted in the metric.
func TestTallyBoundsRecords(t *testing.T) {
	c := newClock()
	var mu sync.Mutex
	var got []Summary
	refusals := NewRefusals()
	tl := NewTally(TallyConfig{Refusals: refusals, Now: c.now, Record: func(s Summary) {
		mu.Lock()
		got = append(got, s)
		mu.Unlock()
	}})
	for i := range 10000 {
		tl.Add("admin_api", "192.0.2.1", "bad_token", fmt.Sprint("tok", i%7))
		c.add(time.Millisecond)
	}
	tl.Add("admin_api", "192.0.2.2", "bad_token", "")
	if len(got) != 2 || !got[0].Opening || got[0].Count != 1 || got[0].Source != "192.0.2.1" || got[1].Source != "192.0.2.2" {
		t.Fatalf("before the flush: %+v; want the opening summary of each source", got)
	}
	tl.Flush()
	if len(got) != 3 {
		t.Fatalf("after the flush: %d summaries, want 3", len(got))
	}
	s := got[2]
	if s.Opening || s.Count != 9999 || s.Source != "192.0.2.1" || s.Reason != "bad_token" || len(s.Identities) != MaxIdentities || !s.Last.After(s.First) {
		t.Fatalf("the summed summary: %+v; want 9999 refusals with %d identities", s, MaxIdentities)
	}
	if n := counterValue(t, refusals, "admin_api", "bad_token"); n != 10001 {
		t.Fatalf("metric: %v refusals, want 10001", n)
	}
	// The next interval opens again at once.
	tl.Add("admin_api", "192.0.2.1", "bad_token", "")
	if len(got) != 4 || !got[3].Opening {
		t.Fatalf("first refusal of the next interval: %+v", got[3:])
	}
	tl.Flush()
	if len(got) != 4 {
		t.Fatalf("a flush with nothing summed told %d summaries", len(got)-4)
	}
}

// AddFor sums each tenant's refusals apart, and tells whose they are.
func TestTallyPerTenant(t *testing.T) {
	var got []Summary
	tl := NewTally(TallyConfig{Record: func(s Summary) { got = append(got, s) }})
	for range 5 {
		tl.AddFor("acme", "forward", "192.0.2.1", "no_agent", "billing")
		tl.AddFor("globex", "forward", "192.0.2.1", "no_agent", "payroll")
	}
	tl.Add("forward", "192.0.2.1", "no_agent", "")
	tl.Flush()
	count := map[string]int{}
	for _, s := range got {
		count[s.Tenant] += s.Count
	}
	if len(got) != 5 || count["acme"] != 5 || count["globex"] != 5 || count[""] != 1 {
		t.Fatalf("%d summaries counting %v; want 5 (an opening and a sum per tenant, one opening without), 5 for each tenant and 1 for none", len(got), count)
	}
}

func TestTallyMaxKeys(t *testing.T) {
	var got []Summary
	tl := NewTally(TallyConfig{MaxKeys: 3, Record: func(s Summary) { got = append(got, s) }})
	for i := range 1000 {
		tl.Add("login", fmt.Sprint("198.51.100.", i%250), "bad_token", "")
	}
	tl.Flush()
	sum := 0
	sources := map[string]bool{}
	for _, s := range got {
		sum += s.Count
		sources[s.Source] = true
	}
	if sum != 1000 || len(sources) != 4 || !sources["*"] || len(got) > 8 {
		t.Fatalf("%d summaries of %d refusals from sources %v; want 1000 refusals from 3 sources and *, at most 8 summaries", len(got), sum, sources)
	}
}

// counterValue reads the count of door and reason from refusals.
func counterValue(t *testing.T, refusals *prometheus.CounterVec, door, reason string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(refusals)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["door"] == door && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
