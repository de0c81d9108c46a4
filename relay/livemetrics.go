package relay

import (
	"github.com/prometheus/client_golang/prometheus"
)

// liveCollector reports gauges read from the relay's parts at scrape time.
// It is registered before the parts exist and only read once they do.
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
	for _, ac := range r.sessions.Sessions().Select("", false, nil) {
		tenant := ac.Tenant()
		agents[key{tenant, ac.Transport()}]++
		open += ac.Load()
		if na := ac.NotAfter().UnixNano(); expiry[tenant] == 0 || na < expiry[tenant] {
			expiry[tenant] = na
		}
	}
	for k, n := range agents {
		ch <- prometheus.MustNewConstMetric(descAgents, prometheus.GaugeValue, float64(n), k.tenant, k.transport)
	}
	for t, na := range expiry {
		ch <- prometheus.MustNewConstMetric(descCertExpiry, prometheus.GaugeValue, float64(na)/1e9, t)
	}
	ch <- prometheus.MustNewConstMetric(descStreamsActive, prometheus.GaugeValue, float64(open))
	ch <- prometheus.MustNewConstMetric(descFront, prometheus.GaugeValue, float64(r.doors.Open()))
	hs := r.sessions.Stats()
	ch <- prometheus.MustNewConstMetric(descHandshakes, prometheus.CounterValue, float64(hs.OK.Load()), "ok")
	ch <- prometheus.MustNewConstMetric(descHandshakes, prometheus.CounterValue, float64(hs.Failed.Load()), "failed")
	ch <- prometheus.MustNewConstMetric(descHandshakes, prometheus.CounterValue, float64(hs.Throttled.Load()), "throttled")
	ch <- prometheus.MustNewConstMetric(descHandshakes, prometheus.CounterValue, float64(hs.SourceLimited.Load()), "source_limited")
	ch <- prometheus.MustNewConstMetric(descFrontLimited, prometheus.CounterValue, float64(r.doors.SourceLimited.Load()))
	ch <- prometheus.MustNewConstMetric(descCAExpiry, prometheus.GaugeValue, float64(r.auth.CA().Signer().Cert.NotAfter.Unix()))
	ch <- prometheus.MustNewConstMetric(descAuditQueue, prometheus.GaugeValue, float64(r.audit.Queued()))
}
