// Package metrics holds the relay's Prometheus counters and histograms,
// in a registry of its own (a process may run more than one relay, as
// tests do), and serves /metrics, /healthz and /readyz. Gauges read from
// the relay's live state at scrape time are collectors the relay adds.
//
// Label values that come from requests are bounded: a stream's tenant is
// only recorded once the relay knows the tenant exists, its service only
// once the tenant's agent served it, and its backend only once the
// backend authenticated (backends are registered by operators), so a
// backend asking for random names cannot grow the series without limit;
// and a tenant's services are labelled up to maxServiceLabels of them,
// since its agent may answer for any name.
package metrics

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/tetherhq/tether/protocol"
)

// Metrics are the relay's counters and histograms.
type Metrics struct {
	Registry *prometheus.Registry
	Streams  *prometheus.CounterVec // tenant, service, backend, outcome
	// Bytes counts what streams move while they move (bytes.go); it is
	// tether_stream_bytes_total.
	Bytes         *Bytes
	OpenDuration  prometheus.Histogram   // backend request to the agent's answer
	LimitRefusals *prometheus.CounterVec // tenant, backend
	// MemoryRefusals counts stream opens refused at the stream memory
	// cap, by tenant, backend and reason (cap, or tenant_share: the
	// relay was busy and the tenant held its share).
	MemoryRefusals *prometheus.CounterVec
	StoreDuration  *prometheus.HistogramVec // op
	AuthRefusals   *prometheus.CounterVec   // door, reason: failed and throttled authentication
	Disconnects    *prometheus.CounterVec   // reason
	// ListenerRefused counts the connections the operator listeners
	// (metrics, admin, download) closed at accept, by listener and reason
	// (throttle.LimitListener).
	ListenerRefused *prometheus.CounterVec
	// AuditPruned counts the audit records the relay deleted from the
	// store, older than its traffic retention, by kind.
	AuditPruned *prometheus.CounterVec

	// opens mirrors Streams by tenant and outcome, for the relay's own
	// history.
	opens sync.Map // openKey → *atomic.Uint64

	mu sync.Mutex // guards services
	// services are the service label values of each tenant so far, at
	// most maxServiceLabels each (serviceLabel).
	services map[string]map[string]bool
	// disconnectReasons are the label values of Disconnects.
	disconnectReasons []string
}

type openKey struct{ tenant, outcome string }

// Bounds of the service label. A stream's service is labelled once the
// tenant's agent served it, but an agent answers for whatever name a
// backend asks for (a hostile one says ok to anything), and backends may
// ask for names a tenant chose: a tenant's first maxServiceLabels
// services are labelled, the rest counted under otherServices (a name no
// service can have).
const (
	maxServiceLabels = 256
	otherServices    = "_other"
)

// serviceLabel is the service label value of tenant's service.
func (m *Metrics) serviceLabel(tenant, service string) string {
	if service == "" {
		return ""
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := m.services[tenant]
	if seen == nil {
		seen = map[string]bool{}
		m.services[tenant] = seen
	}
	if !seen[service] {
		if len(seen) >= maxServiceLabels {
			return otherServices
		}
		seen[service] = true
	}
	return service
}

// ForgetBackend drops the series labelled with backend name (stream
// opens, limit and memory refusals): the backend was removed. A backend
// added again under the name starts from zero. Without it, every backend
// ever removed kept a series per tenant, service and outcome it was
// counted under for as long as the relay ran.
func (m *Metrics) ForgetBackend(name string) {
	if name == "" {
		return // the streams of requests that did not authenticate
	}
	by := prometheus.Labels{"backend": name}
	m.Streams.DeletePartialMatch(by)
	m.LimitRefusals.DeletePartialMatch(by)
	m.MemoryRefusals.DeletePartialMatch(by)
}

// StoreOps are the store operations StoreOp is given, in the order the
// console shows them.
var StoreOps = []string{"audit_commit", "change_feed", "limits", "backend_lookup", "last_seen", "ping"}

// New makes the metrics, with the reasons of Disconnects shown at zero,
// authRefusals (which the doors that authenticate share) and live (the
// relay's collectors of gauges) registered beside them.
func New(disconnectReasons []string, authRefusals *prometheus.CounterVec, live ...prometheus.Collector) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_streams_opened_total",
			Help: "Stream opens by outcome (ok or a refusal code). tenant is empty until the tenant is known to exist; service until its agent served it; backend until the backend authenticated.",
		}, []string{"tenant", "service", "backend", "outcome"}),
		Bytes: newBytes(),
		OpenDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tether_stream_open_duration_seconds",
			Help:    "Time from a backend's request to the agent's answer for streams that opened.",
			Buckets: []float64{.0002, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 15},
		}),
		LimitRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_limit_refusals_total",
			Help: "Stream opens refused by a tenant limit (concurrent streams or open rate), by tenant and backend.",
		}, []string{"tenant", "backend"}),
		MemoryRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_stream_memory_refusals_total",
			Help: "Stream opens refused for the relay's stream memory (max_stream_memory), by tenant, backend and reason: cap (the cap would be passed) or tenant_share (more than three quarters of the cap were held and the tenant held its share, a quarter of the cap).",
		}, []string{"tenant", "backend", "reason"}),
		StoreDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tether_store_duration_seconds",
			Help:    "Latency of store operations: audit commits, change feed reads, limits, backend lookups, last-seen writes, readiness pings.",
			Buckets: []float64{.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5},
		}, []string{"op"}),
		AuthRefusals: authRefusals,
		Disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_agent_disconnects_total",
			Help: "Agent sessions ended, by reason: agent_closed, idle_timeout, heartbeat_missed, connection_reset, relay_shutdown, agent_restarted, revoked, certificate_expired, unauthenticated (a retired CA root), error.",
		}, []string{"reason"}),
		ListenerRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_listener_refused_total",
			Help: "Connections the operator listeners (metrics, admin, download) closed at accept, before reading them, by listener and reason: source_limited (the source address or network holds its bound), listener_full (the listener holds its total).",
		}, []string{"listener", "reason"}),
		AuditPruned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_audit_pruned_total",
			Help: "Audit records this relay deleted from the store, older than audit_traffic_retention, by kind (stream, agent.connect, agent.handshake, auth.refused). The audit file keeps them.",
		}, []string{"kind"}),
	}
	m.disconnectReasons = disconnectReasons
	m.services = map[string]map[string]bool{}
	for _, reason := range disconnectReasons {
		m.Disconnects.WithLabelValues(reason)
	}
	m.Registry.MustRegister(m.Streams, &bytesCollector{m.Bytes}, m.OpenDuration, m.LimitRefusals, m.MemoryRefusals, m.StoreDuration, m.AuthRefusals, m.Disconnects, m.ListenerRefused, m.AuditPruned,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.Registry.MustRegister(live...)
	return m
}

