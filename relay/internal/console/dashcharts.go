package console

import (
	"maps"
	"math"
	"slices"
	"time"

	"github.com/tetherhq/tether/relay/internal/history"
)

// The charts of each page, from the part of the relay's history the
// operator's scope sees: the relay and every tenant for a vendor
// operator, one tenant otherwise.

// dashEvents is how many connects and disconnects a page lists.
const dashEvents = 20

// chartsView is a page's charts and the connects and disconnects it lists.
type chartsView struct {
	Charts []chart
	Events []history.Event
	// Untracked counts tenants and agents the relay keeps no history of
	// (its bounds reached): of the page's tenant (a tenant-scoped
	// operator's pages are all its tenant's), or of the relay on a vendor
	// operator's overview.
	Untracked int
	// Interval is how often the relay samples.
	Interval time.Duration
}

// sumLines adds lines value by value; NaN only where every line is NaN.
func sumLines(n int, ls ...history.Line) history.Line {
	out := make(history.Line, n)
	for i := range out {
		out[i] = math.NaN()
		for _, l := range ls {
			if i < len(l) && !math.IsNaN(l[i]) {
				out[i] = nanZero(out[i]) + l[i]
			}
		}
	}
	return out
}

// outcomeSeries orders stream outcomes ok first, then by name, ok in
// its own colour.
func outcomeSeries(opens map[string]history.Line) []series {
	var out []series
	for _, o := range slices.Sorted(maps.Keys(opens)) {
		s := series{Label: o, Line: opens[o]}
		if o == "ok" {
			s.Class = "ok"
			out = slices.Insert(out, 0, s)
			continue
		}
		out = append(out, s)
	}
	return out
}

// directions is a tenant's or agent's throughput each way.
func directions(to, from history.Line) []series {
	return []series{{Label: "service → backend", Class: "from", Line: from}, {Label: "backend → service", Class: "to", Line: to}}
}

// connects is the up/down chart of agents coming and going.
func connects(id, note string, times []time.Time, up, down history.Line) chart {
	return upDownChart(id, "Agents connecting and disconnecting", note, times,
		series{Label: "connected", Class: "up", Line: up}, series{Label: "disconnected", Class: "down", Line: down})
}

// overviewCharts are the fleet's charts: every tenant's and the relay's
// for a vendor operator (tenant ""), one tenant's otherwise.
func overviewCharts(w history.Window, tenant string) []chart {
	n := len(w.Times)
	if tenant != "" {
		var t history.TenantHistory
		if i := slices.IndexFunc(w.Tenants, func(t history.TenantHistory) bool { return t.Name == tenant }); i >= 0 {
			t = w.Tenants[i]
		}
		return tenantCharts(w, t, false)
	}
	var through, streams, rtt []series
	for _, t := range w.Tenants {
		through = append(through, series{Label: t.Name, Line: sumLines(n, t.ToService, t.FromService)})
		label := t.Name
		if l := last(t.MaxStreams); l > 0 {
			label += " (limit " + trimFloat(l) + ")"
		}
		streams = append(streams, series{Label: label, Line: t.StreamsOpen})
		rtt = append(rtt, series{Label: t.Name, Line: t.RTT})
	}
	var up, down []history.Line
	for _, t := range w.Tenants {
		up, down = append(up, t.Connected), append(down, t.Disconnected)
	}
	return []chart{
		lineChart("throughput", "Throughput per tenant", "bytes per second both ways through this relay", w.Times, unitBytesRate, through),
		stackedChart("opens", "Stream opens per second by outcome", "every request, refusals of unknown tenants included", w.Times, unitPerSecond, outcomeSeries(w.Relay.Opens)),
		lineChart("streams", "Open streams per tenant", "streams open on the tenants' agents now", w.Times, unitCount, streams),
		lineChart("rtt", "Round-trip time per tenant", "mean over each tenant's connected agents", w.Times, unitSeconds, rtt),
		connects("connects", "agents whose first session came or last session went", w.Times, sumLines(n, up...), sumLines(n, down...)),
	}
}

