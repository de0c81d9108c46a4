package relay

import (
	"time"

	"github.com/tetherhq/tether/relay/internal/console"
	"github.com/tetherhq/tether/relay/internal/throttle"
	"github.com/tetherhq/tether/relay/internal/update"
)

// The operator listeners (metrics, admin, download) bound the connections
// they hold open, per source address, per source network and in all
// (throttle.LimitListener), so that no client can hold enough of them to
// leave the relay no file descriptor for its agent port and front doors;
// a connection beyond a bound is closed at accept and counted in
// tether_listener_refused_total.

// Names of the operator listeners in tether_listener_refused_total.
const (
	listenerMetrics  = "metrics"
	listenerAdmin    = "admin"
	listenerDownload = "download"
)

// metricsLimits are the metrics listener's bounds: 16 connections from one
// address, 64 from one network, 256 in all. Its clients are a few
// Prometheus servers and load-balancer health checks, each of which holds
// one connection at a time (or none between its requests).
func metricsLimits() throttle.ListenerLimits {
	return throttle.ListenerLimits{PerAddress: 16, PerNetwork: 64, Total: 256}
}

// metricsIdleTimeout closes a metrics connection idle this long between
// requests: a scraper reconnecting every 30 s costs nothing, and a held
// idle connection ends soon.
const metricsIdleTimeout = 15 * time.Second

// opsShare is the part of the process's file descriptors the operator
// listeners may hold together: a quarter.
const opsShare = 4

// opsLimits are the bounds of the operator listeners that are on. Where
// the process's descriptor limit (fds; 0 when unknown) is so low that the
// listeners' totals together would pass a quarter of it, each total is
// scaled down in proportion (to at least 4), and the bounds per address
// and network with it: with the usual limit of a service (Go raises the
// soft limit to the hard one, often 524288) nothing changes; with 1024,
// metrics and admin together hold at most 256.
func opsLimits(metrics, admin, download bool, fds uint64) (m, a, d throttle.ListenerLimits, scaled bool) {
	m, a, d = metricsLimits(), console.DefaultLimits(), update.DefaultDownloadLimits()
	sum := 0
	for _, l := range []struct {
		on  bool
		lim throttle.ListenerLimits
	}{{metrics, m}, {admin, a}, {download, d}} {
		if l.on {
			sum += l.lim.Total
		}
	}
	budget := fds / opsShare
	if fds == 0 || sum == 0 || uint64(sum) <= budget {
		return m, a, d, false
	}
	scale := func(l throttle.ListenerLimits) throttle.ListenerLimits {
		t := max(int(uint64(l.Total)*budget/uint64(sum)), 4)
		return throttle.ListenerLimits{PerAddress: min(l.PerAddress, t), PerNetwork: min(l.PerNetwork, t), Total: t}
	}
	return scale(m), scale(a), scale(d), true
}

// refusedBy counts the connections listener closed at accept.
func (r *Relay) refusedBy(listener string) func(reason string) {
	for _, reason := range []string{throttle.RefusedSource, throttle.RefusedFull} {
		r.metrics.ListenerRefused.WithLabelValues(listener, reason) // shown at 0
	}
	return func(reason string) { r.metrics.ListenerRefused.WithLabelValues(listener, reason).Inc() }
}