// tenantVerified reports whether a stream refused with code got far enough
// for its tenant to be known to exist; serviceVerified, its service.
func tenantVerified(c protocol.Code) bool {
	switch c {
	case protocol.CodeOK, protocol.CodeUnknownService, protocol.CodeTargetUnreachable, protocol.CodeNoAgent, protocol.CodeLimitExceeded, protocol.CodeTimeout:
		return true
	}
	return false
}

func serviceVerified(c protocol.Code) bool {
	return c == protocol.CodeOK || c == protocol.CodeTargetUnreachable
}

// StreamOpened counts one stream open or refusal with code for service of
// tenant asked by backend (each empty when the request did not parse or
// was not authenticated; backend must be an authenticated backend's name).
func (m *Metrics) StreamOpened(tenant, service, backend string, code protocol.Code) {
	if !tenantVerified(code) {
		tenant = ""
	}
	if !serviceVerified(code) {
		service = ""
	}
	service = m.serviceLabel(tenant, service)
	outcome := code.String()
	m.Streams.WithLabelValues(tenant, service, backend, outcome).Inc()
	k := openKey{tenant, outcome}
	n, ok := m.opens.Load(k)
	if !ok {
		n, _ = m.opens.LoadOrStore(k, new(atomic.Uint64))
	}
	n.(*atomic.Uint64).Add(1)
}

// OpenCount is how many streams of a tenant ("" when not known to exist)
// ended in one outcome since the relay started.
type OpenCount struct {
	Tenant, Outcome string
	N               uint64
}

// Opens returns the stream opens counted so far by tenant and outcome.
func (m *Metrics) Opens() []OpenCount {
	var out []OpenCount
	m.opens.Range(func(k, v any) bool {
		key := k.(openKey)
		out = append(out, OpenCount{key.tenant, key.outcome, v.(*atomic.Uint64).Load()})
		return true
	})
	return out
}

// Disconnected is how many agent sessions ended since the relay started,
// whatever the reason.
func (m *Metrics) Disconnected() uint64 {
	var n float64
	for _, reason := range m.disconnectReasons {
		var d dto.Metric
		if m.Disconnects.WithLabelValues(reason).Write(&d) == nil {
			n += d.GetCounter().GetValue()
		}
	}
	return uint64(n)
}

// StoreOp times a store operation that began at start.
func (m *Metrics) StoreOp(op string, start time.Time) {
	m.StoreDuration.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// StoreTotal is how many store operations of one kind ran since the relay
// started, and how long they took together.
type StoreTotal struct {
	Count uint64
	Time  time.Duration
}

// StoreTotals returns the store operations of StoreOps timed so far, by
// op.
func (m *Metrics) StoreTotals() map[string]StoreTotal {
	out := map[string]StoreTotal{}
	for _, op := range StoreOps {
		var d dto.Metric
		if m.StoreDuration.WithLabelValues(op).(prometheus.Metric).Write(&d) == nil {
			h := d.GetHistogram()
			out[op] = StoreTotal{Count: h.GetSampleCount(), Time: time.Duration(h.GetSampleSum() * float64(time.Second))}
		}
	}
	return out
}

// Handler serves /metrics, /healthz and /readyz.
//
// /healthz answers 200 while the process serves HTTP at all. /readyz
// answers 200 only when ready reports nil, else 503 with the reason.
func (m *Metrics) Handler(ready func(context.Context) error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := ready(req.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("not ready: " + err.Error() + "\n"))
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}
