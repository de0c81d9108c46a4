package admin

import (
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

func TestBuildFleetStates(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	life := 24 * time.Hour
	fresh := now.Add(20 * time.Hour)
	revoked := now.Add(-time.Hour)
	info := func(id string) AgentInfo { return AgentInfo{ID: id, Tenant: "acme", CertNotAfter: fresh} }
	session := func(id string, rep *protocol.Report) LiveAgent {
		return LiveAgent{Tenant: "acme", Agent: id, LastHeard: now, CertNotAfter: fresh, Report: rep}
	}
	failedDials := func(rep *protocol.Report) LiveAgent {
		rep.DialFailures, rep.LastDialError = map[string]uint64{"db": 3, "api": 1}, "refused"
		l := session("a", rep)
		l.DialFailedAt = now.Add(-time.Minute)
		return l
	}
	for _, tc := range []struct {
		name    string
		info    AgentInfo
		live    []LiveAgent
		state   Health
		failing Failing
		reason  string
	}{
		{"up", info("a"), []LiveAgent{session("a", &protocol.Report{})}, HealthUp, "", ""},
		{"no report yet", info("a"), []LiveAgent{session("a", nil)}, HealthDegraded, FailingAgent, "no report yet"},
		{"config error", info("a"), []LiveAgent{session("a", &protocol.Report{ConfigError: "bad yaml"})}, HealthDegraded, FailingAgent, "config error: bad yaml"},
		// Connections fine, dials to its services failing: the service
		// fails, not the agent.
		{"dial failures", info("a"), []LiveAgent{failedDials(&protocol.Report{})}, HealthDegraded, FailingService,
			"service failing: 4 failed dials to api, db since the agent started, the latest within 10m0s (last: refused)"},
		{"dial failures and a config error", info("a"), []LiveAgent{failedDials(&protocol.Report{ConfigError: "bad yaml"})}, HealthDegraded, FailingAgent,
			"config error: bad yaml; 4 failed dials to api, db"},
		{"old dial failures", info("a"), []LiveAgent{func() LiveAgent {
			l := session("a", &protocol.Report{DialFailures: map[string]uint64{"db": 3}, LastDialError: "refused"})
			l.DialFailedAt = now.Add(-time.Hour)
			return l
		}()}, HealthUp, "", ""},
		{"draining", info("a"), []LiveAgent{func() LiveAgent { l := session("a", &protocol.Report{}); l.Draining = true; return l }()}, HealthDegraded, FailingAgent, "draining"},
		{"renewal overdue", AgentInfo{ID: "a", Tenant: "acme", CertNotAfter: now.Add(time.Hour)}, []LiveAgent{func() LiveAgent { l := session("a", &protocol.Report{}); l.CertNotAfter = now.Add(time.Hour); return l }()}, HealthDegraded, FailingAgent, "renewal overdue"},
		{"down", info("a"), nil, HealthDown, "", "not connected"},
		{"down, certificate expired", AgentInfo{ID: "a", Tenant: "acme", CertNotAfter: now.Add(-time.Minute)}, nil, HealthDown, "", "must enrol again"},
		{"revoked", AgentInfo{ID: "a", Tenant: "acme", RevokedAt: &revoked, RevokedReason: "stolen"}, []LiveAgent{session("a", nil)}, HealthRevoked, "", "revoked: stolen"},
		{"another tenant's session", info("a"), []LiveAgent{{Tenant: "globex", Agent: "a", LastHeard: now}}, HealthDown, "", "not connected"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := BuildFleet([]AgentInfo{tc.info}, tc.live, now, life)
			if len(got) != 1 {
				t.Fatalf("got %d agents, want 1", len(got))
			}
			if got[0].State != tc.state || !strings.Contains(got[0].Reason, tc.reason) || (tc.reason == "" && got[0].Reason != "") {
				t.Errorf("got %s %q, want %s with reason containing %q", got[0].State, got[0].Reason, tc.state, tc.reason)
			}
			if got[0].Failing != tc.failing {
				t.Errorf("failing %q, want %q", got[0].Failing, tc.failing)
			}
			var c StateCounts
			c.add(got[0])
			if want := tc.failing == FailingService; (c.ServiceFailing == 1) != want || (tc.state == HealthDegraded && c.AgentDegraded() != 1-c.ServiceFailing) {
				t.Errorf("counts %+v (agent degraded %d) for %s/%s", c, c.AgentDegraded(), got[0].State, got[0].Failing)
			}
		})
	}
}

func TestSortFleetNeedsAttentionFirst(t *testing.T) {
	agents := []FleetAgent{{ID: "u", State: HealthUp}, {ID: "r", State: HealthRevoked}, {ID: "g", State: HealthDegraded}, {ID: "d", State: HealthDown}}
	SortFleet(agents)
	var got []string
	for _, a := range agents {
		got = append(got, a.ID)
	}
	if strings.Join(got, "") != "dgur" {
		t.Errorf("got order %v, want down, degraded, up, revoked", got)
	}
}
