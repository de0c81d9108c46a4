package console

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/throttle"
	"github.com/tetherhq/tether/relay/internal/trust"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/store"
)

// dashRelay is a running admin listener on a real data directory (store,
// CA, audit trail) for tests of the dashboard's pages over real HTTPS. The
// live agent sessions it shows are the test's own (live).
type dashRelay struct {
	adm  *admin.Admin
	srv  *Server
	dir  *datadir.Dir
	live *fixedLive
	base string // https://127.0.0.1:port
	tok  string // an operator token
}

// fixedLive is the live view of a relay whose connected sessions a test
// lists itself; drains are counted.
type fixedLive struct {
	mu       sync.Mutex // guards sessions and drained
	sessions []admin.LiveAgent
	drained  int
}

func (l *fixedLive) LiveAgents(tenant string) []admin.LiveAgent {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []admin.LiveAgent
	for _, s := range l.sessions {
		if tenant == "" || s.Tenant == tenant {
			out = append(out, s)
		}
	}
	return out
}

func (l *fixedLive) DrainAgent(tenant, id, msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for i := range l.sessions {
		if s := &l.sessions[i]; s.Tenant == tenant && s.Agent == id {
			s.Draining = true
			n++
		}
	}
	l.drained += n
	return n
}

func startDashRelay(t *testing.T, opts ...func(*Config)) *dashRelay {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dir, authority, err := datadir.Open(ctx, t.TempDir(), datadir.Options{TrustDomain: "tether.internal"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	trail, err := audit.Open(ctx, dir.Store, dir.File(datadir.AuditFile), log)
	if err != nil {
		t.Fatal(err)
	}
	auth := trust.NewAuthority(dir.CAStorage(), authority)
	tlsSrv, err := trust.NewServer(auth, trail, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	live := &fixedLive{}
	adm := admin.New(admin.Config{Dir: dir, Authority: auth, Audit: trail, Live: live, CertLifetime: 24 * time.Hour, Logger: log, Now: time.Now})
	// These tests try many wrong credentials and refused requests on
	// purpose: a burst that throttling and the summing of refusals do not
	// reach (authlimit_test.go tests them).
	cfg := Config{Listen: "127.0.0.1:0", SessionTTL: 12 * time.Hour, HandshakeTimeout: 10 * time.Second, Logger: log, Now: time.Now,
		Throttle: throttle.Config{Burst: 1000}, ScopeRefusals: throttle.Config{Burst: 1000}}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := New(cfg, adm, tlsSrv)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		trail.Close()
		dir.Close()
	})
	tok, _, err := adm.CreateOperatorToken(ctx, "alice", admin.Unscoped, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &dashRelay{adm: adm, srv: srv, dir: dir, live: live, base: "https://" + srv.Addr().String(), tok: tok}
}

// client is an HTTPS client that trusts the relay CA (the relay's own
// certificate names no host, so the chain is checked without a name) and
// does not follow redirects.
func (d *dashRelay) client(t *testing.T) *http.Client {
	t.Helper()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(d.adm.CABundlePEM()) {
		t.Fatal("no CA certificates")
	}
	jar, _ := cookiejar.New(nil)
	return &http.Client{
		Jar:     jar,
		Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true,
			VerifyConnection: func(cs tls.ConnectionState) error {
				inter := x509.NewCertPool()
				for _, c := range cs.PeerCertificates[1:] {
					inter.AddCert(c)
				}
				_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
				return err
			}}},
	}
}

type dashResponse struct {
	status int
	header http.Header
	body   string
}

