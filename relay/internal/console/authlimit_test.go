package console

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/throttle"
)

// clientFrom is d.client with connections from the loopback address ip
// (any 127.x.y.z is this host), so that one test can be several sources.
func (d *dashRelay) clientFrom(t *testing.T, ip string) *http.Client {
	t.Helper()
	c := d.client(t)
	tr := c.Transport.(*http.Transport)
	tr.DialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}).DialContext
	return c
}

// authRefused lists the audit records of failed authentication, oldest
// first.
func (d *dashRelay) authRefused(t *testing.T) []store.AuditRecord {
	t.Helper()
	recs, err := d.adm.Audit(context.Background(), admin.AuditFilter{Kind: admin.KindAuthRefused, Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// refusalCount reads tether_auth_refusals_total{door, reason}.
func refusalCount(t *testing.T, c *prometheus.CounterVec, door, reason string) int {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["door"] == door && l["reason"] == reason {
				return int(m.GetCounter().GetValue())
			}
		}
	}
	return 0
}

// Failed authentication at the admin API: a source that fails its burst
// is refused with 429 and Retry-After (even with a valid token) while
// another source's valid requests go through; an identity that fails its
// burst from many sources gets 429 for its failures, yet its valid
// credential still works; every refusal is counted, and the audit trail
// holds a bounded number of records, summed, whatever the number of
// attempts.
func TestFailedAuthenticationThrottled(t *testing.T) {
	refusals := throttle.NewRefusals()
	d := startDashRelay(t, func(c *Config) {
		c.Throttle = throttle.Config{Burst: 5, Every: time.Hour}
		c.AuthAuditInterval = time.Hour // flushed by hand below
		c.AuthRefusals = refusals
	})
	attacker, other := d.clientFrom(t, "127.0.0.1"), d.clientFrom(t, "127.0.0.2")
	id := admin.OperatorTokenID(d.tok)
	wrong := "top1_" + id + ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	call := func(c *http.Client, tok string) dashResponse {
		t.Helper()
		return d.do(t, c, http.MethodGet, "/api/v1/whoami", nil, map[string]string{"Authorization": "Bearer " + tok})
	}
	for i := range 5 {
		if res := call(attacker, "top1_x.y"); res.status != http.StatusUnauthorized {
			t.Fatalf("wrong token %d: status %d, want 401", i+1, res.status)
		}
	}
	const flood = 1000
	for i := range flood {
		res := call(attacker, "top1_x.y")
		if res.status != http.StatusTooManyRequests || !strings.Contains(res.body, `"rate_limited"`) {
			t.Fatalf("wrong token %d after the burst: status %d, want 429 rate_limited: %s", i+6, res.status, res.body)
		}
		if ra, err := strconv.Atoi(res.header.Get("Retry-After")); err != nil || ra < 1 {
			t.Fatalf("Retry-After %q, want whole seconds", res.header.Get("Retry-After"))
		}
	}
	// The throttled source is refused even with a valid token; another
	// source is not.
	if res := call(attacker, d.tok); res.status != http.StatusTooManyRequests {
		t.Errorf("valid token from the throttled source: status %d, want 429", res.status)
	}
	for range 20 {
		if res := call(other, d.tok); res.status != http.StatusOK {
			t.Fatalf("valid token from another source: status %d, want 200", res.status)
		}
	}

	// One identity (alice's token id), wrong secrets from many sources:
	// after its burst it gets 429, but the right secret still works.
	var last dashResponse
	for i := range 7 {
		last = call(d.clientFrom(t, fmt.Sprintf("127.0.1.%d", i+1)), wrong)
	}
	if last.status != http.StatusTooManyRequests {
		t.Errorf("a token id guessed from 7 sources: last status %d, want 429", last.status)
	}
	if res := call(d.clientFrom(t, "127.0.1.100"), d.tok); res.status != http.StatusOK {
		t.Errorf("the right secret of the guessed token: status %d, want 200", res.status)
	}

	// Every refusal is counted.
	if n := refusalCount(t, refusals, doorAPI, reasonBadToken); n != 5+7 {
		t.Errorf("metric bad_token: %d, want %d", n, 5+7)
	}
	if n := refusalCount(t, refusals, doorAPI, throttle.ReasonThrottled); n != flood+1 {
		t.Errorf("metric throttled: %d, want %d", n, flood+1)
	}

	// The audit trail: the first refusal of each source and reason at
	// once, the rest summed at the interval's end; the counts add up to
	// every refusal.
	sums := func(want int) map[string]int {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			recs := d.authRefused(t)
			if len(recs) == want || time.Now().After(deadline) {
				sum := map[string]int{}
				for _, r := range recs {
					if r.Detail["door"] != doorAPI {
						t.Errorf("record of door %v", r.Detail["door"])
					}
					if r.Detail["source"] == "127.0.1.1" && r.Detail["identities"] == nil {
						t.Errorf("the record of the guessed token names no identity: %+v", r)
					}
					sum[r.Detail["source"].(string)+" "+r.Detail["reason"].(string)] += int(r.Detail["count"].(float64))
				}
				if len(recs) != want {
					t.Fatalf("%d audit records (sums %v), want %d", len(recs), sum, want)
				}
				return sum
			}
			time.Sleep(20 * time.Millisecond) // the records are queued
		}
	}
	// Before the interval ends: one record per source and reason (2 for
	// 127.0.0.1, one for each of the 7 others).
	sums(2 + 7)
	d.srv.guard.tally.Flush()
	// After: one more for each source with more than one refusal.
	sum := sums(2 + 7 + 2)
	if sum["127.0.0.1 "+throttle.ReasonThrottled] != flood+1 || sum["127.0.0.1 "+reasonBadToken] != 5 || sum["127.0.1.7 "+reasonBadToken] != 1 {
		t.Errorf("audit sums %v; want %d throttled and 5 bad_token from 127.0.0.1, 1 from each other", sum, flood+1)
	}
}

