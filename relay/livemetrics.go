package relay

import (
	"cmp"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tetherhq/tether/relay/internal/throttle"
)

// liveCollector reports gauges read from the relay's parts at scrape time.
// It is registered before the parts exist and only read once they do.
type liveCollector struct{ r *Relay }

var (
	descBuild = prometheus.NewDesc("tether_build_info",
		"Always 1: the relay's version, the commit it was built from and the Go version.", []string{"version", "commit", "go_version"}, nil)
	descAgents = prometheus.NewDesc("tether_agents_connected",
		"Agents connected (distinct agents, however many sessions each holds), by tenant.", []string{"tenant"}, nil)
	descSessions = prometheus.NewDesc("tether_agent_sessions",
		"Agent sessions connected, by tenant and transport.", []string{"tenant", "transport"}, nil)
	descRTT = prometheus.NewDesc("tether_agent_rtt_seconds",
		"Round-trip time the relay last measured on each connected agent session, as a distribution across the sessions connected now (not cumulative), by tenant.", []string{"tenant"}, nil)
	descStreamsActive = prometheus.NewDesc("tether_streams_active",
		"Streams open through agents.", nil, nil)
	descTenantStreams = prometheus.NewDesc("tether_tenant_streams_active",
		"Streams open through the agents of a tenant connected to this relay.", []string{"tenant"}, nil)
	descTenantLimit = prometheus.NewDesc("tether_tenant_max_streams",
		"A tenant's limit on open streams (only tenants with one and agents connected).", []string{"tenant"}, nil)
	descFront = prometheus.NewDesc("tether_front_connections",
		"Backend connections open at the front doors.", nil, nil)
	descHandshakes = prometheus.NewDesc("tether_agent_handshakes_total",
		"Agent handshakes by outcome: ok, failed (TLS or refused at hello), throttled (turned away by the admission limit), source_limited (turned away by the bound per source address or network, or by a network's share of a busy gate).", []string{"outcome"}, nil)
	descPeerHandshakes = prometheus.NewDesc("tether_peer_handshakes_total",
		"Handshakes of links from other relays at the relay-to-relay listener by outcome: ok, failed (TLS, or timed out), throttled (no handshake slot in time), source_limited (turned away by the bound per source address or network, or by a network's share of a busy listener). Only with a relay-to-relay listener.", []string{"outcome"}, nil)
	descPeerLinkFailures = prometheus.NewDesc("tether_peer_link_failures_total",
		"Failures of this relay's links to another relay, by relay and reason: dial (a dial failed or timed out), unanswered (a forwarded stream gave up on a link that answered nothing to its opening in time), closed (such a link closed for answering no ping either). Every relay a link was made to, until it has been missing from the cluster for an hour.", []string{"relay", "reason"}, nil)
	descFrontLimited = prometheus.NewDesc("tether_front_source_limited_total",
		"Front-door connections closed at once because their source address or network had too many connections not yet authenticated.", nil, nil)
	descCertExpiry = prometheus.NewDesc("tether_agent_certificate_expiry_timestamp_seconds",
		"Earliest certificate expiry among a tenant's connected agent sessions (Unix time).", []string{"tenant"}, nil)
	descCAExpiry = prometheus.NewDesc("tether_ca_certificate_expiry_timestamp_seconds",
		"Expiry of the relay CA's certificate (Unix time).", nil, nil)
	descAuditQueue = prometheus.NewDesc("tether_audit_queue_length",
		"Audit records waiting to be written.", nil, nil)
	descStoreIsolated = prometheus.NewDesc("tether_cluster_store_isolated",
		"1 while this relay has lost its store and another relay of the cluster reaches it: it has sent its agents to the other relays and refuses new ones until its store is back; else 0.", nil, nil)
	descStoreIsolations = prometheus.NewDesc("tether_cluster_store_isolations_total",
		"Times this relay lost its store while another relay of the cluster reached it, and sent its agents away.", nil, nil)
	descStoreIsolatedKept = prometheus.NewDesc("tether_cluster_store_isolated_agents_kept_total",
		"Agents this relay sent away while isolated from its store that came back (they could not connect to another relay), and that it admitted and kept.", nil, nil)
	descStoreOutageGrace = prometheus.NewDesc("tether_store_outage_grace",
		"1 while this relay serves new connections from what it last read because the store is down for every relay it can ask (store_outage_grace); else 0.", nil, nil)
	descStreamMemory = prometheus.NewDesc("tether_stream_memory_held_bytes",
		"What the open streams, through this relay's front doors and forwarded to it by other relays, are charged against max_stream_memory (each its worst case).", nil, nil)
	descStreamMemoryCap = prometheus.NewDesc("tether_stream_memory_cap_bytes",
		"max_stream_memory: the cap on what the open streams may be charged; 0 without a cap.", nil, nil)
	descStaleCredentials = prometheus.NewDesc("tether_store_outage_stale_credentials_total",
		"Backend authentications answered from a credential read longer ago than the cache's minute, the store unreachable while this relay served from what it last read (store_outage_grace).", nil, nil)
	descAuditLost = prometheus.NewDesc("tether_audit_lost_total",
		"Audit records never to be in the store, by kept_in: file (in the audit file only) or none (in the audit file neither).", []string{"kept_in"}, nil)
	descAuditFileErrors = prometheus.NewDesc("tether_audit_file_errors_total",
		"Appends to the audit file that failed.", nil, nil)
	descAuditUnwritten = prometheus.NewDesc("tether_audit_unwritten",
		"Audit records in memory only: the store and the audit file both failed to take them (the relay is not ready meanwhile).", nil, nil)
)

