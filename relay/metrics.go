package relay

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/throttle"
)

// metrics are the relay's Prometheus metrics, in a registry of its own (a
// process may run more than one relay, as tests do).
//
// Label values that come from requests are bounded: a stream's tenant is
// only recorded once the relay knows the tenant exists, and its service
// only once the tenant's agent served it, so a backend asking for random
// names cannot grow the series without limit.
type metrics struct {
	reg           *prometheus.Registry
	streams       *prometheus.CounterVec   // tenant, service, outcome
	streamBytes   *prometheus.CounterVec   // tenant, direction
	openSeconds   prometheus.Histogram     // backend request to the agent's answer
	limitRefusals *prometheus.CounterVec   // tenant
	storeSeconds  *prometheus.HistogramVec // op
	authRefusals  *prometheus.CounterVec   // door, reason: failed and throttled authentication
	disconnects   *prometheus.CounterVec   // reason
}

func newMetrics(r *Relay) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_streams_opened_total",
			Help: "Stream opens by outcome (ok or a refusal code). tenant is empty until the tenant is known to exist; service until its agent served it.",
		}, []string{"tenant", "service", "outcome"}),
		streamBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_stream_bytes_total",
			Help: "Bytes moved through tunnels, by tenant and direction (to_service, from_service), counted when a stream ends.",
		}, []string{"tenant", "direction"}),
		openSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tether_stream_open_seconds",
			Help:    "Time from a backend's request to the agent's answer for streams that opened.",
			Buckets: []float64{.0002, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 15},
		}),
		limitRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_limit_refusals_total",
			Help: "Stream opens refused by a tenant limit (concurrent streams or open rate).",
		}, []string{"tenant"}),
		storeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tether_store_seconds",
			Help:    "Latency of store operations: audit commits, policy polls, backend lookups, readiness pings.",
			Buckets: []float64{.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5},
		}, []string{"op"}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_agent_disconnects_total",
			Help: "Agent sessions ended, by reason: agent_closed, idle_timeout, heartbeat_missed, connection_reset, relay_shutdown, agent_restarted, revoked, certificate_expired, unauthenticated (a retired CA root), error.",
		}, []string{"reason"}),
	}
	m.authRefusals = throttle.NewRefusals()
	for _, reason := range disconnectReasons {
		m.disconnects.WithLabelValues(reason)
	}
	m.reg.MustRegister(m.streams, m.streamBytes, m.openSeconds, m.limitRefusals, m.storeSeconds, m.authRefusals, m.disconnects,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&liveCollector{r: r})
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

// streamOpened counts one stream open or refusal for target (which may be
// zero when the request did not parse or was not authenticated).
func (m *metrics) streamOpened(t Target, code protocol.Code) {
	tenant, service := "", ""
	if tenantVerified(code) {
		tenant = t.Tenant
	}
	if serviceVerified(code) {
		service = t.Service
	}
	m.streams.WithLabelValues(tenant, service, code.String()).Inc()
}

func (m *metrics) storeOp(op string, start time.Time) {
	m.storeSeconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// liveCollector reports gauges read from the relay's state at scrape time.
type liveCollector struct{ r *Relay }

var (
	descAgents = prometheus.NewDesc("tether_agents_connected",
		"Agent sessions connected, by tenant and transport.", []string{"tenant", "transport"}, nil)
	descStreamsActive = prometheus.NewDesc("tether_streams_active",
		"Streams open through agents.", nil, nil)
	descFront = prometheus.NewDesc("tether_front_connections",
		"Backend connections open at the front doors.", nil, nil)
	descHandshakes = prometheus.NewDesc("tether_agent_handshakes_total",
		"Agent handshakes by outcome: ok, failed (TLS or refused at hello), throttled (turned away by the admission limit), source_limited (turned away by the bound per source address or network).", []string{"outcome"}, nil)
	descFrontLimited = prometheus.NewDesc("tether_front_source_limited_total",
		"Front-door connections closed at once because their source address or network had too many connections not yet authenticated.", nil, nil)
	descCertExpiry = prometheus.NewDesc("tether_agent_certificate_expiry_timestamp_seconds",
		"Earliest certificate expiry among a tenant's connected agent sessions (Unix time).", []string{"tenant"}, nil)
	descCAExpiry = prometheus.NewDesc("tether_ca_certificate_expiry_timestamp_seconds",
		"Expiry of the relay CA's certificate (Unix time).", nil, nil)
	descAuditQueue = prometheus.NewDesc("tether_audit_queue_length",
		"Audit records waiting to be written.", nil, nil)
)

func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAgents, descStreamsActive, descFront, descHandshakes, descFrontLimited, descCertExpiry, descCAExpiry, descAuditQueue} {
		ch <- d
	}
}