// The login form is throttled too: after its burst a source gets the
// login page with 429 and Retry-After, not another try.
func TestLoginThrottled(t *testing.T) {
	d := startDashRelay(t, func(c *Config) { c.Throttle = throttle.Config{Burst: 3, Every: time.Hour} })
	c := d.clientFrom(t, "127.0.0.3")
	form := url.Values{"token": {"top1_nope.nope"}, "next": {"/ui/agents"}}
	for i := range 3 {
		if res := d.do(t, c, http.MethodPost, "/login", form, map[string]string{"Origin": d.base}); res.status != http.StatusSeeOther || res.header.Get("Location") != "/login?error=1" {
			t.Fatalf("wrong token %d: status %d, Location %q", i+1, res.status, res.header.Get("Location"))
		}
	}
	res := d.do(t, c, http.MethodPost, "/login", url.Values{"token": {d.tok}}, map[string]string{"Origin": d.base})
	if res.status != http.StatusTooManyRequests || res.header.Get("Retry-After") == "" || !strings.Contains(res.body, "Too many failed sign-ins") {
		t.Fatalf("login after the burst: status %d, Retry-After %q", res.status, res.header.Get("Retry-After"))
	}
	if strings.Contains(strings.Join(res.header.Values("Set-Cookie"), ";"), SessionCookie+"=") && !strings.Contains(strings.Join(res.header.Values("Set-Cookie"), ";"), "Max-Age=0") {
		t.Fatal("a throttled login opened a session")
	}
	// JSON logins get the API's error.
	res = d.doBody(t, c, http.MethodPost, "/login", `{"token":"x"}`, map[string]string{"Origin": d.base})
	if res.status != http.StatusTooManyRequests || !strings.Contains(res.body, CodeRateLimited) {
		t.Fatalf("JSON login after the burst: %d %s", res.status, res.body)
	}
	// Another source logs in.
	d.loginWith(t, d.clientFrom(t, "127.0.0.4"), d.tok)
}

// A tenant's operator refused by its scope again and again cannot fill
// the audit trail, which every tenant and the relay share: before, each
// refusal wrote an operator.refused record, so a viewer's token in a loop
// (GET another tenant's agent) wrote one record per request for as long
// as it ran. Now each operator's first refusals are audited one by one;
// beyond its burst they are summed, the first of each interval at once
// and the rest at the interval's end, and the counts add up to every
// refusal. Another operator keeps its own burst.
func TestScopeRefusalsAuditedBounded(t *testing.T) {
	r := startScopedRelayWith(t, func(c *Config) {
		c.ScopeRefusals = throttle.Config{Burst: 5, Every: time.Hour}
		c.AuthAuditInterval = time.Hour // flushed by hand below
	})
	c := r.client(t)
	refused := func(tok string) {
		t.Helper()
		res := r.doBody(t, c, http.MethodGet, "/api/v1/agents/globex-agent", "", map[string]string{"Authorization": "Bearer " + tok})
		if res.status != http.StatusNotFound {
			t.Fatalf("another tenant's agent: status %d, want 404: %s", res.status, res.body)
		}
	}
	records := func(want int) (count map[string]int, summed int) {
		t.Helper()
		var recs []store.AuditRecord
		waitFor(t, func() bool { recs = r.refusals(t); return len(recs) >= want }) // sums are queued
		if len(recs) != want {
			t.Fatalf("%d operator.refused records, want %d: %+v", len(recs), want, recs)
		}
		count = map[string]int{}
		for _, rec := range recs {
			if rec.Tenant != "acme" || rec.Outcome != CodeNotFound {
				t.Errorf("refusal record of tenant %q, outcome %q: %+v", rec.Tenant, rec.Outcome, rec)
			}
			n := 1
			if v, ok := rec.Detail["count"].(float64); ok {
				n = int(v)
				if reqs, _ := rec.Detail["requests"].([]any); len(reqs) != 1 || reqs[0] != "GET /api/v1/agents/globex-agent" {
					t.Errorf("sum names requests %v", rec.Detail["requests"])
				}
			} else if rec.Detail["path"] != "/api/v1/agents/globex-agent" {
				t.Errorf("refusal record %+v", rec)
			}
			if rec.Detail["summed"] == true {
				summed++
			}
			count[rec.Actor] += n
		}
		return count, summed
	}
	const burst, flood = 5, 300
	for range burst + flood {
		refused(r.viewerTok)
	}
	refused(r.adminTok)
	// The viewer's burst one by one, the first refusal beyond it at once;
	// the administrator's refusal one by one.
	records(burst + 1 + 1)
	r.srv.guard.scopeTally.Flush()
	count, summed := records(burst + 1 + 1 + 1)
	if count["operator:vic"] != burst+flood || count["operator:ann"] != 1 || summed != 1 {
		t.Errorf("refusals counted %v (%d summed records); want %d of vic's, 1 of ann's, one sum", count, summed, burst+flood)
	}
}
