package admin

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/store"
)

// Health is an agent's state as operators see it.
type Health string

// Agent health states, in the order that needs attention first (see
// Health.Rank).
const (
	// HealthDown: enrolled, not revoked, and not connected.
	HealthDown Health = "down"
	// HealthDegraded: connected, but something is wrong: a config error,
	// failed dials to services in the last 10 minutes, a certificate whose renewal is overdue,
	// every session draining, or no report received yet. FleetAgent.Failing
	// says whether the agent or only its services fail.
	HealthDegraded Health = "degraded"
	// HealthUp: connected and reporting nothing wrong.
	HealthUp Health = "up"
	// HealthRevoked: revoked by an operator.
	HealthRevoked Health = "revoked"
)

// Healths lists every state, needing attention first.
var Healths = []Health{HealthDown, HealthDegraded, HealthUp, HealthRevoked}

// Rank orders states: lower needs attention sooner.
func (h Health) Rank() int {
	if i := slices.Index(Healths, h); i >= 0 {
		return i
	}
	return len(Healths)
}

// Unhealthy reports whether h is down or degraded.
func (h Health) Unhealthy() bool { return h == HealthDown || h == HealthDegraded }

// ParseHealth parses a state name.
func ParseHealth(s string) (Health, error) {
	h := Health(s)
	if !slices.Contains(Healths, h) {
		return "", invalidf("state %q: want one of up, degraded, down, revoked", s)
	}
	return h, nil
}

// FleetAgent is one enrolled agent as the fleet view shows it: the store's
// facts joined with its live sessions and its latest report.
type FleetAgent struct {
	ID       string `json:"id"`
	Tenant   string `json:"tenant"`
	Hostname string `json:"hostname"`
	State    Health `json:"state"`
	// Reason says why the state is not up ("" when up); several reasons
	// are joined with "; ".
	Reason string `json:"reason,omitempty"`
	// Failing says, for a degraded agent, what fails: FailingAgent when
	// something about the agent itself is wrong (no report yet, a config
	// error, an overdue renewal, every session draining), FailingService
	// when its connections are fine and only dials to its services fail.
	Failing Failing `json:"failing,omitempty"`
	// FailingServices are the services whose dials failed, from the
	// agent's latest report, while a dial failed in the last 10 minutes.
	FailingServices []string `json:"failing_services,omitempty"`
	// Version, OS and Arch come from the latest report, else the hello.
	Version string `json:"version,omitempty"`
	OS      string `json:"os,omitempty"`
	Arch    string `json:"arch,omitempty"`
	// Transport of the session the agent was last heard on ("" when down).
	Transport string `json:"transport,omitempty"`
	// RTT measured by the relay on that session.
	RTT time.Duration `json:"rtt_ns"`
	// Relays are the relays of the cluster holding sessions of the agent
	// now (this one included), by id; empty when it is connected nowhere.
	Relays []string `json:"relays,omitempty"`
	// Sessions connected now; StreamsOpen and StreamsTotal sum over them.
	Sessions     int    `json:"sessions"`
	StreamsOpen  int64  `json:"streams_open"`
	StreamsTotal uint64 `json:"streams_total"`
	// BytesIn and BytesOut are from the agent's latest report (since the
	// agent started); zero without a report.
	BytesIn  uint64 `json:"bytes_in"`
	BytesOut uint64 `json:"bytes_out"`
	// LastSeen is when the relay last heard from the agent; zero when it is
	// not connected to this relay.
	LastSeen time.Time `json:"last_seen,omitzero"`
	// CertNotAfter is when the agent's newest certificate expires.
	CertNotAfter time.Time `json:"cert_not_after"`
	// ConfigError is the agent's last config reload error, if it reported one.
	ConfigError   string     `json:"config_error,omitempty"`
	EnrolledAt    time.Time  `json:"enrolled_at"`
	RevokedAt     *time.Time `json:"revoked_at,omitempty"`
	RevokedReason string     `json:"revoked_reason,omitempty"`
}

// Failing is what fails in a degraded agent.
type Failing string

const (
	// FailingAgent: the agent itself (no report yet, a config error, an
	// overdue renewal, every session draining), whatever its services do.
	FailingAgent Failing = "agent"
	// FailingService: the agent is connected and well, but dials to one
	// or more of its services failed lately: the service (or the network
	// to it, or the agent's allowlist entry) needs looking at, not the
	// agent.
	FailingService Failing = "service"
)

