package console

import (
	"bytes"
	"context"
	"embed"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/history"
)

// The dashboard: server-rendered pages on the admin listener for operators
// in a browser, built on the fleet view model (fleet.go). Every page needs
// the same authentication as the admin API (api.go) and declares who may
// see it (dashRoutes, access.go); a tenant-scoped operator sees its own
// tenant only. A browser without a session is sent to the login page.
// Pages with live data hold one element marked data-live that
// static/dash.js refreshes every few seconds from the same URL with
// live=1, which renders just that element's content.
//
//	GET  /                         fleet overview, charts, the relay's health
//	GET  /ui/agents                agent table (?tenant=&state=&q=)
//	GET  /ui/agents/{id}           one agent, its charts (?audit_before= pages its audit records)
//	POST /ui/agents/{id}/revoke    revoke it (form with csrf_token)
//	POST /ui/agents/{id}/drain     drain its sessions (form with csrf_token)
//	GET  /ui/tenants               tenants
//	GET  /ui/tenants/{name}        one tenant, its charts (?audit_before=)
//	GET  /ui/tokens                join tokens (?tenant=)
//	POST /ui/tokens/{id}/revoke    revoke one (form with csrf_token)
//	GET  /ui/connect               "add a connector": a form for a join token
//	POST /ui/connect               create it; show it once with the install command
//	GET  /ui/backends              backends and their grants
//	GET  /ui/backends/{name}       one backend, its certificates (?audit_before=)
//	POST /ui/backends/{name}/certificates/{serial}/revoke
//	                               revoke one certificate, or "unrecorded" ones (form with csrf_token)
//	GET  /ui/audit                 audit search (the admin API's filters; ?cursor= pages)
//	GET  /ui/releases              releases, rollouts, agents' updates by state and the newest 200 (?version=&tenant=&state=)
//	GET  /ui/relays                the relays sharing the store (a cluster, or this one)
//	GET  /login                    login form and single sign-on buttons (POST /login is the API's)
//	GET  /static/…                 CSS and script, no authentication

//go:embed ui
var dashFiles embed.FS

// DashRefresh is how often the dashboard's pages refresh their live data.
const DashRefresh = 3 * time.Second

// dashCSP is the dashboard's Content-Security-Policy: only its own script
// and style files, no inline code, no framing.
const dashCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Limits of the dashboard's pages.
const (
	dashAttention  = 25 // agents listed as needing attention on the overview
	dashAuditLimit = 50 // audit records on an agent's or tenant's page
	dashMaxQuery   = 200
)

// dashPages are the dashboard's templates, parsed once: each page is the
// layout with that page's blocks.
type dashPages map[string]*template.Template

func parseDashPages() dashPages {
	p := dashPages{}
	for _, name := range []string{"overview", "agents", "agent", "tenants", "tenant", "tokens", "connect", "connected",
		"backends", "backend", "audit", "releases", "relays", "login", "signedin", "error"} {
		p[name] = template.Must(template.New(name).Funcs(dashFuncs()).ParseFS(dashFiles, "ui/layout.html", "ui/parts.html", "ui/"+name+".html"))
	}
	return p
}

// dashView is what every page template gets.
type dashView struct {
	Title    string
	Nav      string // the navigation entry to highlight
	Operator Operator
	CSRF     string
	Now      time.Time
	Refresh  int64 // milliseconds; 0 for pages without live data
	Data     any
}

// dashRoute is one authenticated page or form action of the dashboard.
type dashRoute struct {
	pattern string // method and path
	access  access
	page    string   // the page's template, for a page
	data    pageData // the page's data, for a page
	action  dashAction
}

