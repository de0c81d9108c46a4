package agent

import (
	"maps"
	"os"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
)

// reportDebounce is how long a session waits after a change (config,
// certificate, first RTT) before it reports, so that a burst of changes
// makes one report.
const reportDebounce = time.Second

// maxReportText bounds the error texts the agent puts in a report: a
// config error quoting a huge file must not push the report over the
// control message limit.
const maxReportText = 1024

// reporter keeps what the agent reports about itself beyond what the
// Agent holds anyway: bytes copied, dial failures, and change notices.
type reporter struct {
	started time.Time

	mu          sync.Mutex // guards live, doneIn, doneOut, dialFails and lastDialErr
	live        map[*transport.SpliceCounter]struct{}
	doneIn      uint64 // bytes service to backend of streams that ended
	doneOut     uint64 // bytes backend to service of streams that ended
	dialFails   map[string]uint64
	lastDialErr string

	chMu    sync.Mutex    // guards changed
	changed chan struct{} // closed and replaced at each change
}

func newReporter() *reporter {
	return &reporter{
		started:   time.Now(),
		live:      make(map[*transport.SpliceCounter]struct{}),
		dialFails: make(map[string]uint64),
		changed:   make(chan struct{}),
	}
}

// changes returns a channel closed at the next change.
func (r *reporter) changes() <-chan struct{} {
	r.chMu.Lock()
	defer r.chMu.Unlock()
	return r.changed
}

// change tells every session that something in the report changed.
func (r *reporter) change() {
	r.chMu.Lock()
	defer r.chMu.Unlock()
	close(r.changed)
	r.changed = make(chan struct{})
}

// streamStarted returns the counter a new stream's copy keeps up to date;
// totals include it until streamEnded.
func (r *reporter) streamStarted() *transport.SpliceCounter {
	c := new(transport.SpliceCounter)
	r.mu.Lock()
	r.live[c] = struct{}{}
	r.mu.Unlock()
	return c
}

// streamEnded moves a stream's bytes from the live counters to the totals.
func (r *reporter) streamEnded(c *transport.SpliceCounter, res transport.SpliceResult) {
	r.mu.Lock()
	delete(r.live, c)
	r.doneOut += uint64(max(res.AToB, 0))
	r.doneIn += uint64(max(res.BToA, 0))
	r.mu.Unlock()
}

// dialFailed counts a failed dial to service.
func (r *reporter) dialFailed(service, msg string) {
	r.mu.Lock()
	r.dialFails[service]++
	r.lastDialErr = clipText(msg)
	r.mu.Unlock()
}

// fill sets the counters of m: bytes each way (streams still open
// included) and dial failures.
func (r *reporter) fill(m *protocol.Report) {
	r.mu.Lock()
	defer r.mu.Unlock()
	in, out := r.doneIn, r.doneOut
	for c := range r.live {
		out += uint64(max(c.AToB.Load(), 0))
		in += uint64(max(c.BToA.Load(), 0))
	}
	m.BytesIn, m.BytesOut = in, out
	if len(r.dialFails) > 0 {
		m.DialFailures = maps.Clone(r.dialFails)
	}
	m.LastDialError = r.lastDialErr
}

func clipText(s string) string {
	if len(s) <= maxReportText {
		return s
	}
	return strings.ToValidUTF8(s[:maxReportText], "") + "…"
}

// Report returns the agent's report without session details (transport,
// RTT): the same for every session.
func (a *Agent) Report() *protocol.Report {
	host, _ := os.Hostname()
	svcs := *a.services.Load()
	m := &protocol.Report{
		AgentVersion:   a.cfg.Version,
		OS:             runtime.GOOS,
		Arch:           runtime.GOARCH,
		Hostname:       host,
		StartedAt:      a.rep.started.UnixMilli(),
		StreamsOpen:    a.streamsOpen.Load(),
		StreamsTotal:   a.streamsTotal.Load(),
		CertNotAfter:   a.NotAfter().UnixMilli(),
		ConfigHash:     ConfigHash(a.hashKey, svcs),
		ConfigError:    configErrorForRelay(a.ConfigError()), // where, not what: the file's values stay on the machine
		AccessLogError: clipText(a.accessLogError()),
		Services:       slices.Sorted(maps.Keys(svcs)),
		Relays:         a.slots.held(),
	}
	a.rep.fill(m)
	return m
}

