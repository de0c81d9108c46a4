package console

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/history"
	"github.com/tetherhq/tether/relay/internal/store"
)

// historyRelay is the relay view of a dashboard test: a real history
// recorder fed with readings by the test, a fixed health panel and
// connector, and a log of the history queries the dashboard made.
type historyRelay struct {
	rec *history.Recorder

	mu      sync.Mutex // guards queries
	queries []history.Query
}

func (h *historyRelay) History(q history.Query) history.Window {
	h.mu.Lock()
	h.queries = append(h.queries, q)
	h.mu.Unlock()
	return h.rec.Window(q)
}

func (h *historyRelay) Health() Health {
	return Health{Version: "1.2.3-test", Commit: "abc123", GoVersion: "go1.26", Started: time.Now().Add(-90 * time.Minute),
		Agents: 2, Sessions: 3, Tenants: 2, HandshakesOK: 3, Goroutines: 42, HeapInuse: 5 << 20,
		Store: []StoreLatency{{Op: "audit_commit", Count: 10, Mean: 250 * time.Microsecond}}}
}

func (h *historyRelay) Connector() Connector {
	return Connector{AgentPort: "7443", DownloadPort: "7444", InstallSHA256: strings.Repeat("ab", 32)}
}

func (h *historyRelay) takeQueries() []history.Query {
	h.mu.Lock()
	defer h.mu.Unlock()
	q := h.queries
	h.queries = nil
	return q
}

// withHistory gives a dashboard test relay a history with two samples of
// acme's and globex's agents moving bytes, opening streams and being
// refused.
func withHistory(h *historyRelay) func(*Config) {
	return func(c *Config) { c.Relay = h }
}

func newHistoryRelay() *historyRelay {
	rec := history.New(history.Config{})
	t0 := time.Now().Add(-20 * time.Second)
	agents := func(k uint64) map[history.Agent]history.AgentReading {
		return map[history.Agent]history.AgentReading{
			{Tenant: "acme", ID: "acme-agent"}:     {Sessions: 1, StreamsOpen: 2, RTT: 3 * time.Millisecond, ToService: 1000 * k, FromService: 9000 * k},
			{Tenant: "globex", ID: "globex-agent"}: {Sessions: 2, StreamsOpen: 1, RTT: 7 * time.Millisecond, ToService: 500 * k, FromService: 700 * k},
		}
	}
	opens := func(k uint64) map[history.Open]uint64 {
		return map[history.Open]uint64{{Tenant: "acme", Outcome: "ok"}: 10 * k, {Tenant: "globex", Outcome: "limit_exceeded"}: 3 * k, {Outcome: "unauthenticated"}: k}
	}
	rec.Record(history.Reading{At: t0, Relay: history.RelayReading{}})
	for i := uint64(1); i <= 2; i++ {
		rec.Record(history.Reading{At: t0.Add(time.Duration(i) * 10 * time.Second), Agents: agents(i), Opens: opens(i),
			MaxStreams: map[string]int{"acme": 8, "globex": 7}, Relay: history.RelayReading{SessionsOpened: 3, Goroutines: 40}})
	}
	return &historyRelay{rec: rec}
}

// chartPoints reads each chart of a page: its name and count of values.
func chartPoints(body string) map[string]int {
	out := map[string]int{}
	for _, m := range regexp.MustCompile(`data-chart="([^"]+)" data-points="(\d+)"`).FindAllStringSubmatch(body, -1) {
		n, _ := strconv.Atoi(m[2])
		out[m[1]] = n
	}
	return out
}