// tenantCharts are one tenant's charts; with agents, also per agent.
func tenantCharts(w history.Window, t history.TenantHistory, agents bool) []chart {
	n := len(w.Times)
	orNaN := func(l history.Line) history.Line {
		if l == nil {
			return sumLines(n)
		}
		return l
	}
	limitNote := "no limit set"
	streams := []series{{Label: "open", Line: orNaN(t.StreamsOpen)}}
	if l := last(t.MaxStreams); l > 0 {
		limitNote = "dashed: the tenant's limit, " + trimFloat(l) + " streams"
		streams = append(streams, series{Label: "limit", Class: "limit", Line: t.MaxStreams})
	}
	out := []chart{
		lineChart("throughput", "Throughput", "bytes per second through this relay", w.Times, unitBytesRate, directions(orNaN(t.ToService), orNaN(t.FromService))),
	}
	rtt := lineChart("rtt", "Round-trip time", "mean and largest over the tenant's connected agents", w.Times, unitSeconds,
		[]series{{Label: "mean", Line: orNaN(t.RTT)}, {Label: "largest", Line: orNaN(t.RTTMax)}})
	if agents {
		var through, perAgent []series
		for _, a := range w.Agents {
			if a.Tenant != t.Name {
				continue
			}
			through = append(through, series{Label: a.ID, Line: sumLines(n, a.ToService, a.FromService)})
			perAgent = append(perAgent, series{Label: a.ID, Line: a.RTT})
		}
		out = append(out, lineChart("agent-throughput", "Throughput per agent", "bytes per second both ways", w.Times, unitBytesRate, through))
		rtt = lineChart("rtt", "Round-trip time per agent", "mean over each agent's sessions, measured by the relay", w.Times, unitSeconds, perAgent)
	}
	return append(out,
		stackedChart("opens", "Stream opens per second by outcome", "requests for this tenant", w.Times, unitPerSecond, outcomeSeries(t.Opens)),
		lineChart("streams", "Open streams against the limit", limitNote, w.Times, unitCount, streams),
		rtt,
		connects("connects", "agents whose first session came or last session went", w.Times, orNaN(t.Connected), orNaN(t.Disconnected)),
	)
}

// agentCharts are one agent's charts; its connects and disconnects are
// its events counted in the interval they fell in.
func agentCharts(w history.Window, id string) []chart {
	n := len(w.Times)
	a := history.AgentHistory{ToService: sumLines(n), FromService: sumLines(n), RTT: sumLines(n), Sessions: sumLines(n)}
	if i := slices.IndexFunc(w.Agents, func(a history.AgentHistory) bool { return a.ID == id }); i >= 0 {
		a = w.Agents[i]
	}
	up, down := sumLines(n), sumLines(n)
	for _, e := range w.Events {
		i, _ := slices.BinarySearchFunc(w.Times, e.At, func(t, at time.Time) int { return t.Compare(at) })
		if i >= n {
			continue
		}
		if e.Connected {
			up[i] = nanZero(up[i]) + 1
		} else {
			down[i] = nanZero(down[i]) + 1
		}
	}
	// While the agent has a series, intervals without an event show 0.
	for i := range n {
		if !math.IsNaN(a.Sessions[i]) {
			up[i], down[i] = nanZero(up[i]), nanZero(down[i])
		}
	}
	return []chart{
		lineChart("throughput", "Throughput", "bytes per second through this relay", w.Times, unitBytesRate, directions(a.ToService, a.FromService)),
		lineChart("rtt", "Round-trip time", "mean over the agent's sessions, measured by the relay", w.Times, unitSeconds, []series{{Label: "RTT", Line: a.RTT}}),
		connects("connects", "this agent's first session coming, its last going", w.Times, up, down),
	}
}

// eventLabel says what an event was.
func eventLabel(e history.Event) string {
	if e.Connected {
		return "connected"
	}
	return "disconnected"
}