// rttBuckets are the bounds of tether_agent_rtt_seconds.
var rttBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}

func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBuild, descAgents, descSessions, descRTT, descStreamsActive, descTenantStreams, descTenantLimit, descFront, descHandshakes, descPeerHandshakes, descPeerLinkFailures, descFrontLimited, descCertExpiry, descCAExpiry, descAuditQueue, descStoreIsolated, descStoreIsolations, descStoreIsolatedKept, descStoreOutageGrace, descStaleCredentials, descStreamMemory, descStreamMemoryCap} {
		ch <- d
	}
	for _, d := range []*prometheus.Desc{descAuditLost, descAuditFileErrors, descAuditUnwritten} {
		ch <- d
	}
}

// rttDist is a tenant's session RTTs as a histogram.
type rttDist struct {
	n       uint64
	sum     float64
	buckets map[float64]uint64
}

func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.r
	b := readBuild(r.cfg.Version)
	ch <- prometheus.MustNewConstMetric(descBuild, prometheus.GaugeValue, 1, b.Version, b.Commit, b.Go)
	type key struct{ tenant, transport string }
	sessions := map[key]int{}
	agents := map[string]map[string]bool{}
	rtts := map[string]*rttDist{}
	expiry := map[string]int64{}
	streams := map[string]int64{}
	var open int64
	for _, ac := range r.sessions.Sessions().Snapshot("") {
		tenant := ac.Tenant
		sessions[key{tenant, ac.Transport}]++
		if agents[tenant] == nil {
			agents[tenant] = map[string]bool{}
		}
		agents[tenant][ac.Agent] = true
		open += ac.StreamsOpen
		streams[tenant] += ac.StreamsOpen
		if na := ac.CertNotAfter.UnixNano(); !ac.CertNotAfter.IsZero() && (expiry[tenant] == 0 || na < expiry[tenant]) {
			expiry[tenant] = na
		}
		if ac.RTT > 0 {
			d := rtts[tenant]
			if d == nil {
				d = &rttDist{buckets: map[float64]uint64{}}
				rtts[tenant] = d
			}
			s := ac.RTT.Seconds()
			d.n++
			d.sum += s
			for _, le := range rttBuckets {
				if s <= le {
					d.buckets[le]++
				}
			}
		}
	}
	for k, n := range sessions {
		ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(n), k.tenant, k.transport)
	}
	for t, ids := range agents {
		ch <- prometheus.MustNewConstMetric(descAgents, prometheus.GaugeValue, float64(len(ids)), t)
		ch <- prometheus.MustNewConstMetric(descTenantStreams, prometheus.GaugeValue, float64(streams[t]), t)
		if l := r.pol.LimitsOf(t); l != nil && l.MaxStreams > 0 {
			ch <- prometheus.MustNewConstMetric(descTenantLimit, prometheus.GaugeValue, float64(l.MaxStreams), t)
		}
	}
	for t, d := range rtts {
		ch <- prometheus.MustNewConstHistogram(descRTT, d.n, d.sum, d.buckets, t)
	}
	for t, na := range expiry {
		ch <- prometheus.MustNewConstMetric(descCertExpiry, prometheus.GaugeValue, float64(na)/1e9, t)
	}
	ch <- prometheus.MustNewConstMetric(descStreamsActive, prometheus.GaugeValue, float64(open))
	ch <- prometheus.MustNewConstMetric(descFront, prometheus.GaugeValue, float64(r.doors.Open()))
	handshakeMetrics(ch, descHandshakes, r.sessions.Stats())
	if r.peers != nil {
		handshakeMetrics(ch, descPeerHandshakes, r.peers.Stats())
	}
	if r.links != nil {
		for _, f := range r.links.Failures() {
			ch <- prometheus.MustNewConstMetric(descPeerLinkFailures, prometheus.CounterValue, float64(f.Dial), f.Relay, "dial")
			ch <- prometheus.MustNewConstMetric(descPeerLinkFailures, prometheus.CounterValue, float64(f.Unanswered), f.Relay, "unanswered")
			ch <- prometheus.MustNewConstMetric(descPeerLinkFailures, prometheus.CounterValue, float64(f.Closed), f.Relay, "closed")
		}
	}
	ch <- prometheus.MustNewConstMetric(descFrontLimited, prometheus.CounterValue, float64(r.doors.SourceLimited.Load()))
	ch <- prometheus.MustNewConstMetric(descCAExpiry, prometheus.GaugeValue, float64(r.auth.CA().Signer().Cert.NotAfter.Unix()))
	ch <- prometheus.MustNewConstMetric(descAuditQueue, prometheus.GaugeValue, float64(r.audit.Queued()))
	isolated := 0.0
	if r.isolated.Load() {
		isolated = 1
	}
	ch <- prometheus.MustNewConstMetric(descStoreIsolated, prometheus.GaugeValue, isolated)
	ch <- prometheus.MustNewConstMetric(descStoreIsolations, prometheus.CounterValue, float64(r.isolations.Load()))
	ch <- prometheus.MustNewConstMetric(descStoreIsolatedKept, prometheus.CounterValue, float64(r.strayKept.Load()))
	graced := 0.0
	if r.storeOutage() {
		graced = 1
	}
	ch <- prometheus.MustNewConstMetric(descStoreOutageGrace, prometheus.GaugeValue, graced)
	ch <- prometheus.MustNewConstMetric(descStaleCredentials, prometheus.CounterValue, float64(r.doors.StaleBackends()))
	ch <- prometheus.MustNewConstMetric(descStreamMemory, prometheus.GaugeValue, float64(r.mem.Held()))
	ch <- prometheus.MustNewConstMetric(descStreamMemoryCap, prometheus.GaugeValue, float64(r.mem.Cap()))
	ch <- prometheus.MustNewConstMetric(descAuditLost, prometheus.CounterValue, float64(r.audit.LostFiled()), "file")
	ch <- prometheus.MustNewConstMetric(descAuditLost, prometheus.CounterValue, float64(r.audit.LostUnfiled()), "none")
	ch <- prometheus.MustNewConstMetric(descAuditFileErrors, prometheus.CounterValue, float64(r.audit.FileErrors()))
	ch <- prometheus.MustNewConstMetric(descAuditUnwritten, prometheus.GaugeValue, float64(r.audit.Unwritten()))
}

// buildInfo is what tether_build_info and the console's health panel say
// about the binary.
type buildInfo struct {
	Version, Commit, Go string
}

// readBuild is the relay's version (Config.Version, else the module's),
// the commit the binary was built from (as go build recorded it; "unknown"
// without version control information) and the Go version.
func readBuild(version string) buildInfo {
	b := buildInfo{Version: version, Go: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if b.Version == "" || b.Version == "dev" {
			if v := bi.Main.Version; v != "" && v != "(devel)" {
				b.Version = v
			}
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				b.Commit = s.Value
			}
		}
	}
	b.Version, b.Commit = cmp.Or(b.Version, "unknown"), cmp.Or(b.Commit, "unknown")
	return b
}

// handshakeMetrics sends a listener's handshake counts by outcome as desc.
func handshakeMetrics(ch chan<- prometheus.Metric, desc *prometheus.Desc, hs *throttle.HandshakeStats) {
	ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(hs.OK.Load()), "ok")
	ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(hs.Failed.Load()), "failed")
	ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(hs.Throttled.Load()), "throttled")
	ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(hs.SourceLimited.Load()), "source_limited")
}