// StateCounts counts agents by state.
type StateCounts struct {
	Up       int `json:"up"`
	Degraded int `json:"degraded"`
	// ServiceFailing counts the degraded agents whose only trouble is a
	// failing service (FailingService); they are counted in Degraded too.
	ServiceFailing int `json:"service_failing"`
	Down           int `json:"down"`
	Revoked        int `json:"revoked"`
}

// AgentDegraded counts the degraded agents whose trouble is the agent's
// own (FailingAgent).
func (c StateCounts) AgentDegraded() int { return c.Degraded - c.ServiceFailing }

func (c *StateCounts) add(a FleetAgent) {
	switch a.State {
	case HealthUp:
		c.Up++
	case HealthDegraded:
		c.Degraded++
		if a.Failing == FailingService {
			c.ServiceFailing++
		}
	case HealthDown:
		c.Down++
	case HealthRevoked:
		c.Revoked++
	}
}

// Total is the number of agents counted.
func (c StateCounts) Total() int { return c.Up + c.Degraded + c.Down + c.Revoked }

// TenantSummary is one tenant with its agents counted by state.
type TenantSummary struct {
	Name      string      `json:"name"`
	CreatedAt time.Time   `json:"created_at"`
	Agents    StateCounts `json:"agents"`
	// Limits are the tenant's limits; nil when it has none.
	Limits *Limits `json:"limits,omitempty"`
}

// FleetFilter selects agents of the fleet view; zero fields match all.
type FleetFilter struct {
	Tenant string
	State  Health // one state only
	// Unhealthy keeps only down and degraded agents.
	Unhealthy bool
}

func (f FleetFilter) match(a FleetAgent) bool {
	return (f.Tenant == "" || a.Tenant == f.Tenant) && (f.State == "" || a.State == f.State) && (!f.Unhealthy || a.State.Unhealthy())
}

// Fleet is a snapshot of the fleet for operators.
type Fleet struct {
	At time.Time `json:"at"`
	// Agents match the filter, needing attention first (see SortFleet).
	Agents []FleetAgent `json:"agents"`
	// Tenants are every tenant (or the filtered one), by name, counting all
	// their agents whatever the state filter.
	Tenants []TenantSummary `json:"tenants"`
	// Totals count every agent of Tenants by state.
	Totals StateCounts `json:"totals"`
}

// AgentDetail is one agent with its live sessions, each carrying the
// agent's latest report on it (nil until one arrives).
type AgentDetail struct {
	FleetAgent
	Live []LiveAgent `json:"live"`
}

// Fleet returns the fleet view: enrolled agents from the store joined with
// the sessions connected to this relay.
func (a *Admin) Fleet(ctx context.Context, f FleetFilter) (Fleet, error) {
	now := a.now()
	var err error
	if f.Tenant, err = a.scopedTenant(f.Tenant); err != nil {
		return Fleet{}, err
	}
	infos, err := a.Agents(ctx, f.Tenant)
	if err != nil {
		return Fleet{}, err
	}
	tenants, err := a.Tenants(ctx)
	if err != nil {
		return Fleet{}, err
	}
	limits, err := a.AllLimits(ctx)
	if err != nil {
		return Fleet{}, err
	}
	all := BuildFleet(infos, a.liveAgents(f.Tenant), now, a.certLifetime)
	a.withRelays(ctx, f.Tenant, all)
	out := Fleet{At: now, Agents: []FleetAgent{}, Tenants: []TenantSummary{}}
	byTenant := map[string]*StateCounts{}
	for _, t := range tenants {
		if f.Tenant != "" && t.Name != f.Tenant {
			continue
		}
		s := TenantSummary{Name: t.Name, CreatedAt: t.CreatedAt}
		if i := slices.IndexFunc(limits, func(l Limits) bool { return l.Tenant == t.Name }); i >= 0 {
			s.Limits = &limits[i]
		}
		out.Tenants = append(out.Tenants, s)
	}
	for i := range out.Tenants {
		byTenant[out.Tenants[i].Name] = &out.Tenants[i].Agents
	}
	for _, a := range all {
		if c := byTenant[a.Tenant]; c != nil {
			c.add(a)
		}
		out.Totals.add(a)
		if f.match(a) {
			out.Agents = append(out.Agents, a)
		}
	}
	return out, nil
}

