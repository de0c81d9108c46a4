// Package metrics holds the relay's Prometheus counters and histograms,
// in a registry of its own (a process may run more than one relay, as
// tests do), and serves /metrics, /healthz and /readyz. Gauges read from
// the relay's live state at scrape time are collectors the relay adds.
//
// Label values that come from requests are bounded: a stream's tenant is
// only recorded once the relay knows the tenant exists, and its service
// only once the tenant's agent served it, so a backend asking for random
// names cannot grow the series without limit.
package metrics

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tetherhq/tether/protocol"
)

// Metrics are the relay's counters and histograms.
type Metrics struct {
	Registry      *prometheus.Registry
	Streams       *prometheus.CounterVec   // tenant, service, outcome
	StreamBytes   *prometheus.CounterVec   // tenant, direction
	OpenSeconds   prometheus.Histogram     // backend request to the agent's answer
	LimitRefusals *prometheus.CounterVec   // tenant
	StoreSeconds  *prometheus.HistogramVec // op
	AuthRefusals  *prometheus.CounterVec   // door, reason: failed and throttled authentication
	Disconnects   *prometheus.CounterVec   // reason
}

// New makes the metrics, with the reasons of Disconnects shown at zero,
// authRefusals (which the doors that authenticate share) and live (the
// relay's collectors of gauges) registered beside them.
func New(disconnectReasons []string, authRefusals *prometheus.CounterVec, live ...prometheus.Collector) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_streams_opened_total",
			Help: "Stream opens by outcome (ok or a refusal code). tenant is empty until the tenant is known to exist; service until its agent served it.",
		}, []string{"tenant", "service", "outcome"}),
		StreamBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_stream_bytes_total",
			Help: "Bytes moved through tunnels, by tenant and direction (to_service, from_service), counted when a stream ends.",
		}, []string{"tenant", "direction"}),
		OpenSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tether_stream_open_seconds",
			Help:    "Time from a backend's request to the agent's answer for streams that opened.",
			Buckets: []float64{.0002, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 15},
		}),
		LimitRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_limit_refusals_total",
			Help: "Stream opens refused by a tenant limit (concurrent streams or open rate).",
		}, []string{"tenant"}),
		StoreSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tether_store_seconds",
			Help:    "Latency of store operations: audit commits, change feed reads, backend lookups, readiness pings.",
			Buckets: []float64{.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5},
		}, []string{"op"}),
		AuthRefusals: authRefusals,
		Disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_agent_disconnects_total",
			Help: "Agent sessions ended, by reason: agent_closed, idle_timeout, heartbeat_missed, connection_reset, relay_shutdown, agent_restarted, revoked, certificate_expired, unauthenticated (a retired CA root), error.",
		}, []string{"reason"}),
	}
	for _, reason := range disconnectReasons {
		m.Disconnects.WithLabelValues(reason)
	}
	m.Registry.MustRegister(m.Streams, m.StreamBytes, m.OpenSeconds, m.LimitRefusals, m.StoreSeconds, m.AuthRefusals, m.Disconnects,
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
// tenant (empty when the request did not parse or was not authenticated).
func (m *Metrics) StreamOpened(tenant, service string, code protocol.Code) {
	if !tenantVerified(code) {
		tenant = ""
	}
	if !serviceVerified(code) {
		service = ""
	}
	m.Streams.WithLabelValues(tenant, service, code.String()).Inc()
}

// StoreOp times a store operation that began at start.
func (m *Metrics) StoreOp(op string, start time.Time) {
	m.StoreSeconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
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
