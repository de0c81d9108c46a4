package relay

import (
	"cmp"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/tetherhq/tether/protocol"
	agentsession "github.com/tetherhq/tether/relay/internal/session"
)

// LiveAgent is a snapshot of one connected agent session, for operators.
type LiveAgent = agentsession.LiveAgent

// LiveAgents returns a snapshot of every connected agent session of tenant
// ("" for all), sorted by tenant, agent and connection time.
func (r *Relay) LiveAgents(tenant string) []LiveAgent {
	return r.reg.snapshot(tenant)
}

// liveView is the relay's live agents as its Admin sees them.
type liveView struct{ r *Relay }

func (l liveView) LiveAgents(tenant string) []LiveAgent { return l.r.LiveAgents(tenant) }

func (g *registry) snapshot(tenant string) []LiveAgent {
	g.mu.RLock()
	var conns []*agentConn
	if tenant == "" {
		for _, list := range g.byTenant {
			conns = append(conns, list...)
		}
	} else {
		conns = append(conns, g.byTenant[tenant]...)
	}
	g.mu.RUnlock()
	out := make([]LiveAgent, 0, len(conns))
	for _, c := range conns {
		out = append(out, c.live())
	}
	slices.SortFunc(out, func(a, b LiveAgent) int {
		return cmp.Or(cmp.Compare(a.Tenant, b.Tenant), cmp.Compare(a.Agent, b.Agent), a.ConnectedAt.Compare(b.ConnectedAt))
	})
	return out
}

func (c *agentConn) live() LiveAgent {
	l := LiveAgent{
		Tenant:       c.id.Tenant,
		Agent:        c.id.ID,
		SessionID:    c.sessionID,
		Transport:    c.transport,
		Remote:       addrString(c.remote),
		ConnectedAt:  c.connectedAt,
		RTT:          time.Duration(c.rtt.Load()),
		StreamsOpen:  c.open.Load(),
		StreamsTotal: c.total.Load(),
		Draining:     c.draining.Load(),
		Hello:        c.hello,
		Report:       c.report.Load(),
	}
	if n := c.lastHeard.Load(); n != 0 {
		l.LastHeard = time.Unix(0, n)
	}
	if n := c.notAfter.Load(); n != 0 {
		l.CertNotAfter = time.Unix(0, n)
	}
	if n := c.reportAt.Load(); n != 0 {
		l.ReportAt = time.Unix(0, n)
	}
	if n := c.dialFailedAt.Load(); n != 0 {
		l.DialFailedAt = time.Unix(0, n)
	}
	return l
}

// Limits on what the relay keeps of a report: it comes from the agent, so
// a hostile agent must not make the relay hold more than a few KiB for it.
const (
	maxReportString   = 512
	maxReportServices = 64
)

// boundReport returns m with its strings shortened and its lists and maps
// capped, so that every agent's report costs the relay a bounded amount.
func boundReport(m *protocol.Report) *protocol.Report {
	r := *m
	for _, s := range []*string{&r.AgentVersion, &r.OS, &r.Arch, &r.Hostname, &r.Transport, &r.TransportWhy, &r.LastDialError, &r.ConfigHash, &r.ConfigError} {
		*s = clip(*s)
	}
	if len(r.Services) > maxReportServices {
		r.Services = r.Services[:maxReportServices]
	}
	r.Services = slices.Clone(r.Services)
	for i := range r.Services {
		r.Services[i] = clip(r.Services[i])
	}
	if r.DialFailures != nil {
		fails := make(map[string]uint64, min(len(r.DialFailures), maxReportServices))
		for _, k := range slices.Sorted(maps.Keys(r.DialFailures)) {
			if len(fails) == maxReportServices {
				break
			}
			fails[clip(k)] = r.DialFailures[k]
		}
		r.DialFailures = fails
	}
	return &r
}

func clip(s string) string {
	if len(s) <= maxReportString {
		return s
	}
	return strings.ToValidUTF8(s[:maxReportString], "") + "…"
}

// noteReport keeps m, bounded, as the session's latest report. Dial
// failures are counted since the agent started, so the relay notes when
// the count last went up: a failure an hour ago must not leave the agent
// "degraded" for good.
func (c *agentConn) noteReport(m *protocol.Report, now time.Time) {
	rep := boundReport(m)
	if n := rep.DialFailuresTotal(); n > 0 {
		if prev := c.report.Load(); prev == nil || n > prev.DialFailuresTotal() {
			c.dialFailedAt.Store(now.UnixNano())
		}
	}
	c.report.Store(rep)
	c.reportAt.Store(now.UnixNano())
}