// dashRoutes are the dashboard's pages and actions with who may use them.
func (s *Server) dashRoutes() []dashRoute {
	return []dashRoute{
		{pattern: "GET /{$}", access: viewer, page: "overview", data: s.overviewData},
		{pattern: "GET /ui/agents", access: viewer, page: "agents", data: s.agentsData},
		{pattern: "GET /ui/agents/{id}", access: viewer, page: "agent", data: s.agentData},
		{pattern: "POST /ui/agents/{id}/revoke", access: tenantAdmin, action: s.revokeAction},
		{pattern: "POST /ui/agents/{id}/drain", access: tenantAdmin, action: s.drainAction},
		{pattern: "GET /ui/tenants", access: viewer, page: "tenants", data: s.tenantsData},
		{pattern: "GET /ui/tenants/{name}", access: viewer, page: "tenant", data: s.tenantData},
		{pattern: "GET /ui/tokens", access: tenantAdmin, page: "tokens", data: s.tokensData},
		{pattern: "POST /ui/tokens/{id}/revoke", access: tenantAdmin, action: s.revokeTokenAction},
		{pattern: "GET /ui/connect", access: tenantAdmin, page: "connect", data: s.connectData},
		{pattern: "POST /ui/connect", access: tenantAdmin, page: "connected", data: s.connectedData},
		{pattern: "GET /ui/backends", access: vendorOnly, page: "backends", data: s.backendsData},
		{pattern: "GET /ui/backends/{name}", access: vendorOnly, page: "backend", data: s.backendData},
		{pattern: "POST /ui/backends/{name}/certificates/{serial}/revoke", access: vendorOnly, action: s.revokeBackendCertAction},
		{pattern: "GET /ui/audit", access: viewer, page: "audit", data: s.auditData},
		{pattern: "GET /ui/releases", access: vendorOnly, page: "releases", data: s.releasesData},
		{pattern: "GET /ui/relays", access: vendorOnly, page: "relays", data: s.relaysData},
	}
}

// dashboard registers the dashboard's handlers on mux. It panics on a
// route without access.
func (s *Server) dashboard(mux *http.ServeMux) {
	s.pages = parseDashPages()
	static, _ := fs.Sub(dashFiles, "ui/static")
	files := http.StripPrefix("/static/", http.FileServerFS(static))
	mux.Handle("GET /static/", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		dashHeaders(w)
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, req)
	}))
	mux.HandleFunc("GET /login", s.loginPage)
	for _, r := range s.dashRoutes() {
		switch {
		case r.access == accessUnset:
			panic("console: page " + r.pattern + " declares no access")
		case r.action != nil:
			mux.Handle(r.pattern, s.action(r.access, r.action))
		default:
			mux.Handle(r.pattern, s.page(r.page, r.access, r.data))
		}
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		s.errorPage(w, req, http.StatusNotFound, "There is no page "+req.URL.Path+".")
	})
}

// dashHeaders sets the security headers of every dashboard response.
func dashHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", dashCSP)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	// Not no-referrer: with it browsers send "Origin: null" on form posts,
	// which the admin API's origin check refuses.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
}

// noStore marks a response as never to be cached: authenticated pages and
// the login form.
func noStore(w http.ResponseWriter) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
}

// pageData builds a page's data for an authenticated request with a,
// scoped to its operator; it returns the page title, or an error (an
// *APIError for its status).
type pageData func(req *http.Request, op Operator, a *admin.Admin, now time.Time) (title string, data any, err error)

// dashAction performs a form's action with a, scoped to the operator, and
// returns where to redirect.
type dashAction func(req *http.Request, op Operator, a *admin.Admin) (redirect string, err error)

// signIn authenticates a dashboard request. A browser GET without a valid
// session is redirected to the login page; other failures get an error
// page (or a bare status for live refreshes, which the script handles).
func (s *Server) signIn(w http.ResponseWriter, req *http.Request, need access) (Operator, bool) {
	dashHeaders(w)
	noStore(w)
	op, apiErr := s.authenticate(req, doorAPI)
	if apiErr == nil {
		if apiErr = s.checkAccess(req, op, need); apiErr == nil {
			return op, true
		}
	}
	setRetryAfter(w, apiErr)
	live := req.URL.Query().Get("live") == "1"
	switch {
	case apiErr.Status == http.StatusUnauthorized && req.Method == http.MethodGet && !live:
		http.Redirect(w, req, "/login?next="+url.QueryEscape(req.URL.RequestURI()), http.StatusSeeOther)
	case live:
		http.Error(w, apiErr.Message, apiErr.Status)
	default:
		s.errorPage(w, req, apiErr.Status, apiErr.Message)
	}
	return Operator{}, false
}

