package accesslog

import (
	"fmt"
	"time"
)

// Refused streams cost the relay nothing: it can open thousands a second,
// each of which the agent refuses (an unknown service, a backend not
// allowed) in microseconds. Were each to get a line of its own, a relay
// could fill max_size × max_files with refusals within seconds, and
// rotation would delete the records of the streams it served before them.
// So refusals have a budget of lines, one for the whole log (a relay
// chooses its session ids and can reconnect at will: a budget per session
// would multiply with reconnections): a burst of RefusalBurst lines, then
// one per RefusalEvery. A refusal beyond the budget is counted instead, by
// service, backend and code, and the counts are written every
// SummaryInterval as `refusals` lines: at most maxRefusalKeys of them and
// one counting the rest together, each with the number of refusals, the
// first and last one's time and the first one's request id, relay and
// session. However many refusals a relay sends, they cost at most
// RefusalBurst lines, then one line per RefusalEvery and maxRefusalKeys+1
// lines per SummaryInterval: with the defaults and the longest fields a
// stream header carries, all control characters (six bytes each in
// JSON), a refusal line is about 4.2 KB and a summary 2.3 KB, so about
// 29 KB a minute, 42 MB a day; with ordinary names a tenth of that. Served streams have no budget: their records
// are never summarised, nor dropped to make room for refusals (a refusal
// is queued only while the queue is less than half full, so that
// refusals never fill it).

// Defaults of the refusal budget (Options).
const (
	DefaultRefusalBurst    = 50
	DefaultRefusalEvery    = 30 * time.Second
	DefaultSummaryInterval = time.Minute
)

// maxRefusalKeys bounds the (service, backend, code) counted apart in one
// summary; refusals of other keys are counted together.
const maxRefusalKeys = 8

// refusalKey is what refusals beyond the budget are counted by.
type refusalKey struct{ service, backend, code string }

// refusalCount counts refusals of one key (or of the rest together).
type refusalCount struct {
	n                       uint64
	first, last             time.Time
	request, relay, session string // of the first
}

func (c *refusalCount) merge(o *refusalCount) {
	if o.n == 0 {
		return
	}
	if c.n == 0 || o.first.Before(c.first) {
		c.first, c.request, c.relay, c.session = o.first, o.request, o.relay, o.session
	}
	if o.last.After(c.last) {
		c.last = o.last
	}
	c.n += o.n
}

// refusalSet holds the counts of refusals beyond the budget: at most
// maxRefusalKeys keys, in the order they were first seen, and the rest
// together.
type refusalSet struct {
	keys  map[refusalKey]*refusalCount
	order []refusalKey
	other refusalCount
}

func (s *refusalSet) empty() bool { return len(s.order) == 0 && s.other.n == 0 }

func (s *refusalSet) add(k refusalKey, c *refusalCount) {
	p := s.keys[k]
	if p == nil {
		if len(s.order) >= maxRefusalKeys {
			s.other.merge(c)
			return
		}
		if s.keys == nil {
			s.keys = make(map[refusalKey]*refusalCount)
		}
		p = &refusalCount{}
		s.keys[k] = p
		s.order = append(s.order, k)
	}
	p.merge(c)
}

// merge adds o's counts to s.
func (s *refusalSet) merge(o *refusalSet) {
	for _, k := range o.order {
		s.add(k, o.keys[k])
	}
	s.other.merge(&o.other)
}

// count adds the refusal r, at now when it has no time.
func (s *refusalSet) count(r *Record, now time.Time) {
	t := lineTime(r.Time, now)
	// Clipped as a line holds them: the keys a relay chooses stay bounded.
	k := refusalKey{field(r.Service, maxField), field(r.Backend, maxField), field(r.Code, maxField)}
	s.add(k, &refusalCount{n: 1, first: t, last: t, request: field(r.Request, maxField), relay: field(r.Relay, maxField), session: field(r.Session, maxField)})
}

// lines are the summary lines of s.
func (s *refusalSet) lines() []*refusalsLine {
	var out []*refusalsLine
	for _, k := range s.order {
		c := s.keys[k]
		out = append(out, &refusalsLine{Type: TypeRefusals, Time: c.last, Since: c.first, Service: k.service, Backend: k.backend, Code: k.code,
			Count: c.n, Request: c.request, Relay: c.relay, Session: c.session})
	}
	if c := &s.other; c.n > 0 {
		out = append(out, &refusalsLine{Type: TypeRefusals, Time: c.last, Since: c.first, Count: c.n, Request: c.request, Relay: c.relay, Session: c.session,
			Note: fmt.Sprintf("refused streams of other services, backends and codes than the %d lines before it name, counted together", len(s.order))})
	}
	return out
}

// admitRefusal says whether the refused stream r may have a line of its
// own; when it may not, it is counted for the next summary.
func (l *Log) admitRefusal(r *Record) bool {
	now := l.o.Now()
	l.refMu.Lock()
	defer l.refMu.Unlock()
	burst := float64(l.o.RefusalBurst)
	if l.tokens < burst {
		l.tokens = min(burst, l.tokens+float64(now.Sub(l.refilled))/float64(l.o.RefusalEvery))
	}
	l.refilled = now
	if l.tokens >= 1 && len(l.queue) < cap(l.queue)/2 {
		l.tokens--
		return true
	}
	l.acc.count(r, now)
	return false
}

// countRefusal counts a refusal the queue had no room for.
func (l *Log) countRefusal(r *Record) {
	now := l.o.Now()
	l.refMu.Lock()
	defer l.refMu.Unlock()
	l.acc.count(r, now)
}

// takeRefusals moves the refusals counted since the last call to the
// writer's summaries.
func (l *Log) takeRefusals() {
	l.refMu.Lock()
	acc := l.acc
	l.acc = refusalSet{}
	l.refMu.Unlock()
	l.sums.merge(&acc)
}