func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.r
	type key struct{ tenant, transport string }
	agents := map[key]int{}
	expiry := map[string]int64{}
	var open int64
	r.reg.mu.RLock()
	for tenant, list := range r.reg.byTenant {
		for _, ac := range list {
			agents[key{tenant, ac.transport}]++
			open += ac.open.Load()
			if na := ac.notAfter.Load(); expiry[tenant] == 0 || na < expiry[tenant] {
				expiry[tenant] = na
			}
		}
	}
	r.reg.mu.RUnlock()
	for k, n := range agents {
		ch <- prometheus.MustNewConstMetric(descAgents, prometheus.GaugeValue, float64(n), k.tenant, k.transport)
	}
	for t, na := range expiry {
		ch <- prometheus.MustNewConstMetric(descCertExpiry, prometheus.GaugeValue, float64(na)/1e9, t)
	}
	ch <- prometheus.MustNewConstMetric(descStreamsActive, prometheus.GaugeValue, float64(open))
	ch <- prometheus.MustNewConstMetric(descFront, prometheus.GaugeValue, float64(r.front.len()))
	ch <- prometheus.MustNewConstMetric(descHandshakes, prometheus.CounterValue, float64(r.hsOK.Load()), "ok")
	ch <- prometheus.MustNewConstMetric(descHandshakes, prometheus.CounterValue, float64(r.hsFailed.Load()), "failed")
	ch <- prometheus.MustNewConstMetric(descHandshakes, prometheus.CounterValue, float64(r.hsThrottled.Load()), "throttled")
	ch <- prometheus.MustNewConstMetric(descHandshakes, prometheus.CounterValue, float64(r.hsSourceLimited.Load()), "source_limited")
	ch <- prometheus.MustNewConstMetric(descFrontLimited, prometheus.CounterValue, float64(r.frontSourceLimited.Load()))
	ch <- prometheus.MustNewConstMetric(descCAExpiry, prometheus.GaugeValue, float64(r.st.CA().Signer().Cert.NotAfter.Unix()))
	ch <- prometheus.MustNewConstMetric(descAuditQueue, prometheus.GaugeValue, float64(r.audit.Queued()))
}

// opsHandler serves /metrics, /healthz and /readyz.
//
// /healthz answers 200 while the process serves HTTP at all. /readyz
// answers 200 only when the store answers within a second and the relay is
// accepting agents and backends (not starting, not shutting down); else
// 503 with the reason.
func (r *Relay) opsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(r.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := r.ready(req.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("not ready: " + err.Error() + "\n"))
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}

// ready reports why the relay cannot serve, or nil.
func (r *Relay) ready(ctx context.Context) error {
	if !r.serving.Load() {
		return errNotServing
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	start := time.Now()
	err := r.st.store.Ping(ctx)
	r.metrics.storeOp("ping", start)
	if err != nil {
		return fmt.Errorf("store unreachable: %w", err)
	}
	return nil
}

var errNotServing = errors.New("listeners are not accepting (starting or shutting down)")