// page serves an authenticated page rendered with template name; with
// live=1 it renders only the page's "live" block.
func (s *Server) page(name string, need access, data pageData) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		op, ok := s.signIn(w, req, need)
		if !ok {
			return
		}
		ctx, cancel := context.WithTimeout(context.WithValue(req.Context(), operatorKey{}, op), adminRequestTimout)
		defer cancel()
		req = req.WithContext(ctx)
		now := s.cfg.Now()
		title, d, err := data(req, op, s.adm.For(op.Actor(), op.Scope()), now)
		if err != nil {
			e := s.refusal(req, op, err)
			if req.URL.Query().Get("live") == "1" {
				http.Error(w, e.Message, e.Status)
				return
			}
			s.errorPage(w, req, e.Status, e.Message)
			return
		}
		v := dashView{Title: title, Nav: name, Operator: op, CSRF: op.CSRFToken, Now: now, Refresh: DashRefresh.Milliseconds(), Data: d}
		block := "page"
		if req.URL.Query().Get("live") == "1" && s.pages[name].Lookup("live") != nil {
			block = "live"
		}
		s.render(w, http.StatusOK, name, block, v)
	})
}

// action serves an authenticated POST from a dashboard form (the
// authentication checks its CSRF token) and redirects where it says.
func (s *Server) action(need access, do dashAction) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		op, ok := s.signIn(w, req, need)
		if !ok {
			return
		}
		ctx, cancel := context.WithTimeout(context.WithValue(req.Context(), operatorKey{}, op), adminRequestTimout)
		defer cancel()
		req = req.WithContext(ctx)
		to, err := do(req, op, s.adm.For(op.Actor(), op.Scope()))
		if err != nil {
			e := s.refusal(req, op, err)
			s.errorPage(w, req, e.Status, e.Message)
			return
		}
		http.Redirect(w, req, to, http.StatusSeeOther)
	})
}