// A vendor operator sees the relay's health and charts of every tenant,
// drawn from the relay's history; a tenant's and an agent's pages chart
// that tenant and agent.
func TestDashboardChartsAndHealth(t *testing.T) {
	h := newHistoryRelay()
	d := startDashRelay(t, withHistory(h))
	ctx := context.Background()
	for _, tn := range []string{"acme", "globex"} {
		if err := d.adm.AddTenant(ctx, tn); err != nil {
			t.Fatal(err)
		}
		if err := d.dir.Store.AddAgent(ctx, store.Agent{ID: tn + "-agent", Tenant: tn, Hostname: tn + "-host", CreatedAt: time.Now(), CertSerial: "1", CertNotAfter: time.Now().Add(24 * time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	c := d.client(t)
	d.login(t, c)
	for _, tc := range []struct {
		path   string
		charts []string
		holds  []string
	}{
		{"/", []string{"throughput", "opens", "streams", "rtt", "connects"},
			[]string{`id="relay-health"`, "1.2.3-test", "abc123", "audit_commit", "1 h", "acme (limit 8)", "globex", "unauthenticated", "limit_exceeded"}},
		{"/ui/tenants/acme", []string{"throughput", "agent-throughput", "opens", "streams", "rtt", "connects"},
			[]string{"dashed: the tenant&#39;s limit, 8 streams", `class="line limit"`, "acme-agent"}},
		{"/ui/agents/acme-agent", []string{"throughput", "rtt", "connects"}, []string{"3.0 ms", "acme-agent"}},
	} {
		res := d.do(t, c, http.MethodGet, tc.path, nil, nil)
		if res.status != http.StatusOK {
			t.Fatalf("GET %s: %d %s", tc.path, res.status, res.body)
		}
		got := chartPoints(res.body)
		if len(got) != len(tc.charts) {
			t.Errorf("GET %s: charts %v, want %v", tc.path, got, tc.charts)
		}
		for _, name := range tc.charts {
			if got[name] == 0 {
				t.Errorf("GET %s: chart %s has no data (%v)", tc.path, name, got)
			}
		}
		for _, want := range tc.holds {
			if !strings.Contains(res.body, want) {
				t.Errorf("GET %s lacks %q", tc.path, want)
			}
		}
		if strings.Contains(res.body, chartEmpty) {
			t.Errorf("GET %s: a chart says it has no data", tc.path)
		}
	}
	// The tenant's page charts acme only.
	if res := d.do(t, c, http.MethodGet, "/ui/tenants/acme", nil, nil); strings.Contains(res.body, "globex-agent") {
		t.Error("acme's page charts globex's agent")
	}
}

// A tenant-scoped operator's pages chart its tenant only: the dashboard
// never asks the history for the relay or another tenant, and shows no
// health panel.
func TestScopedOperatorsChartTheirTenantOnly(t *testing.T) {
	h := newHistoryRelay()
	r := startScopedRelayWith(t, withHistory(h))
	for _, tok := range []string{r.viewerTok, r.adminTok} {
		c := r.client(t)
		r.loginWith(t, c, tok)
		h.takeQueries()
		for _, p := range []string{"/", "/?live=1", "/ui/tenants/acme", "/ui/agents/acme-agent", "/ui/audit", "/ui/audit?kind=operator."} {
			res := r.do(t, c, http.MethodGet, p, nil, nil)
			if res.status != http.StatusOK {
				t.Fatalf("GET %s: %d", p, res.status)
			}
			if strings.Contains(res.body, "globex") || strings.Contains(res.body, "relay-health") || strings.Contains(res.body, "unauthenticated") {
				t.Errorf("GET %s shows another tenant's activity or the relay's:\n%s", p, res.body)
			}
			if p == "/" && chartPoints(res.body)["throughput"] == 0 {
				t.Errorf("GET %s: no chart of acme", p)
			}
		}
		for _, q := range h.takeQueries() {
			if q.Relay || q.Tenant != "acme" {
				t.Errorf("a scoped operator's page asked the history for %+v", q)
			}
		}
	}
}

// The count of tenants and agents without a history that a page shows is
// of what the page charts: a tenant-scoped operator's counts its own
// tenant's agents only, never those of another tenant that outgrew the
// relay's bounds; a vendor operator's overview counts the whole relay.
func TestUntrackedCountIsTheTenants(t *testing.T) {
	rec := history.New(history.Config{MaxAgents: 2})
	t0 := time.Now().Add(-20 * time.Second)
	agents := map[history.Agent]history.AgentReading{{Tenant: "acme", ID: "acme-agent"}: {Sessions: 1, ToService: 10}}
	for i := range 5 {
		agents[history.Agent{Tenant: "globex", ID: fmt.Sprintf("globex-%d", i)}] = history.AgentReading{Sessions: 1, ToService: 10}
	}
	rec.Record(history.Reading{At: t0})
	rec.Record(history.Reading{At: t0.Add(10 * time.Second), Agents: agents})
	h := &historyRelay{rec: rec}
	r := startScopedRelayWith(t, withHistory(h))
	stamp := regexp.MustCompile(`(\d+) tenants or agents have no history`)
	untracked := func(c *http.Client, path string) string {
		t.Helper()
		res := r.do(t, c, http.MethodGet, path, nil, nil)
		if res.status != http.StatusOK {
			t.Fatalf("GET %s: %d", path, res.status)
		}
		if m := stamp.FindStringSubmatch(res.body); m != nil {
			return m[1]
		}
		return "none"
	}
	scoped := r.client(t)
	r.loginWith(t, scoped, r.viewerTok)
	for _, p := range []string{"/", "/ui/tenants/acme", "/ui/agents/acme-agent"} {
		if got := untracked(scoped, p); got != "none" {
			t.Errorf("acme's operator, GET %s: %s without history, want none (globex's agents are not acme's)", p, got)
		}
	}
	vendor := r.client(t)
	r.login(t, vendor)
	if got := untracked(vendor, "/"); got != "4" {
		t.Errorf("the vendor's overview: %s without history, want 4 (globex's agents beyond the bound)", got)
	}
	if got := untracked(vendor, "/ui/tenants/globex"); got != "4" {
		t.Errorf("globex's page: %s without history, want 4", got)
	}
}

// The "add a connector" flow: a tenant administrator creates a join
// token for its tenant and gets the install commands, which hold the
// relay's address and the install script's hash but never the token;
// hostile form values are refused before any token is made.
func TestConnectorFlow(t *testing.T) {
	h := newHistoryRelay()
	r := startScopedRelayWith(t, withHistory(h))
	c := r.client(t)
	csrf := r.loginWith(t, c, r.adminTok)
	form := r.do(t, c, http.MethodGet, "/ui/connect", nil, nil)
	host := strings.TrimPrefix(r.base, "https://")
	hostOnly := host[:strings.LastIndexByte(host, ':')]
	for _, want := range []string{`value="` + hostOnly + `:7443"`, `value="https://` + hostOnly + `:7444"`, `<option value="acme" selected>`} {
		if !strings.Contains(form.body, want) {
			t.Errorf("the form lacks %s:\n%s", want, form.body)
		}
	}
	tokens := func() int {
		ts, err := r.adm.Tokens(context.Background(), "acme")
		if err != nil {
			t.Fatal(err)
		}
		return len(ts)
	}
	before := tokens()
	post := func(v url.Values) dashResponse {
		v.Set(CSRFField, csrf)
		return r.do(t, c, http.MethodPost, "/ui/connect", v, map[string]string{"Origin": r.base})
	}
	good := url.Values{"tenant": {"acme"}, "ttl": {"24h"}, "uses": {"2"}, "relay": {"relay.example.com:7443"},
		"download": {"https://relay.example.com:7444"}, "services": {"db=10.0.0.5:5432\r\napi=[2001:db8::1]:443\n"}}
	for name, bad := range map[string][2]string{
		"shell in the relay":      {"relay", "relay.example.com:7443;reboot"},
		"quote in the relay":      {"relay", "relay'.example.com:7443"},
		"no port":                 {"relay", "relay.example.com"},
		"command substitution":    {"download", "https://$(id).example.com"},
		"http download":           {"download", "http://relay.example.com:7444"},
		"a query in the download": {"download", "https://relay.example.com:7444/?x=1"},
		"service without address": {"services", "db"},
		"service name":            {"services", "DB;x=10.0.0.5:5432"},
		"service address":         {"services", "db=10.0.0.5:5432 && curl evil"},
		"uses":                    {"uses", "0"},
		"lifetime":                {"ttl", "forever"},
		"another tenant":          {"tenant", "globex"},
	} {
		v := url.Values{}
		for k, vs := range good {
			v[k] = vs
		}
		v.Set(bad[0], bad[1])
		res := post(v)
		want := http.StatusBadRequest
		if name == "another tenant" {
			want = http.StatusNotFound
		}
		if res.status != want {
			t.Errorf("%s: status %d, want %d", name, res.status, want)
		}
	}
	if got := tokens(); got != before {
		t.Fatalf("refused forms made %d join tokens", got-before)
	}

	res := post(good)
	if res.status != http.StatusOK {
		t.Fatalf("create: %d %s", res.status, res.body)
	}
	tok := regexp.MustCompile(`id="join-token" value="(tjt1_[^"]+)"`).FindStringSubmatch(res.body)
	if tok == nil {
		t.Fatalf("no join token shown:\n%s", res.body)
	}
	linux := regexp.MustCompile(`id="install-linux" value="([^"]+)"`).FindStringSubmatch(res.body)
	windows := regexp.MustCompile(`id="install-windows" value="([^"]+)"`).FindStringSubmatch(res.body)
	if linux == nil || windows == nil {
		t.Fatalf("no install commands:\n%s", res.body)
	}
	wantLinux := "curl -fsSk https://relay.example.com:7444/install.sh -o install.sh &amp;&amp; echo &#39;" + strings.Repeat("ab", 32) +
		"  install.sh&#39; | sha256sum -c - &amp;&amp; sudo sh install.sh --relay relay.example.com:7443 --service db=10.0.0.5:5432 --service &#39;api=[2001:db8::1]:443&#39;"
	if linux[1] != wantLinux {
		t.Errorf("Linux command\n%s\nwant\n%s", linux[1], wantLinux)
	}
	if want := `.\install.ps1 -Relay relay.example.com:7443 -Service db=10.0.0.5:5432,&#39;api=[2001:db8::1]:443&#39;`; windows[1] != want {
		t.Errorf("Windows command\n%s\nwant\n%s", windows[1], want)
	}
	if strings.Count(res.body, tok[1]) != 1 {
		t.Error("the join token is shown more than once on the page (in a command?)")
	}
	if got := tokens(); got != before+1 {
		t.Fatalf("%d tokens made, want 1", got-before)
	}
	if ts, _ := r.adm.Tokens(context.Background(), "acme"); ts[len(ts)-1].MaxUses != 2 && ts[0].MaxUses != 2 {
		t.Errorf("tokens %+v: want one for 2 agents", ts)
	}

	// The token's page lists it; revoking it from there deletes it.
	list := r.do(t, c, http.MethodGet, "/ui/tokens", nil, nil)
	id := regexp.MustCompile(`data-token="([^"]+)" data-state="active"`).FindStringSubmatch(list.body)
	if id == nil || strings.Contains(list.body, "globex") {
		t.Fatalf("tokens page:\n%s", list.body)
	}
	if res := r.do(t, c, http.MethodPost, "/ui/tokens/"+id[1]+"/revoke", url.Values{CSRFField: {csrf}, "tenant": {"acme"}}, map[string]string{"Origin": r.base}); res.status != http.StatusSeeOther || res.header.Get("Location") != "/ui/tokens?tenant=acme" {
		t.Fatalf("revoke from the tokens page: %d %q", res.status, res.header.Get("Location"))
	}
	if got := tokens(); got != before {
		t.Errorf("after the revocation %d tokens, want %d", got, before)
	}

	// Without a download listener there is no install command, only the
	// enrolment.
	if l, w, e := installCommands(connectView{Relay: "r.example:7443", Services: "db=h:1"}, Connector{}); l != "" || w != "" || !strings.Contains(e, "--relay r.example:7443 --token-file -") {
		t.Errorf("without downloads: %q %q %q", l, w, e)
	}
}

// An agent's and a tenant's audit records come in pages, newest first,
// with links to older ones and back.
func TestAuditPaging(t *testing.T) {
	d := startDashRelay(t)
	ctx := context.Background()
	if err := d.adm.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if err := d.dir.Store.AddAgent(ctx, store.Agent{ID: "a1", Tenant: "acme", CreatedAt: time.Now(), CertSerial: "1", CertNotAfter: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	for i := range dashAuditLimit + 5 {
		d.adm.Record("test.event", "acme", "a1", "", map[string]any{"n": i})
	}
	c := d.client(t)
	d.login(t, c)
	for _, base := range []string{"/ui/agents/a1", "/ui/tenants/acme", "/ui/audit?agent=a1&limit=50"} {
		first := d.do(t, c, http.MethodGet, base, nil, nil)
		if n := strings.Count(first.body, "n=0"); n != 0 {
			t.Errorf("%s: the first page holds the oldest record", base)
		}
		older := regexp.MustCompile(`href="([^"]+)" class="older"`).FindStringSubmatch(first.body)
		if older == nil {
			t.Fatalf("%s: no link to older records:\n%s", base, first.body)
		}
		next := d.do(t, c, http.MethodGet, strings.ReplaceAll(older[1], "&amp;", "&"), nil, nil)
		if next.status != http.StatusOK || !strings.Contains(next.body, "n=0") || !strings.Contains(next.body, `class="newest"`) || strings.Contains(next.body, fmt.Sprintf("n=%d", dashAuditLimit+4)) {
			t.Errorf("%s: the second page (%s): status %d, want the oldest records and a link back", base, older[1], next.status)
		}
	}
	if res := d.do(t, c, http.MethodGet, "/ui/agents/a1?audit_before=x", nil, nil); res.status != http.StatusBadRequest {
		t.Errorf("a bad page: status %d, want 400", res.status)
	}
}

// Backends with their grants, and releases, are pages of their own.
func TestBackendsAndReleasesPages(t *testing.T) {
	d := startDashRelay(t)
	ctx := context.Background()
	if err := d.adm.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.adm.AddBackend(ctx, "billing", []string{"acme/db", "acme/api"}); err != nil {
		t.Fatal(err)
	}
	c := d.client(t)
	d.login(t, c)
	res := d.do(t, c, http.MethodGet, "/ui/backends", nil, nil)
	if !strings.Contains(res.body, `data-backend="billing"`) || !strings.Contains(res.body, "acme/db") || !strings.Contains(res.body, "acme/api") {
		t.Errorf("backends page:\n%s", res.body)
	}
	res = d.do(t, c, http.MethodGet, "/ui/backends/billing", nil, nil)
	if res.status != http.StatusOK || !strings.Contains(res.body, "backend.add") {
		t.Errorf("billing's page: %d, want its audit record backend.add:\n%s", res.status, res.body)
	}
	if res := d.do(t, c, http.MethodGet, "/ui/backends/nope", nil, nil); res.status != http.StatusNotFound {
		t.Errorf("an unknown backend: %d", res.status)
	}
	if res := d.do(t, c, http.MethodGet, "/ui/releases", nil, nil); res.status != http.StatusOK || !strings.Contains(res.body, "No releases published") {
		t.Errorf("releases page: %d", res.status)
	}
}

// A backend's page lists its client certificates, and its Revoke button
// (a form with the session's CSRF token) revokes one: the TLS door's
// authority no longer accepts it, the other stays, and the revocation is
// audited as the operator's.
func TestBackendPageRevokesCertificate(t *testing.T) {
	d := startDashRelay(t)
	ctx := context.Background()
	if err := d.adm.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.adm.AddBackend(ctx, "billing", []string{"acme"}); err != nil {
		t.Fatal(err)
	}
	var serials []string
	for range 2 {
		c, err := d.adm.IssueBackendCertificate(ctx, "billing", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		serials = append(serials, c.Serial)
	}
	c := d.client(t)
	csrf := d.login(t, c)
	page := d.do(t, c, http.MethodGet, "/ui/backends/billing", nil, nil)
	for _, s := range serials {
		if !strings.Contains(page.body, `data-serial="`+s+`" data-state="valid"`) || !strings.Contains(page.body, `action="/ui/backends/billing/certificates/`+s+`/revoke"`) {
			t.Fatalf("billing's page does not list certificate %s with a revoke form:\n%s", s, page.body)
		}
	}
	if strings.Contains(page.body, "refuse-unrecorded") {
		t.Error("a backend added after the relay recorded certificates is offered to refuse unrecorded ones")
	}
	path := "/ui/backends/billing/certificates/" + serials[0] + "/revoke"
	if res := d.do(t, c, http.MethodPost, path, url.Values{}, map[string]string{"Origin": d.base}); res.status != http.StatusForbidden {
		t.Errorf("revoke without a CSRF token: status %d, want 403", res.status)
	}
	res := d.do(t, c, http.MethodPost, path, url.Values{CSRFField: {csrf}}, map[string]string{"Origin": d.base})
	if res.status != http.StatusSeeOther || res.header.Get("Location") != "/ui/backends/billing" {
		t.Fatalf("revoke: status %d, Location %q; want 303 to the backend's page: %s", res.status, res.header.Get("Location"), res.body)
	}
	list, err := d.adm.BackendCertificates(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Certificates) != 1 || list.Certificates[0].Serial != serials[1] {
		t.Fatalf("certificates after revoking %s: %+v, want only %s", serials[0], list.Certificates, serials[1])
	}
	recs, err := d.adm.Audit(ctx, admin.AuditFilter{Backend: "billing", Kind: audit.BackendCertRevoke})
	if err != nil || len(recs) != 1 || recs[0].Actor != "operator:alice" || recs[0].Detail["serial"] != serials[0] {
		t.Fatalf("audit of the revocation: %+v, %v; want one record of %s by operator:alice", recs, err, serials[0])
	}
	page = d.do(t, c, http.MethodGet, "/ui/backends/billing", nil, nil)
	if strings.Contains(page.body, serials[0]+`/revoke`) || !strings.Contains(page.body, `data-serial="`+serials[1]+`"`) {
		t.Errorf("billing's page after the revocation still offers %s or lost %s", serials[0], serials[1])
	}
	// Revoking it again, or a serial never issued, is a not-found page,
	// not a redirect.
	if res := d.do(t, c, http.MethodPost, path, url.Values{CSRFField: {csrf}}, map[string]string{"Origin": d.base}); res.status != http.StatusNotFound {
		t.Errorf("revoking %s again: status %d, want 404", serials[0], res.status)
	}
	// Refusing unrecorded certificates of a backend that accepts none
	// changes nothing and is not audited.
	res = d.do(t, c, http.MethodPost, "/ui/backends/billing/certificates/unrecorded/revoke", url.Values{CSRFField: {csrf}}, map[string]string{"Origin": d.base})
	if res.status != http.StatusSeeOther {
		t.Errorf("refusing unrecorded certificates: status %d, want 303: %s", res.status, res.body)
	}
	if recs, err := d.adm.Audit(ctx, admin.AuditFilter{Backend: "billing", Kind: audit.BackendCertRevoke}); err != nil || len(recs) != 1 {
		t.Errorf("audit after refusing no unrecorded certificates: %d records, %v; want still 1", len(recs), err)
	}
}

// The relays page lists the relays sharing the store with their state,
// addresses and load; an empty store says so.
func TestRelaysPage(t *testing.T) {
	d := startDashRelay(t)
	c := d.client(t)
	d.login(t, c)
	if res := d.do(t, c, http.MethodGet, "/ui/relays", nil, nil); res.status != http.StatusOK || !strings.Contains(res.body, "No relay has written its row yet") {
		t.Errorf("relays page of an empty store: %d:\n%s", res.status, res.body)
	}
	ctx := context.Background()
	for _, r := range []store.Relay{
		{ID: "relay-1", Epoch: 1, AgentAddr: "10.0.1.1:7443", PeerAddr: "10.0.1.1:7445", Version: "1.4.0", StartedAt: time.Now(), Agents: 7, Sessions: 13, Streams: 42},
		{ID: "relay-2", Epoch: 1, AgentAddr: "10.0.1.2:7443", Version: "1.4.0", StartedAt: time.Now(), Draining: true},
	} {
		if _, err := d.dir.Store.Heartbeat(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	res := d.do(t, c, http.MethodGet, "/ui/relays?live=1", nil, nil)
	if res.status != http.StatusOK {
		t.Fatalf("relays page: %d", res.status)
	}
	row := func(id string) string {
		i := strings.Index(res.body, `data-relay="`+id+`"`)
		if i < 0 {
			t.Fatalf("no row for %s:\n%s", id, res.body)
		}
		rest := res.body[i:]
		if j := strings.Index(rest, "</tr>"); j >= 0 {
			rest = rest[:j]
		}
		return rest
	}
	for _, want := range []string{"up", "10.0.1.1:7443", "10.0.1.1:7445", "1.4.0", ">7<", ">13<", ">42<"} {
		if !strings.Contains(row("relay-1"), want) {
			t.Errorf("relay-1's row lacks %q:\n%s", want, row("relay-1"))
		}
	}
	if r2 := row("relay-2"); !strings.Contains(r2, "draining") || !strings.Contains(r2, "10.0.1.2:7443") {
		t.Errorf("relay-2's row, want draining:\n%s", r2)
	}
}
