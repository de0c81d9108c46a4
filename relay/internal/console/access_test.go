package console

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/store"
)

// scopedRelay is a dashboard relay with tenants acme and globex, an
// agent (with a live session) and a join token in each, limits on
// globex, and operator tokens scoped to acme.
type scopedRelay struct {
	*dashRelay
	viewerTok, adminTok string
	globexToken         string // the id of globex's join token
}

func startScopedRelay(t *testing.T) *scopedRelay {
	t.Helper()
	return startScopedRelayWith(t, withHistory(newHistoryRelay()))
}

// startScopedRelayWith is startScopedRelay with options of its dashboard
// relay.
func startScopedRelayWith(t *testing.T, opts ...func(*Config)) *scopedRelay {
	t.Helper()
	d := startDashRelay(t, opts...)
	ctx := context.Background()
	now := time.Now()
	r := &scopedRelay{dashRelay: d}
	for _, tn := range []string{"acme", "globex"} {
		if err := d.adm.AddTenant(ctx, tn); err != nil {
			t.Fatal(err)
		}
		id := tn + "-agent"
		if err := d.dir.Store.AddAgent(ctx, store.Agent{ID: id, Tenant: tn, Hostname: tn + "-host", CreatedAt: now, CertSerial: "1", CertNotAfter: now.Add(24 * time.Hour)}); err != nil {
			t.Fatal(err)
		}
		d.live.mu.Lock()
		d.live.sessions = append(d.live.sessions, admin.LiveAgent{Tenant: tn, Agent: id, SessionID: "s-" + id, Transport: "quic", ConnectedAt: now, LastHeard: now})
		d.live.mu.Unlock()
		_, info, err := d.adm.CreateToken(ctx, tn, time.Hour, 1)
		if err != nil {
			t.Fatal(err)
		}
		if tn == "globex" {
			r.globexToken = info.ID
		}
	}
	if err := d.adm.SetLimits(ctx, admin.Limits{Tenant: "globex", MaxAgents: 7}); err != nil {
		t.Fatal(err)
	}
	var err error
	if r.viewerTok, _, err = d.adm.CreateOperatorToken(ctx, "vic", admin.Scope{Tenant: "acme", Role: admin.RoleViewer}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if r.adminTok, _, err = d.adm.CreateOperatorToken(ctx, "ann", admin.Scope{Tenant: "acme", Role: admin.RoleAdmin}, time.Hour); err != nil {
		t.Fatal(err)
	}
	return r
}

// loginWith opens a browser session with tok and returns its CSRF token.
func (d *dashRelay) loginWith(t *testing.T, c *http.Client, tok string) string {
	t.Helper()
	res := d.do(t, c, http.MethodPost, "/login", url.Values{"token": {tok}}, map[string]string{"Origin": d.base})
	if res.status != http.StatusSeeOther {
		t.Fatalf("login: status %d: %s", res.status, res.body)
	}
	page := d.do(t, c, http.MethodGet, "/", nil, nil)
	m := regexp.MustCompile(`name="csrf_token" value="([^"]+)"`).FindStringSubmatch(page.body)
	if page.status != http.StatusOK || m == nil {
		t.Fatalf("overview after login: status %d, CSRF token found %v", page.status, m != nil)
	}
	return m[1]
}

// refusals counts the audit records of operators refused by their scope.
func (d *dashRelay) refusals(t *testing.T) []store.AuditRecord {
	t.Helper()
	recs, err := d.adm.Audit(context.Background(), admin.AuditFilter{Kind: admin.KindOperatorRefused, Limit: 10000, NewestFirst: true})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// Every route and page is declared with who may use it; the tables are
// what is registered (a route without access panics at registration).
func TestEveryRouteDeclaresAccess(t *testing.T) {
	s := &Server{}
	for _, r := range s.apiRoutes() {
		if r.access == accessUnset || r.handle == nil {
			t.Errorf("API route %s %s declares no access", r.method, r.pattern)
		}
	}
	for _, r := range s.dashRoutes() {
		if r.access == accessUnset || (r.action == nil) == (r.data == nil) {
			t.Errorf("page %s declares no access or is neither a page nor an action", r.pattern)
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("registering a route without access did not panic")
		}
	}()
	s.registerAPI(http.NewServeMux(), []apiRoute{{method: http.MethodGet, pattern: "/api/v1/new", handle: s.whoami}})
}

// scopedCase is what a tenant-scoped operator of acme tries against
// globex at one route, and what each role must get.
type scopedCase struct {
	path, body                string
	viewerStatus, adminStatus int
}

// Every admin API route and every dashboard page, tried by a viewer and
// an administrator of acme against globex's objects: refused (404 for
// objects of a tenant they do not see, 403 for what their role does not
// allow), audited, and globex is untouched. The cases are keyed by the
// route tables, so a new route without a case fails this test.
func TestScopedOperatorsCannotReachAnotherTenant(t *testing.T) {
	r := startScopedRelay(t)
	const nf, fb = http.StatusNotFound, http.StatusForbidden
	api := map[string]scopedCase{
		"GET /api/v1/fleet":                                      {path: "/api/v1/fleet?tenant=globex", viewerStatus: nf, adminStatus: nf},
		"GET /api/v1/tenants":                                    {path: "/api/v1/tenants?tenant=globex", viewerStatus: 200, adminStatus: 200}, // filtered: checked below
		"POST /api/v1/tenants":                                   {path: "/api/v1/tenants", body: `{"name":"initech"}`, viewerStatus: fb, adminStatus: fb},
		"GET /api/v1/tenants/{name}":                             {path: "/api/v1/tenants/globex", viewerStatus: nf, adminStatus: nf},
		"GET /api/v1/tenants/{name}/limits":                      {path: "/api/v1/tenants/globex/limits", viewerStatus: nf, adminStatus: nf},
		"PUT /api/v1/tenants/{name}/limits":                      {path: "/api/v1/tenants/globex/limits", body: `{"max_agents":1}`, viewerStatus: fb, adminStatus: nf},
		"PATCH /api/v1/tenants/{name}/limits":                    {path: "/api/v1/tenants/globex/limits", body: `{"max_agents":1}`, viewerStatus: fb, adminStatus: nf},
		"GET /api/v1/agents":                                     {path: "/api/v1/agents?tenant=globex", viewerStatus: nf, adminStatus: nf},
		"GET /api/v1/agents/{id}":                                {path: "/api/v1/agents/globex-agent", viewerStatus: nf, adminStatus: nf},
		"POST /api/v1/agents/{id}/revoke":                        {path: "/api/v1/agents/globex-agent/revoke", body: `{}`, viewerStatus: fb, adminStatus: nf},
		"POST /api/v1/agents/{id}/drain":                         {path: "/api/v1/agents/globex-agent/drain", body: `{}`, viewerStatus: fb, adminStatus: nf},
		"GET /api/v1/tokens":                                     {path: "/api/v1/tokens?tenant=globex", viewerStatus: fb, adminStatus: nf},
		"POST /api/v1/tokens":                                    {path: "/api/v1/tokens", body: `{"tenant":"globex"}`, viewerStatus: fb, adminStatus: nf},
		"DELETE /api/v1/tokens/{id}":                             {path: "/api/v1/tokens/" + r.globexToken, viewerStatus: fb, adminStatus: nf},
		"GET /api/v1/backends":                                   {path: "/api/v1/backends", viewerStatus: fb, adminStatus: fb},
		"POST /api/v1/backends":                                  {path: "/api/v1/backends", body: `{"name":"spy","grants":["acme"]}`, viewerStatus: fb, adminStatus: fb},
		"GET /api/v1/backends/{name}":                            {path: "/api/v1/backends/billing", viewerStatus: fb, adminStatus: fb},
		"DELETE /api/v1/backends/{name}":                         {path: "/api/v1/backends/billing", viewerStatus: fb, adminStatus: fb},
		"POST /api/v1/backends/{name}/grant":                     {path: "/api/v1/backends/billing/grant", body: `{"grants":["acme"]}`, viewerStatus: fb, adminStatus: fb},
		"POST /api/v1/backends/{name}/ungrant":                   {path: "/api/v1/backends/billing/ungrant", body: `{"grants":["globex"]}`, viewerStatus: fb, adminStatus: fb},
		"GET /api/v1/backends/{name}/certificates":               {path: "/api/v1/backends/billing/certificates", viewerStatus: fb, adminStatus: fb},
		"DELETE /api/v1/backends/{name}/certificates/{serial}":   {path: "/api/v1/backends/billing/certificates/1f", viewerStatus: fb, adminStatus: fb},
		"DELETE /api/v1/backends/{name}/certificates/unrecorded": {path: "/api/v1/backends/billing/certificates/unrecorded", viewerStatus: fb, adminStatus: fb},
		"GET /api/v1/audit":                                      {path: "/api/v1/audit?tenant=globex", viewerStatus: nf, adminStatus: nf},
		"GET /api/v1/releases":                                   {path: "/api/v1/releases", viewerStatus: fb, adminStatus: fb},
		"DELETE /api/v1/releases/{version}":                      {path: "/api/v1/releases/1.0.0", viewerStatus: fb, adminStatus: fb},
		"GET /api/v1/rollouts":                                   {path: "/api/v1/rollouts", viewerStatus: fb, adminStatus: fb},
		"POST /api/v1/rollouts":                                  {path: "/api/v1/rollouts", body: `{"version":"1.0.0","tenants":["globex"]}`, viewerStatus: fb, adminStatus: fb},
		"GET /api/v1/operator-certificates":                      {path: "/api/v1/operator-certificates", viewerStatus: fb, adminStatus: fb},
		"POST /api/v1/operator-certificates/{serial}/revoke":     {path: "/api/v1/operator-certificates/1f/revoke", body: `{}`, viewerStatus: fb, adminStatus: fb},
		"GET /api/v1/relays":                                     {path: "/api/v1/relays", viewerStatus: fb, adminStatus: fb},
		"DELETE /api/v1/relays/{id}":                             {path: "/api/v1/relays/r1", viewerStatus: fb, adminStatus: fb},
		"GET /api/v1/whoami":                                     {path: "/api/v1/whoami", viewerStatus: 200, adminStatus: 200},
	}
	pages := map[string]scopedCase{
		"GET /{$}":                    {path: "/", viewerStatus: 200, adminStatus: 200}, // filtered: checked below
		"GET /ui/agents":              {path: "/ui/agents?tenant=globex", viewerStatus: nf, adminStatus: nf},
		"GET /ui/agents/{id}":         {path: "/ui/agents/globex-agent", viewerStatus: nf, adminStatus: nf},
		"POST /ui/agents/{id}/revoke": {path: "/ui/agents/globex-agent/revoke", viewerStatus: fb, adminStatus: nf},
		"POST /ui/agents/{id}/drain":  {path: "/ui/agents/globex-agent/drain", viewerStatus: fb, adminStatus: nf},
		"GET /ui/tenants":             {path: "/ui/tenants", viewerStatus: 200, adminStatus: 200}, // filtered: checked below
		"GET /ui/tenants/{name}":      {path: "/ui/tenants/globex", viewerStatus: nf, adminStatus: nf},
		"GET /ui/tokens":              {path: "/ui/tokens?tenant=globex", viewerStatus: fb, adminStatus: nf},
		"POST /ui/tokens/{id}/revoke": {path: "/ui/tokens/" + r.globexToken + "/revoke", viewerStatus: fb, adminStatus: nf},
		"GET /ui/connect":             {path: "/ui/connect?tenant=globex", viewerStatus: fb, adminStatus: nf},
		"POST /ui/connect":            {path: "/ui/connect", body: "tenant=globex&ttl=1h&relay=relay.example:7443&download=https://relay.example:7444", viewerStatus: fb, adminStatus: nf},
		"GET /ui/backends":            {path: "/ui/backends", viewerStatus: fb, adminStatus: fb},
		"GET /ui/backends/{name}":     {path: "/ui/backends/billing", viewerStatus: fb, adminStatus: fb},
		"POST /ui/backends/{name}/certificates/{serial}/revoke": {path: "/ui/backends/billing/certificates/1f/revoke", viewerStatus: fb, adminStatus: fb},
		"GET /ui/audit":    {path: "/ui/audit?tenant=globex", viewerStatus: nf, adminStatus: nf},
		"GET /ui/releases": {path: "/ui/releases", viewerStatus: fb, adminStatus: fb},
		"GET /ui/relays":   {path: "/ui/relays", viewerStatus: fb, adminStatus: fb},
	}
	for _, rt := range (&Server{}).apiRoutes() {
		if _, ok := api[rt.method+" "+rt.pattern]; !ok {
			t.Errorf("API route %s %s has no case here: add what a scoped operator tries against another tenant", rt.method, rt.pattern)
		}
	}
	for _, rt := range (&Server{}).dashRoutes() {
		if _, ok := pages[rt.pattern]; !ok {
			t.Errorf("page %s has no case here", rt.pattern)
		}
	}
	c := r.client(t)
	for _, role := range []struct {
		name, tok string
		status    func(scopedCase) int
	}{
		{"viewer", r.viewerTok, func(c scopedCase) int { return c.viewerStatus }},
		{"admin", r.adminTok, func(c scopedCase) int { return c.adminStatus }},
	} {
		t.Run(role.name, func(t *testing.T) {
			for key, tc := range api {
				method, _, _ := strings.Cut(key, " ")
				want := role.status(tc)
				before := len(r.refusals(t))
				hdr := map[string]string{"Authorization": "Bearer " + role.tok}
				res := r.doBody(t, c, method, tc.path, tc.body, hdr)
				if res.status != want {
					t.Errorf("%s %s: status %d, want %d: %s", method, tc.path, res.status, want, res.body)
				}
				if strings.Contains(res.body, "globex-host") || strings.Contains(res.body, `"tenant": "globex"`) || strings.Contains(res.body, `"max_agents": 7`) ||
					(want == 200 && strings.Contains(res.body, "globex")) {
					t.Errorf("%s %s: the answer shows globex's objects: %s", method, tc.path, res.body)
				}
				got := r.refusals(t)
				if want >= 400 {
					if len(got) != before+1 {
						t.Errorf("%s %s: %d refusal records written, want 1", method, tc.path, len(got)-before)
					} else if rec := got[0]; rec.Tenant != "acme" || rec.Detail["path"] != tc.path || rec.Detail["method"] != method {
						t.Errorf("%s %s: refusal record %+v", method, tc.path, rec)
					}
				} else if len(got) != before {
					t.Errorf("%s %s: a refusal was audited for an allowed request", method, tc.path)
				}
			}
			// Pages, in a browser session.
			bc := r.client(t)
			csrf := r.loginWith(t, bc, role.tok)
			for key, tc := range pages {
				method, _, _ := strings.Cut(key, " ")
				want := role.status(tc)
				before := len(r.refusals(t))
				var form url.Values
				hdr := map[string]string{}
				if method == http.MethodPost {
					form, _ = url.ParseQuery(tc.body)
					form.Set(CSRFField, csrf)
					hdr["Origin"] = r.base
				}
				res := r.do(t, bc, method, tc.path, form, hdr)
				if res.status != want {
					t.Errorf("%s %s: status %d, want %d", method, tc.path, res.status, want)
				}
				if strings.Contains(res.body, "globex") && want == 200 {
					t.Errorf("%s %s: the page names globex", method, tc.path)
				}
				if got := len(r.refusals(t)); want >= 400 && got != before+1 {
					t.Errorf("%s %s: %d refusal records written, want 1", method, tc.path, got-before)
				}
			}
		})
	}

	// globex is as it was.
	ctx := context.Background()
	if a, err := r.adm.Agent(ctx, "globex-agent"); err != nil || a.RevokedAt != nil {
		t.Errorf("globex's agent: %+v, %v; want not revoked", a, err)
	}
	r.live.mu.Lock()
	drained := r.live.drained
	r.live.mu.Unlock()
	if drained != 0 {
		t.Errorf("%d sessions drained, want none", drained)
	}
	if toks, _ := r.adm.Tokens(ctx, "globex"); len(toks) != 1 || toks[0].ID != r.globexToken {
		t.Errorf("globex's join tokens: %+v, want its one token", toks)
	}
	if l, _ := r.adm.Limits(ctx, "globex"); l.MaxAgents != 7 {
		t.Errorf("globex's limits: %+v, want max_agents 7", l)
	}
	if ts, _ := r.adm.Tenants(ctx); len(ts) != 2 {
		t.Errorf("tenants: %+v, want acme and globex only", ts)
	}
	if bs, _ := r.adm.Backends(ctx); len(bs) != 0 {
		t.Errorf("backends: %+v, want none", bs)
	}
}

// doBody is do with a JSON body.
func (d *dashRelay) doBody(t *testing.T, c *http.Client, method, path, body string, hdr map[string]string) dashResponse {
	t.Helper()
	h := map[string]string{}
	for k, v := range hdr {
		h[k] = v
	}
	if body != "" {
		h["Content-Type"] = "application/json"
	}
	req, err := http.NewRequest(method, d.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header.Set(k, v)
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return dashResponse{res.StatusCode, res.Header, string(b)}
}

// Lists answer only the operator's tenant, and its administrator manages
// it: creates a join token for it, revokes and drains its agent, lowers
// its limits; its viewer cannot.
func TestScopedOperatorsManageTheirTenant(t *testing.T) {
	r := startScopedRelay(t)
	c := r.client(t)
	as := func(tok string) map[string]string { return map[string]string{"Authorization": "Bearer " + tok} }
	for _, tok := range []string{r.viewerTok, r.adminTok} {
		for _, path := range []string{"/api/v1/fleet", "/api/v1/agents", "/api/v1/tenants", "/api/v1/audit?limit=1000", "/"} {
			res := r.doBody(t, c, http.MethodGet, path, "", as(tok))
			if res.status != 200 || !strings.Contains(res.body, "acme") || strings.Contains(res.body, "globex") {
				t.Errorf("GET %s: status %d; want acme's only:\n%s", path, res.status, res.body)
			}
		}
	}
	var who whoAmI
	json.Unmarshal([]byte(r.doBody(t, c, http.MethodGet, "/api/v1/whoami", "", as(r.adminTok)).body), &who)
	if who != (whoAmI{Name: "ann", Via: "token", Tenant: "acme", Role: admin.RoleAdmin}) {
		t.Errorf("whoami: %+v", who)
	}

	// The viewer changes nothing.
	for _, tc := range []struct{ method, path, body string }{
		{"POST", "/api/v1/tokens", `{"tenant":"acme"}`},
		{"GET", "/api/v1/tokens", ""},
		{"POST", "/api/v1/agents/acme-agent/revoke", `{}`},
		{"POST", "/api/v1/agents/acme-agent/drain", `{}`},
		{"PUT", "/api/v1/tenants/acme/limits", `{"max_agents":1}`},
	} {
		if res := r.doBody(t, c, tc.method, tc.path, tc.body, as(r.viewerTok)); res.status != http.StatusForbidden {
			t.Errorf("viewer %s %s: status %d, want 403", tc.method, tc.path, res.status)
		}
	}
	// The viewer's agent page has no revoke or drain button.
	vc := r.client(t)
	r.loginWith(t, vc, r.viewerTok)
	if res := r.do(t, vc, http.MethodGet, "/ui/agents/acme-agent", nil, nil); res.status != 200 || strings.Contains(res.body, "/revoke") {
		t.Errorf("viewer's agent page: status %d, revoke form shown %v", res.status, strings.Contains(res.body, "/revoke"))
	}

	// The administrator does.
	res := r.doBody(t, c, "POST", "/api/v1/tokens", `{"tenant":"acme"}`, as(r.adminTok))
	if res.status != http.StatusCreated || !strings.Contains(res.body, `"tenant": "acme"`) {
		t.Fatalf("admin creates a join token: %d %s", res.status, res.body)
	}
	if res := r.doBody(t, c, "GET", "/api/v1/tokens", "", as(r.adminTok)); res.status != 200 || strings.Contains(res.body, "globex") || strings.Count(res.body, `"tenant": "acme"`) != 2 {
		t.Errorf("admin lists tokens: %d %s", res.status, res.body)
	}
	if res := r.doBody(t, c, "PUT", "/api/v1/tenants/acme/limits", `{"max_agents":5}`, as(r.adminTok)); res.status != 200 {
		t.Errorf("admin sets a limit: %d %s", res.status, res.body)
	}
	if res := r.doBody(t, c, "PUT", "/api/v1/tenants/acme/limits", `{"max_agents":6}`, as(r.adminTok)); res.status != http.StatusForbidden {
		t.Errorf("admin raises a limit: %d %s; want 403", res.status, res.body)
	}
	ac := r.client(t)
	csrf := r.loginWith(t, ac, r.adminTok)
	if res := r.do(t, ac, http.MethodGet, "/ui/agents/acme-agent", nil, nil); !strings.Contains(res.body, "/revoke") {
		t.Error("the administrator's agent page has no revoke form")
	}
	res = r.do(t, ac, http.MethodPost, "/ui/agents/acme-agent/revoke", url.Values{CSRFField: {csrf}, "reason": {"lost"}}, map[string]string{"Origin": r.base})
	if res.status != http.StatusSeeOther {
		t.Fatalf("admin revokes acme's agent in the dashboard: %d %s", res.status, res.body)
	}
	recs, err := r.adm.Audit(context.Background(), admin.AuditFilter{Agent: "acme-agent", Kind: "agent.revoke"})
	if err != nil || len(recs) != 1 || recs[0].Actor != "operator:ann" || recs[0].Tenant != "acme" {
		t.Fatalf("audit of the revocation: %+v, %v", recs, err)
	}
	// The tenant's audit shows what its people did, and no one else's.
	var page struct{ Records []store.AuditRecord }
	json.Unmarshal([]byte(r.doBody(t, c, "GET", "/api/v1/audit?limit=1000", "", as(r.viewerTok)).body), &page)
	kinds := []string{}
	for _, rec := range page.Records {
		kinds = append(kinds, rec.Kind)
		if rec.Tenant != "acme" {
			t.Errorf("viewer's audit shows %+v", rec)
		}
	}
	for _, k := range []string{"agent.revoke", "token.create", "tenant.limits", admin.KindOperatorRefused} {
		if !slices.Contains(kinds, k) {
			t.Errorf("viewer's audit lacks %s: %v", k, kinds)
		}
	}
}