// render executes block of page name into a buffer first, so that a
// template error never leaves half a page.
func (s *Server) render(w http.ResponseWriter, status int, name, block string, v dashView) {
	var buf bytes.Buffer
	if err := s.pages[name].ExecuteTemplate(&buf, block, v); err != nil {
		s.log.Error("dashboard: render", "page", name, "err", err)
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

func (s *Server) errorPage(w http.ResponseWriter, req *http.Request, status int, msg string) {
	dashHeaders(w)
	noStore(w)
	op, _ := OperatorFrom(req.Context())
	s.render(w, status, "error", "page", dashView{Title: http.StatusText(status), Operator: op, Now: s.cfg.Now(),
		Data: struct {
			Status  int
			Message string
		}{status, msg}})
}

// loginPage shows the login form, which posts to /login (api.go), and a
// button for each single sign-on issuer.
func (s *Server) loginPage(w http.ResponseWriter, req *http.Request) {
	dashHeaders(w)
	noStore(w)
	msg := ""
	if req.URL.Query().Get("error") != "" {
		msg = "That operator token is unknown, expired or revoked."
	}
	s.loginPageStatus(w, req, http.StatusOK, req.URL.Query().Get("next"), msg)
}

// loginThrottled is what the login page says to a source throttled for
// its failures.
const loginThrottled = "Too many failed sign-ins from here: wait a minute and try again."

// loginView is the login page's data.
type loginView struct {
	Next    string // a path on this site (safeNext), default "/"
	Message string // why the last attempt failed, or ""
	SSO     []ssoButton
}

// ssoButton is a single sign-on issuer on the login page.
type ssoButton struct{ Href, Display string }

// loginPageStatus shows the login page with status, keeping next when it
// is a path on this site, and msg.
func (s *Server) loginPageStatus(w http.ResponseWriter, req *http.Request, status int, next, msg string) {
	dashHeaders(w)
	noStore(w)
	if !safeNext(next) {
		next = "/"
	}
	v := loginView{Next: next, Message: msg}
	if s.sso != nil {
		for _, i := range s.sso.issuers {
			// Without a page asked for, single sign-on lands where the
			// person's scope suggests (landing).
			href := "/login/sso/" + url.PathEscape(i.Name)
			if next != "/" {
				href += "?next=" + url.QueryEscape(next)
			}
			v.SSO = append(v.SSO, ssoButton{href, i.Display})
		}
	}
	s.render(w, status, "login", "page", dashView{Title: "Log in", Now: s.cfg.Now(), Data: v})
}

// overviewView is the fleet overview.
type overviewView struct {
	Fleet     admin.Fleet
	Attention []admin.FleetAgent // down and degraded agents, needing attention first
	More      int                // unhealthy agents not listed
	// Charts are the fleet's (every tenant's for a vendor operator, the
	// operator's tenant's otherwise); nil without the relay's history.
	Charts *chartsView
	// Health is the relay's health panel, for vendor operators only.
	Health *Health
}

func (s *Server) overviewData(req *http.Request, op Operator, a *admin.Admin, _ time.Time) (string, any, error) {
	fl, err := a.Fleet(req.Context(), admin.FleetFilter{Unhealthy: true})
	if err != nil {
		return "", nil, err
	}
	v := overviewView{Fleet: fl, Attention: fl.Agents}
	if len(v.Attention) > dashAttention {
		v.More = len(v.Attention) - dashAttention
		v.Attention = v.Attention[:dashAttention]
	}
	if r := s.cfg.Relay; r != nil {
		// A vendor operator sees the relay and every tenant; anyone else
		// the tenant of their scope, which a.Fleet has checked.
		scope := op.Scope()
		q := history.Query{Relay: scope.Vendor(), Tenant: scope.Tenant, Events: dashEvents, Live: true}
		w := r.History(q)
		v.Charts = &chartsView{Charts: overviewCharts(w, scope.Tenant), Events: w.Events, Untracked: w.Untracked, Interval: w.Interval}
		if scope.Vendor() {
			h := r.Health()
			v.Health = &h
		}
	}
	return "Fleet", v, nil
}

// agentsView is the agent table with its filter.
type agentsView struct {
	Tenant string // "" for all
	State  string // "" (all but revoked), "all" or a Health
	Query  string
	// Tenants are every tenant, for the filter's choices.
	Tenants []admin.TenantSummary
	Agents  []admin.FleetAgent
	// Total counts the agents of the tenant filter in every state.
	Total int
}

// Choices of the agent table's state filter besides the health states.
const (
	stateActive = ""    // every state but revoked
	stateAll    = "all" // every state
)

func (s *Server) agentsData(req *http.Request, _ Operator, a *admin.Admin, _ time.Time) (string, any, error) {
	q := req.URL.Query()
	v := agentsView{Tenant: q.Get("tenant"), State: q.Get("state"), Query: strings.TrimSpace(q.Get("q"))}
	if len(v.Query) > dashMaxQuery || len(v.Tenant) > dashMaxQuery {
		return "", nil, admin.Errorf(admin.ErrInvalid, "filter longer than %d bytes", dashMaxQuery)
	}
	f := admin.FleetFilter{}
	switch v.State {
	case stateActive, stateAll:
	default:
		h, err := admin.ParseHealth(v.State)
		if err != nil {
			return "", nil, err
		}
		f.State = h
	}
	if v.Tenant != "" {
		if _, err := a.Tenant(req.Context(), v.Tenant); err != nil {
			return "", nil, err
		}
	}
	// All tenants for the filter's choices; the tenant filter is applied
	// here so that the choices stay.
	fl, err := a.Fleet(req.Context(), f)
	if err != nil {
		return "", nil, err
	}
	v.Tenants = fl.Tenants
	if v.Tenant != "" && !slices.ContainsFunc(fl.Tenants, func(t admin.TenantSummary) bool { return t.Name == v.Tenant }) {
		return "", nil, admin.Errorf(admin.ErrNotFound, "no tenant %q", v.Tenant)
	}
	v.Agents = filterAgents(fl.Agents, v.Tenant, v.State == stateActive, v.Query)
	for _, t := range fl.Tenants {
		if v.Tenant == "" || t.Name == v.Tenant {
			v.Total += t.Agents.Total()
		}
	}
	return "Agents", v, nil
}

// filterAgents keeps the agents of tenant ("" for all), without revoked
// ones when active, whose id, hostname, tenant or version contains query
// (case-insensitively).
func filterAgents(agents []admin.FleetAgent, tenant string, active bool, query string) []admin.FleetAgent {
	query = strings.ToLower(query)
	out := []admin.FleetAgent{}
	for _, a := range agents {
		if tenant != "" && a.Tenant != tenant || active && a.State == admin.HealthRevoked {
			continue
		}
		if query != "" && !slices.ContainsFunc([]string{a.ID, a.Hostname, a.Tenant, a.Version}, func(s string) bool {
			return strings.Contains(strings.ToLower(s), query)
		}) {
			continue
		}
		out = append(out, a)
	}
	return out
}

// agentView is one agent's page.
type agentView struct {
	Agent admin.AgentDetail
	// Report is the latest report over the agent's sessions, nil when
	// none has arrived; ReportAt is when it arrived.
	Report   *admin.LiveAgent
	Audit    auditPage
	CertRoot string
	Charts   *chartsView
	// Request is the request id the "find a request id" box asked for,
	// RequestErr what is wrong with it, and RequestAudit the records of
	// that request the operator may see.
	Request      string
	RequestErr   string
	RequestAudit []audit.Record
}

func (s *Server) agentData(req *http.Request, _ Operator, a *admin.Admin, _ time.Time) (string, any, error) {
	id := req.PathValue("id")
	d, err := a.FleetAgent(req.Context(), id)
	if err != nil {
		return "", nil, err
	}
	v := agentView{Agent: d}
	for i := range d.Live {
		l := &d.Live[i]
		if l.Report != nil && (v.Report == nil || l.ReportAt.After(v.Report.ReportAt)) {
			v.Report = l
		}
	}
	if info, err := a.Agent(req.Context(), id); err == nil {
		v.CertRoot = info.CertRoot
	}
	if v.Audit, err = s.pagedAudit(req, a, admin.AuditFilter{Agent: id}); err != nil {
		return "", nil, err
	}
	if r := s.cfg.Relay; r != nil {
		// a.FleetAgent has checked that the operator sees the agent.
		w := r.History(history.Query{Tenant: d.Tenant, Agent: d.ID, Events: dashEvents, Live: true})
		v.Charts = &chartsView{Charts: agentCharts(w, d.ID), Events: w.Events, Untracked: w.Untracked, Interval: w.Interval}
	}
	// A request id a tenant quotes from this agent's access log: the
	// relay's records of it, the refusals that never reached an agent
	// included (within the operator's scope, as every audit query). The
	// live refresh renders no box: it does not search again.
	if v.Request = strings.TrimSpace(req.URL.Query().Get("request")); v.Request != "" && req.URL.Query().Get("live") != "1" {
		if err := admin.CheckRequestID(v.Request); err != nil {
			v.RequestErr = err.Error()
		} else if v.RequestAudit, err = a.Audit(req.Context(), admin.AuditFilter{Request: v.Request, NewestFirst: true, Limit: dashAuditLimit}); err != nil {
			return "", nil, err
		}
	}
	return "Agent " + d.ID, v, nil
}

func (s *Server) revokeAction(req *http.Request, _ Operator, a *admin.Admin) (string, error) {
	id := req.PathValue("id")
	if _, err := a.RevokeAgent(req.Context(), id, strings.TrimSpace(req.PostFormValue("reason"))); err != nil {
		return "", err
	}
	return "/ui/agents/" + url.PathEscape(id), nil
}

func (s *Server) drainAction(req *http.Request, _ Operator, a *admin.Admin) (string, error) {
	id := req.PathValue("id")
	if _, err := a.DrainAgent(req.Context(), id, strings.TrimSpace(req.PostFormValue("message"))); err != nil {
		return "", err
	}
	return "/ui/agents/" + url.PathEscape(id), nil
}

func (s *Server) tenantsData(req *http.Request, _ Operator, a *admin.Admin, _ time.Time) (string, any, error) {
	fl, err := a.Fleet(req.Context(), admin.FleetFilter{State: admin.HealthDown}) // the agents are not shown
	if err != nil {
		return "", nil, err
	}
	return "Tenants", fl, nil
}

// tenantView is one tenant's page.
type tenantView struct {
	Tenant admin.TenantSummary
	Agents []admin.FleetAgent
	Audit  auditPage
	Charts *chartsView
}

func (s *Server) tenantData(req *http.Request, _ Operator, a *admin.Admin, _ time.Time) (string, any, error) {
	name := req.PathValue("name")
	fl, err := a.Fleet(req.Context(), admin.FleetFilter{Tenant: name})
	if err != nil {
		return "", nil, err
	}
	if len(fl.Tenants) == 0 {
		return "", nil, admin.Errorf(admin.ErrNotFound, "no tenant %q", name)
	}
	v := tenantView{Tenant: fl.Tenants[0], Agents: fl.Agents}
	if v.Audit, err = s.pagedAudit(req, a, admin.AuditFilter{Tenant: name}); err != nil {
		return "", nil, err
	}
	if r := s.cfg.Relay; r != nil {
		// a.Fleet has checked that the operator sees the tenant.
		w := r.History(history.Query{Tenant: name, Agents: true, Events: dashEvents, Live: true})
		var t history.TenantHistory
		if len(w.Tenants) == 1 {
			t = w.Tenants[0]
		}
		t.Name = name
		v.Charts = &chartsView{Charts: tenantCharts(w, t, true), Events: w.Events, Untracked: w.Untracked, Interval: w.Interval}
	}
	return "Tenant " + name, v, nil
}