// withRelays adds to each agent the relays holding it. An agent with no
// session here but held by another relay of the cluster is up: what is
// known of its health beyond that (its reports) is on that relay.
func (a *Admin) withRelays(ctx context.Context, tenant string, agents []FleetAgent) {
	held := a.agentRelays(ctx, tenant)
	if len(held) == 0 {
		return
	}
	for i := range agents {
		fa := &agents[i]
		fa.Relays = held[store.AgentKey{Tenant: fa.Tenant, Agent: fa.ID}]
		if fa.State == HealthDown && len(fa.Relays) > 0 {
			fa.State, fa.Reason = HealthUp, ""
		}
	}
	SortFleet(agents)
}

// liveAgents is the live view of a running relay, nothing offline.
func (a *Admin) liveAgents(tenant string) []LiveAgent {
	if a.live == nil {
		return nil
	}
	return a.live.LiveAgents(tenant)
}

// FleetAgent returns one agent with its live sessions and reports.
func (a *Admin) FleetAgent(ctx context.Context, id string) (AgentDetail, error) {
	info, err := a.Agent(ctx, id)
	if err != nil {
		return AgentDetail{}, err
	}
	var live []LiveAgent
	for _, l := range a.liveAgents(info.Tenant) {
		if l.Agent == id {
			live = append(live, l)
		}
	}
	fa := BuildFleet([]AgentInfo{info}, live, a.now(), a.certLifetime)
	a.withRelays(ctx, info.Tenant, fa)
	if live == nil {
		live = []LiveAgent{}
	}
	return AgentDetail{FleetAgent: fa[0], Live: live}, nil
}

// BuildFleet joins enrolled agents with live sessions (of any agents) and
// works out each agent's state at now; certLifetime is the relay's agent
// certificate lifetime, which agents renew when a third remains. The result
// is sorted by SortFleet. Sessions of agents not in infos are ignored.
func BuildFleet(infos []AgentInfo, live []LiveAgent, now time.Time, certLifetime time.Duration) []FleetAgent {
	sessions := map[string][]LiveAgent{}
	for _, l := range live {
		sessions[l.Tenant+"/"+l.Agent] = append(sessions[l.Tenant+"/"+l.Agent], l)
	}
	out := make([]FleetAgent, 0, len(infos))
	for _, info := range infos {
		out = append(out, fleetAgent(info, sessions[info.Tenant+"/"+info.ID], now, certLifetime))
	}
	SortFleet(out)
	return out
}

// SortFleet sorts agents needing attention first: by state (down,
// degraded, up, revoked), then tenant, then id.
func SortFleet(agents []FleetAgent) {
	slices.SortFunc(agents, func(a, b FleetAgent) int {
		return cmp.Or(cmp.Compare(a.State.Rank(), b.State.Rank()), cmp.Compare(a.Tenant, b.Tenant), cmp.Compare(a.ID, b.ID))
	})
}