func (d *dashRelay) do(t *testing.T, c *http.Client, method, path string, form url.Values, header map[string]string) dashResponse {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, d.base+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
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

// login opens a browser session with the operator token through the login
// form, as a browser posts it, and returns the session's CSRF token.
func (d *dashRelay) login(t *testing.T, c *http.Client) string {
	t.Helper()
	res := d.do(t, c, http.MethodPost, "/login", url.Values{"token": {d.tok}, "next": {"/ui/agents"}}, map[string]string{"Origin": d.base})
	if res.status != http.StatusSeeOther || res.header.Get("Location") != "/ui/agents" {
		t.Fatalf("login: status %d, Location %q, want 303 to /ui/agents: %s", res.status, res.header.Get("Location"), res.body)
	}
	page := d.do(t, c, http.MethodGet, "/", nil, nil)
	m := regexp.MustCompile(`name="csrf_token" value="([^"]+)"`).FindStringSubmatch(page.body)
	if page.status != http.StatusOK || m == nil {
		t.Fatalf("overview after login: status %d, CSRF token found %v", page.status, m != nil)
	}
	return m[1]
}

const (
	hostileHostname    = `<script>alert("host")</script>&"'`
	hostileConfigError = `</td><img src=x onerror=alert(1)> "quoted" & <b>bold</b>`
)

// addHostileAgent enrols an agent of tenant in the store whose hostname is
// hostile markup, and connects a session for it whose latest report
// carries a hostile config error.
func (d *dashRelay) addHostileAgent(t *testing.T, tenant, id string) {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	if err := d.dir.Store.AddAgent(ctx, store.Agent{ID: id, Tenant: tenant, Hostname: hostileHostname, CreatedAt: now,
		CertSerial: "1", CertNotAfter: now.Add(24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	d.live.mu.Lock()
	defer d.live.mu.Unlock()
	d.live.sessions = append(d.live.sessions, admin.LiveAgent{Tenant: tenant, Agent: id, SessionID: "s-" + id, Transport: "quic", Remote: "192.0.2.1:4000",
		ConnectedAt: now, LastHeard: now, CertNotAfter: now.Add(24 * time.Hour),
		Hello: protocol.Hello{AgentVersion: "1.2.3", OS: "linux", Arch: "amd64", Hostname: hostileHostname},
		Report: &protocol.Report{AgentVersion: "1.2.3", OS: "linux", Arch: "amd64", Hostname: hostileHostname,
			Transport: "quic", BytesIn: 3 << 20, BytesOut: 1536, ConfigError: hostileConfigError,
			DialFailures: map[string]uint64{`<svc onload=x>`: 2}, LastDialError: `dial <b>tcp</b>: refused`},
		ReportAt: now})
}

// Every dashboard page needs authentication: a browser without a session
// (or with a bogus one) is sent to the login page, a live refresh gets
// 401, and nothing of the fleet is shown.
func TestDashboardPagesNeedAuthentication(t *testing.T) {
	d := startDashRelay(t)
	ctx := context.Background()
	if err := d.adm.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	d.addHostileAgent(t, "acme", "agent1")
	pages := []string{"/", "/ui/agents", "/ui/agents?tenant=acme&state=all", "/ui/agents/agent1", "/ui/tenants", "/ui/tenants/acme"}
	for _, name := range []string{"no cookie", "bogus cookie", "wrong bearer token"} {
		t.Run(name, func(t *testing.T) {
			c := d.client(t)
			hdr := map[string]string{}
			switch name {
			case "bogus cookie":
				hdr["Cookie"] = SessionCookie + "=not-a-session"
			case "wrong bearer token":
				hdr["Authorization"] = "Bearer top1_aaaaaaaaaaaaaaaa.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
			}
			for _, p := range pages {
				res := d.do(t, c, http.MethodGet, p, nil, hdr)
				if res.status != http.StatusSeeOther || !strings.HasPrefix(res.header.Get("Location"), "/login?next=") {
					t.Errorf("GET %s: status %d, Location %q, want 303 to /login", p, res.status, res.header.Get("Location"))
				}
				if strings.Contains(res.body, "alert") || strings.Contains(res.body, "linux/amd64") {
					t.Errorf("GET %s without authentication shows the fleet", p)
				}
				sep := "?"
				if strings.Contains(p, "?") {
					sep = "&"
				}
				if res := d.do(t, c, http.MethodGet, p+sep+"live=1", nil, hdr); res.status != http.StatusUnauthorized || strings.Contains(res.body, "alert") {
					t.Errorf("GET %s live refresh: status %d, want 401 without the agent", p, res.status)
				}
			}
			res := d.do(t, c, http.MethodPost, "/ui/agents/agent1/revoke", url.Values{"reason": {"x"}}, hdr)
			if res.status != http.StatusUnauthorized {
				t.Errorf("POST revoke: status %d, want 401", res.status)
			}
			if a, err := d.adm.Agent(ctx, "agent1"); err != nil || a.RevokedAt != nil {
				t.Fatalf("agent after an unauthenticated revoke: %+v, %v; want not revoked", a, err)
			}
		})
	}
	// The redirect keeps the page asked for.
	res := d.do(t, d.client(t), http.MethodGet, "/ui/agents?tenant=acme", nil, nil)
	if got, want := res.header.Get("Location"), "/login?next="+url.QueryEscape("/ui/agents?tenant=acme"); got != want {
		t.Errorf("Location = %q, want %q", got, want)
	}
	// The login page names where to go next only when it is on this host.
	for next, want := range map[string]string{"/ui/agents/agent1": `value="/ui/agents/agent1"`, "//evil.example/": `value="/"`, "https://evil.example/": `value="/"`} {
		res := d.do(t, d.client(t), http.MethodGet, "/login?next="+url.QueryEscape(next), nil, nil)
		if res.status != http.StatusOK || !strings.Contains(res.body, `name="next" `+want) {
			t.Errorf("login page with next=%q: status %d, want the form with next %s", next, res.status, want)
		}
	}
}

// Agent-supplied strings (the hostname from enrolment, the config error and
// dial errors from reports) are escaped on every page that shows them.
func TestDashboardEscapesAgentStrings(t *testing.T) {
	d := startDashRelay(t)
	ctx := context.Background()
	for _, tn := range []string{"acme", "globex"} {
		if err := d.adm.AddTenant(ctx, tn); err != nil {
			t.Fatal(err)
		}
	}
	d.addHostileAgent(t, "acme", "agent1")
	c := d.client(t)
	d.login(t, c)
	for _, p := range []string{"/", "/ui/agents", "/ui/agents?live=1", "/ui/agents/agent1", "/ui/agents/agent1?live=1", "/ui/tenants/acme", "/ui/tenants/acme?live=1"} {
		res := d.do(t, c, http.MethodGet, p, nil, nil)
		if res.status != http.StatusOK {
			t.Fatalf("GET %s: status %d: %s", p, res.status, res.body)
		}
		for _, raw := range []string{"<script>alert", "<img src=x", "<b>bold</b>", "<svc onload", "<b>tcp</b>"} {
			if strings.Contains(res.body, raw) {
				t.Errorf("GET %s: the page holds %q unescaped", p, raw)
			}
		}
		if !strings.Contains(res.body, "&lt;script&gt;alert(&#34;host&#34;)&lt;/script&gt;&amp;&#34;&#39;") {
			t.Errorf("GET %s: the escaped hostname is missing", p)
		}
		if p != "/" && !strings.Contains(res.body, "&lt;/td&gt;&lt;img src=x onerror=alert(1)&gt;") {
			t.Errorf("GET %s: the escaped config error is missing", p)
		}
	}
	// The report's figures are shown with their units.
	res := d.do(t, c, http.MethodGet, "/ui/agents?tenant=acme", nil, nil)
	for _, want := range []string{"3.0 MiB / 1.5 KiB", "1.2.3", "linux/amd64", `data-agent="agent1"`} {
		if !strings.Contains(res.body, want) {
			t.Errorf("agent table lacks %q", want)
		}
	}
	// A filter on another tenant leaves the agent out.
	if res := d.do(t, c, http.MethodGet, "/ui/agents?tenant=globex", nil, nil); strings.Contains(res.body, `data-agent="agent1"`) {
		t.Error("the agent table filtered on globex shows an agent of acme")
	}
	if res := d.do(t, c, http.MethodGet, "/ui/agents?tenant=%3Cnope%3E", nil, nil); res.status != http.StatusNotFound || strings.Contains(res.body, "<nope>") {
		t.Errorf("unknown tenant filter: status %d, want 404 with the name escaped", res.status)
	}
}

// Every dashboard response carries a strict CSP and refuses framing;
// authenticated pages are never cached.
func TestDashboardSecurityHeaders(t *testing.T) {
	d := startDashRelay(t, withHistory(newHistoryRelay()))
	if err := d.adm.AddTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	c := d.client(t)
	check := func(path string, res dashResponse, authenticated bool) {
		t.Helper()
		csp := res.header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("GET %s: Content-Security-Policy %q lacks %q", path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
			t.Errorf("GET %s: Content-Security-Policy %q allows inline code", path, csp)
		}
		if got := res.header.Get("X-Frame-Options"); got != "DENY" {
			t.Errorf("GET %s: X-Frame-Options %q, want DENY", path, got)
		}
		if got := res.header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET %s: X-Content-Type-Options %q, want nosniff", path, got)
		}
		if authenticated && res.header.Get("Cache-Control") != "no-store" {
			t.Errorf("GET %s: Cache-Control %q, want no-store", path, res.header.Get("Cache-Control"))
		}
		if strings.Contains(res.body, "<script>") || strings.Contains(res.body, " style=") || regexp.MustCompile(` on[a-z]+=`).MatchString(res.body) {
			t.Errorf("GET %s: the page holds inline script or style, which the CSP blocks", path)
		}
	}
	for _, p := range []string{"/login", "/static/dash.css", "/static/dash.js", "/"} {
		res := d.do(t, c, http.MethodGet, p, nil, nil)
		check(p, res, p == "/" || p == "/login")
	}
	d.login(t, c)
	for _, p := range []string{"/", "/ui/agents", "/ui/tenants", "/ui/tenants/acme", "/ui/agents?live=1", "/ui/no-such-page", "/ui/agents/nope",
		"/ui/tokens", "/ui/connect", "/ui/backends", "/ui/audit", "/ui/audit?kind=tenant.", "/ui/releases", "/ui/relays", "/ui/relays?live=1", "/?live=1", "/ui/tenants/acme?live=1"} {
		res := d.do(t, c, http.MethodGet, p, nil, nil)
		check(p, res, true)
		want := http.StatusOK
		if strings.Contains(p, "no") {
			want = http.StatusNotFound
		}
		if res.status != want {
			t.Errorf("GET %s: status %d, want %d", p, res.status, want)
		}
	}
	if res := d.do(t, c, http.MethodGet, "/static/dash.js", nil, nil); !strings.Contains(res.header.Get("Content-Type"), "javascript") {
		t.Errorf("dash.js Content-Type %q", res.header.Get("Content-Type"))
	}
}

// The revoke and drain buttons post forms that must carry the session's CSRF token
// and come from this origin; the revocation is audited under the operator.
func TestDashboardRevokeNeedsCSRF(t *testing.T) {
	d := startDashRelay(t)
	ctx := context.Background()
	if err := d.adm.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	d.addHostileAgent(t, "acme", "agent1")
	c := d.client(t)
	csrf := d.login(t, c)
	page := d.do(t, c, http.MethodGet, "/ui/agents/agent1", nil, nil)
	if !strings.Contains(page.body, `action="/ui/agents/agent1/revoke"`) {
		t.Fatal("the agent page has no revoke form")
	}
	revoked := func() bool {
		a, err := d.adm.Agent(ctx, "agent1")
		if err != nil {
			t.Fatal(err)
		}
		return a.RevokedAt != nil
	}
	for _, tc := range []struct {
		name string
		form url.Values
		hdr  map[string]string
	}{
		{"no token", url.Values{"reason": {"x"}}, map[string]string{"Origin": d.base}},
		{"wrong token", url.Values{"reason": {"x"}, CSRFField: {"wrong"}}, map[string]string{"Origin": d.base}},
		{"other origin", url.Values{"reason": {"x"}, CSRFField: {csrf}}, map[string]string{"Origin": "https://evil.example"}},
	} {
		res := d.do(t, c, http.MethodPost, "/ui/agents/agent1/revoke", tc.form, tc.hdr)
		if res.status != http.StatusForbidden || revoked() {
			t.Errorf("%s: status %d, revoked %v; want 403 and not revoked", tc.name, res.status, revoked())
		}
	}
	if res := d.do(t, c, http.MethodPost, "/ui/agents/agent1/drain", url.Values{"message": {"maintenance"}}, map[string]string{"Origin": d.base}); res.status != http.StatusForbidden {
		t.Errorf("drain without a CSRF token: status %d, want 403", res.status)
	}
	res := d.do(t, c, http.MethodPost, "/ui/agents/agent1/drain", url.Values{"message": {"maintenance"}, CSRFField: {csrf}}, map[string]string{"Origin": d.base})
	if res.status != http.StatusSeeOther {
		t.Fatalf("drain: status %d, want 303: %s", res.status, res.body)
	}
	d.live.mu.Lock()
	drained := d.live.drained
	d.live.mu.Unlock()
	if drained != 1 {
		t.Errorf("drain reached %d sessions, want 1", drained)
	}
	if recs, err := d.adm.Audit(ctx, admin.AuditFilter{Agent: "agent1", Kind: audit.Drain}); err != nil || len(recs) != 1 || recs[0].Actor != "operator:alice" {
		t.Fatalf("audit of the drain: %+v, %v; want one record by operator:alice", recs, err)
	}
	res = d.do(t, c, http.MethodPost, "/ui/agents/agent1/revoke", url.Values{"reason": {"lost laptop"}, CSRFField: {csrf}}, map[string]string{"Origin": d.base})
	if res.status != http.StatusSeeOther || res.header.Get("Location") != "/ui/agents/agent1" || !revoked() {
		t.Fatalf("revoke: status %d, Location %q, revoked %v; want 303 to the agent's page and revoked", res.status, res.header.Get("Location"), revoked())
	}
	recs, err := d.adm.Audit(ctx, admin.AuditFilter{Agent: "agent1", Kind: audit.Revoke})
	if err != nil || len(recs) != 1 || recs[0].Actor != "operator:alice" {
		t.Fatalf("audit of the revocation: %+v, %v; want one record by operator:alice", recs, err)
	}
	// The revoked agent leaves the default table and shows as revoked.
	if res := d.do(t, c, http.MethodGet, "/ui/agents", nil, nil); strings.Contains(res.body, `data-agent="agent1"`) {
		t.Error("the default agent table still shows the revoked agent")
	}
	if res := d.do(t, c, http.MethodGet, "/ui/agents?state=revoked", nil, nil); !strings.Contains(res.body, `data-agent="agent1"`) {
		t.Error("the agent table filtered on revoked lacks the agent")
	}
	if res := d.do(t, c, http.MethodPost, "/ui/agents/nope/revoke", url.Values{CSRFField: {csrf}}, map[string]string{"Origin": d.base}); res.status != http.StatusNotFound {
		t.Errorf("revoke of an unknown agent: status %d, want 404", res.status)
	}
}