// maxReportServices bounds the service names and dial-failure entries
// sent to the relay, so that a report of an agent with a huge allowlist
// still fits in one control message (service names are at most 63 bytes).
const maxReportServices = 256

// report is the report sent on session s.
func (s *session) report() *protocol.Report {
	m := s.a.Report()
	if len(m.Services) > maxReportServices {
		m.Services = m.Services[:maxReportServices]
	}
	if len(m.DialFailures) > maxReportServices {
		for _, k := range slices.Sorted(maps.Keys(m.DialFailures))[maxReportServices:] {
			delete(m.DialFailures, k)
		}
	}
	m.Transport, m.TransportWhy = s.transport, s.why
	m.RTTMicros = s.rtt.Load() / int64(time.Microsecond)
	return m
}

// reportLoop sends a report at once, then every ReportInterval and soon
// after a change, until the session closes. Run on s.wg.
func (s *session) reportLoop() {
	changed := s.a.rep.changes()
	s.sendReport()
	tick := time.NewTicker(s.a.cfg.ReportInterval)
	defer tick.Stop()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	armed := false
	arm := func() {
		if !armed {
			armed = true
			debounce.Reset(reportDebounce)
		}
	}
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.t.Done():
			return
		case <-tick.C:
			s.sendReport()
		case <-changed:
			changed = s.a.rep.changes()
			arm()
		case <-s.rttKnown:
			arm()
		case <-debounce.C:
			armed = false
			s.sendReport()
		}
	}
}

func (s *session) sendReport() {
	if err := s.send(s.report()); err != nil {
		s.log.Debug("send report", "err", err)
	}
}

// The relay is told that the config file has a problem, and where, but
// not what the file says there: an error message quotes the file's values
// (an address, a host name, a backend pattern), which are the tenant's.
// The agent's log and its status keep the whole message.

var lineRef = regexp.MustCompile(`\bline (\d+)\b`)

// configKeys are the top-level settings of the config file.
var configKeys = func() map[string]bool {
	keys := map[string]bool{}
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); name != "" && name != "-" {
			keys[name] = true
		}
	}
	return keys
}()

// maxConfigErrorPlaces bounds the places configErrorForRelay names.
const maxConfigErrorPlaces = 8

// configErrorForRelay is what the relay is told of the config problem msg
// (ConfigError): its kind and the lines or top-level settings where it
// is, never a value from the file.
func configErrorForRelay(msg string) string {
	const more = "; the services in use stay, and the agent's log and `tether-agent status` say what is wrong"
	switch {
	case msg == "":
		return ""
	case strings.HasPrefix(msg, "read config:"):
		return "the config file cannot be read" + more
	case msg == "config is empty":
		return "the config file is empty" + more
	}
	kind := "does not validate"
	if strings.HasPrefix(msg, "parse config:") {
		kind = "does not parse"
	}
	var places []string
	add := func(p string) {
		if !slices.Contains(places, p) && len(places) < maxConfigErrorPlaces {
			places = append(places, p)
		}
	}
	for l := range strings.SplitSeq(msg, "\n") {
		if m := lineRef.FindStringSubmatch(l); m != nil {
			add("line " + m[1])
			continue
		}
		key := strings.TrimSpace(l)
		if i := strings.IndexAny(key, ".[ :"); i >= 0 {
			key = key[:i]
		}
		if configKeys[key] {
			add(key)
		}
	}
	where := ""
	if len(places) > 0 {
		where = " at " + strings.Join(places, ", ")
	}
	return "the config file " + kind + where + more
}