func fleetAgent(info AgentInfo, sessions []LiveAgent, now time.Time, certLifetime time.Duration) FleetAgent {
	a := FleetAgent{ID: info.ID, Tenant: info.Tenant, Hostname: info.Hostname, CertNotAfter: info.CertNotAfter,
		EnrolledAt: info.EnrolledAt, RevokedAt: info.RevokedAt, RevokedReason: info.RevokedReason, Sessions: len(sessions)}
	// The session heard from last speaks for the agent.
	var latest *LiveAgent
	allDraining := len(sessions) > 0
	for i := range sessions {
		s := &sessions[i]
		a.StreamsOpen += s.StreamsOpen
		a.StreamsTotal += s.StreamsTotal
		if !s.Draining {
			allDraining = false
		}
		if s.CertNotAfter.After(a.CertNotAfter) {
			a.CertNotAfter = s.CertNotAfter
		}
		if latest == nil || s.LastHeard.After(latest.LastHeard) || (latest.Report == nil && s.Report != nil) {
			latest = s
		}
	}
	if latest != nil {
		a.Transport, a.RTT, a.LastSeen = latest.Transport, latest.RTT, latest.LastHeard
		a.Version, a.OS, a.Arch = latest.Hello.AgentVersion, latest.Hello.OS, latest.Hello.Arch
		if a.LastSeen.IsZero() {
			a.LastSeen = latest.ConnectedAt
		}
		if rep := latest.Report; rep != nil {
			a.Version, a.OS, a.Arch = cmp.Or(rep.AgentVersion, a.Version), cmp.Or(rep.OS, a.OS), cmp.Or(rep.Arch, a.Arch)
			a.BytesIn, a.BytesOut, a.ConfigError = rep.BytesIn, rep.BytesOut, rep.ConfigError
			if rep.Hostname != "" {
				a.Hostname = rep.Hostname
			}
		}
	}
	switch {
	case info.RevokedAt != nil:
		a.State, a.Reason = HealthRevoked, "revoked"
		if info.RevokedReason != "" {
			a.Reason += ": " + info.RevokedReason
		}
	case len(sessions) == 0:
		a.State, a.Reason = HealthDown, "not connected"
		if !a.CertNotAfter.IsZero() && !now.Before(a.CertNotAfter) {
			a.Reason = "not connected; certificate expired " + a.CertNotAfter.UTC().Format(time.RFC3339) + ": the agent must enrol again"
		}
	default:
		// The agent's own troubles, then its services'.
		var why, services []string
		if allDraining {
			why = append(why, "draining")
		}
		if latest.Report == nil {
			why = append(why, "no report yet")
		} else {
			rep := latest.Report
			if rep.ConfigError != "" {
				why = append(why, "config error: "+rep.ConfigError)
			}
			if n := rep.DialFailuresTotal(); n > 0 && now.Sub(latest.DialFailedAt) < recentDialFailure {
				a.FailingServices = slices.Sorted(maps.Keys(rep.DialFailures))
				s := fmt.Sprintf("%d failed dials to %s since the agent started, the latest within %s", n, strings.Join(a.FailingServices, ", "), recentDialFailure)
				if rep.LastDialError != "" {
					s += " (last: " + rep.LastDialError + ")"
				}
				services = append(services, s)
			}
		}
		if left := a.CertNotAfter.Sub(now); certLifetime > 0 && !a.CertNotAfter.IsZero() && left < certLifetime/3 {
			if left <= 0 {
				why = append(why, "certificate expired")
			} else {
				why = append(why, "certificate expires in "+left.Round(time.Second).String()+" (renewal overdue)")
			}
		}
		a.State = HealthUp
		switch {
		case len(why) > 0:
			a.State, a.Failing, a.Reason = HealthDegraded, FailingAgent, strings.Join(append(why, services...), "; ")
		case len(services) > 0:
			a.State, a.Failing, a.Reason = HealthDegraded, FailingService, "service failing: "+strings.Join(services, "; ")
		}
	}
	return a
}

// recentDialFailure is how long a new failed dial to a service keeps an
// agent degraded.
const recentDialFailure = 10 * time.Minute

// DrainAgent tells every session of agent id to go away (GoAway "drain"):
// the relay sends it no new streams there, streams in flight continue, and
// the agent reconnects. It reports how many sessions were told (none for
// an offline command).
func (a *Admin) DrainAgent(ctx context.Context, id, msg string) (int, error) {
	info, err := a.Agent(ctx, id)
	if err != nil {
		return 0, err
	}
	if len(msg) > 500 {
		return 0, invalidf("drain message is longer than 500 bytes")
	}
	if msg == "" {
		msg = "drained by an operator"
	}
	if err := a.administer(info.Tenant, "draining an agent", notFoundf("no agent %q", id)); err != nil {
		return 0, err
	}
	n := 0
	if a.live != nil {
		n = a.live.DrainAgent(info.Tenant, id, msg)
	}
	// Every relay holding sessions of the agent drains them (this one's
	// sessions are not told twice).
	if err := a.store.AppendChange(ctx, store.Change{Kind: store.ChangeDrain, Tenant: info.Tenant, Subject: id}); err != nil {
		return n, fmt.Errorf("tell the other relays: %w", err)
	}
	a.Record(audit.Drain, info.Tenant, id, "", map[string]any{"sessions": n, "message": msg})
	return n, nil
}
