package test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// browser is a headless Chromium for the console's tests (the one
// TestDashboardInBrowser uses), with helpers that wait on what the page
// shows.
type browser struct {
	t         *testing.T
	ctx       context.Context
	artifacts string
	prefix    string // of screenshot names
}

// startBrowser starts Chromium with a profile of its own; it is stopped
// when the test ends.
func startBrowser(t *testing.T, prefix string) *browser {
	t.Helper()
	exe, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed: run scripts/deps.sh (it installs Debian's chromium and chromium-driver)")
	}
	artifacts := os.Getenv("TETHER_ARTIFACTS")
	if artifacts == "" {
		artifacts = t.TempDir()
	}
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(exe),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		// The admin listener's certificate comes from the relay CA, which
		// this browser profile does not trust.
		chromedp.IgnoreCertErrors,
		chromedp.WindowSize(1440, 900),
		chromedp.UserDataDir(t.TempDir()),
	)
	ctx, cancelTab := chromedp.NewContext(ctx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() {
		cancelTab()
		cancel()
	})
	// The first Run starts the browser; it must not carry a timeout.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return &browser{t: t, ctx: ctx, artifacts: artifacts, prefix: prefix}
}

// do runs steps with a generous deadline (a loaded 2-core machine); a
// navigation the page still had in flight can abort the next one, which
// is then tried again a few times.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	for attempt := 1; ; attempt++ {
		c, cancel := context.WithTimeout(b.ctx, 60*time.Second)
		err := chromedp.Do(c, steps...)
		cancel()
		if err == nil {
			return
		}
		if attempt < 4 && strings.Contains(err.Error(), "net::ERR_ABORTED") {
			b.t.Logf("%s: %v; again", what, err)
			time.Sleep(500 * time.Millisecond)
			continue
		}
		shot(b.t, b.ctx, b.artifacts, b.prefix+"-failed.png")
		b.t.Fatalf("%s: %v", what, err)
	}
}

// eventually polls a JavaScript expression until want holds (there is no
// event for "the page now shows"), and returns its value.
func (b *browser) eventually(what, expr string, want func(string) bool) string {
	b.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		c, cancel := context.WithTimeout(b.ctx, 20*time.Second)
		got, err := chromedp.Run(c, chromedp.Evaluate[string](expr))
		cancel()
		if err == nil && want(got) {
			return got
		}
		if time.Now().After(deadline) {
			shot(b.t, b.ctx, b.artifacts, b.prefix+"-failed.png")
			b.t.Fatalf("%s: last value %q, error %v", what, got, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func is(want string) func(string) bool { return func(got string) bool { return got == want } }

func contains(want string) func(string) bool {
	return func(got string) bool { return strings.Contains(got, want) }
}

const (
	jsPath     = `location.pathname + location.search`
	jsWho      = `document.querySelector('.who') ? document.querySelector('.who').textContent : ''`
	jsScope    = `document.querySelector('.scope') ? document.querySelector('.scope').textContent : ''`
	jsAlert    = `document.querySelector('.error-box') ? document.querySelector('.error-box').textContent : ''`
	jsH1       = `document.querySelector('h1') ? document.querySelector('h1').textContent : ''`
	jsTenants  = `Array.from(document.querySelectorAll('tr[data-tenant]:not([data-agent])')).map(r => r.dataset.tenant).join(' ')`
	jsAgentIDs = `Array.from(document.querySelectorAll('#agent-rows tr[data-agent]')).map(r => r.dataset.tenant + '/' + r.dataset.agent).sort().join(' ')`
)

// Single sign-on to the console in a real headless Chromium, through a
// real authorization code flow with PKCE against identity providers the
// test runs: the vendor's (a vendor operator by group, a tenant
// administrator by claims, a person whose claims map to nothing, one
// whose claims name a tenant that does not exist) and acme's own (its
// administrator, landing where the page asked for; and a person whose
// claims name another tenant, which a tenant's issuer never grants).
// Sign-ins, sign-outs and refusals are audited with the person's issuer
// and subject.
func TestConsoleSingleSignOnInBrowser(t *testing.T) {
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // the identity providers must know the callback before the relay starts
	base := "https://" + adminAddr
	callback := base + "/login/sso/callback"
	corp := startIdP(t, "tether-console", "corp-secret", callback, map[string]map[string]any{
		"olivia": {"email": "olivia@vendor.example", "groups": []string{"ops", "staff"}},
		"tara":   {"email": "tara@vendor.example", "tether_role": "admin", "tether_tenant": "acme"},
		"nemo":   {"email": "nemo@vendor.example", "groups": []string{"staff"}},
		"ghosty": {"email": "ghosty@vendor.example", "tether_role": "admin", "tether_tenant": "ghost"},
	})
	acmeIdP := startIdP(t, "tether-console", "acme-secret", callback, map[string]map[string]any{
		"alan":    {"email": "alan@acme.example", "tether_role": "admin"},
		"mallory": {"email": "mallory@acme.example", "tether_role": "admin", "tether_tenant": "globex"},
	})
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "corp-secret")
	if err := os.WriteFile(secretFile, []byte("corp-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ssoFile := filepath.Join(dir, "sso.yaml")
	sso := fmt.Sprintf(`public_url: %s
issuers:
  - name: corp
    display: Vendor sign-on
    issuer: %s
    client_id: tether-console
    client_secret_file: %s
    groups:
      ops: vendor
  - name: acme
    display: Acme sign-on
    issuer: %s
    client_id: tether-console
    client_secret: acme-secret
    tenant: acme
`, base, corp.issuer(), secretFile, acmeIdP.issuer())
	if err := os.WriteFile(ssoFile, []byte(sso), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startRelay(t, relayOpts{extra: []string{"--admin-listen", adminAddr, "--admin-sso", ssoFile}})
	r.addTenant(t, "acme")
	r.addTenant(t, "globex")
	acme1 := startAgent(t, r, "acme", agentOpts{})
	globex1 := startAgent(t, r, "globex", agentOpts{})

	b := startBrowser(t, "sso")
	signIn := func(issuer, person string) {
		t.Helper()
		b.do("sign-on button "+issuer, chromedp.WaitVisible(chromedp.CSS(`a.sso-start[href^="/login/sso/`+issuer+`"]`)),
			chromedp.Click(chromedp.CSS(`a.sso-start[href^="/login/sso/`+issuer+`"]`)))
		b.do("the identity provider's form", chromedp.WaitVisible(chromedp.CSS("#idp-username")),
			chromedp.SendKeys(chromedp.CSS("#idp-username"), person), chromedp.Click(chromedp.CSS("#idp-login")))
	}
	logOut := func() {
		t.Helper()
		b.do("log out", chromedp.WaitVisible(chromedp.CSS("form.logout button")), chromedp.Click(chromedp.CSS("form.logout button")))
		b.eventually("the login page after logout", `location.pathname`, is("/login"))
	}

	// A vendor operator (by group): the whole fleet.
	b.do("open the login page", chromedp.Navigate(base+"/login"))
	signIn("corp", "olivia")
	b.eventually("olivia lands on the overview", jsPath, is("/"))
	b.eventually("olivia is named", jsWho, is("olivia@vendor.example"))
	b.eventually("olivia sees every tenant", jsTenants, is("acme globex"))
	if s := b.eventually("no scope shown", jsScope, func(string) bool { return true }); s != "" {
		t.Errorf("a vendor operator's scope shows as %q", s)
	}
	shot(t, b.ctx, b.artifacts, "sso-vendor.png")
	logOut()

	// A tenant administrator (by claims) lands on their tenant, and sees
	// no other.
	signIn("corp", "tara")
	b.eventually("tara lands on acme", jsPath, is("/ui/tenants/acme"))
	b.eventually("tara's scope", jsScope, is("admin of acme"))
	b.eventually("acme's agent on its page", jsAgentIDs, is("acme/"+acme1.id))
	b.do("tenants", chromedp.Navigate(base+"/ui/tenants"))
	b.eventually("only acme among the tenants", jsTenants, is("acme"))
	b.do("all agents", chromedp.Navigate(base+"/ui/agents?state=all"))
	b.eventually("only acme's agents", jsAgentIDs, is("acme/"+acme1.id))
	b.do("globex's page", chromedp.Navigate(base+"/ui/tenants/globex"))
	b.eventually("globex is not found", jsH1, contains("404"))
	b.do("globex's agent", chromedp.Navigate(base+"/ui/agents/"+globex1.id))
	b.eventually("globex's agent is not found", jsH1, contains("404"))
	shot(t, b.ctx, b.artifacts, "sso-tenant-admin.png")
	b.do("back to acme", chromedp.Navigate(base+"/ui/tenants/acme"))
	logOut()

	// People whose claims map to nothing are refused, and have no session.
	for _, tc := range []struct{ issuer, person string }{{"corp", "nemo"}, {"corp", "ghosty"}, {"acme", "mallory"}} {
		signIn(tc.issuer, tc.person)
		b.eventually(tc.person+" is refused", jsAlert, contains("nothing there gives you access"))
		b.do("the console after "+tc.person, chromedp.Navigate(base+"/ui/agents"))
		b.eventually(tc.person+" has no session", `location.pathname`, is("/login"))
	}
	shot(t, b.ctx, b.artifacts, "sso-refused.png")

	// Acme's own issuer: its administrator, sent to sign in from a page,
	// lands on that page.
	b.do("a page before signing in", chromedp.Navigate(base+"/ui/agents?tenant=acme"))
	b.eventually("the login page keeps the page", jsPath, is("/login?next=%2Fui%2Fagents%3Ftenant%3Dacme"))
	signIn("acme", "alan")
	b.eventually("alan lands on the page asked for", jsPath, is("/ui/agents?tenant=acme"))
	b.eventually("alan's scope", jsScope, is("admin of acme"))
	b.eventually("acme's agent", jsAgentIDs, is("acme/"+acme1.id))
	logOut()

	if checked, refused := corp.pkce(); checked < 4 || refused != 0 {
		t.Errorf("corp's PKCE: %d verified, %d refused; want every exchange verified", checked, refused)
	}
	if checked, refused := acmeIdP.pkce(); checked < 2 || refused != 0 {
		t.Errorf("acme's PKCE: %d verified, %d refused", checked, refused)
	}

	// The audit trail names each person by issuer and subject.
	type rec struct {
		Kind, Outcome, Actor, Tenant string
		Detail                       map[string]any
	}
	var recs []rec
	for _, line := range strings.Split(strings.TrimSpace(r.admin(t, "audit", "--kind", "operator.", "-o", "json")), "\n") {
		var x rec
		if err := json.Unmarshal([]byte(line), &x); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		recs = append(recs, x)
	}
	has := func(kind, outcome, subject, tenant string) bool {
		return slices.ContainsFunc(recs, func(x rec) bool {
			return x.Kind == kind && x.Outcome == outcome && x.Actor == "sso:"+subject && x.Tenant == tenant
		})
	}
	for _, want := range []struct{ kind, outcome, subject, tenant string }{
		{"operator.login", "ok", corp.subject("olivia"), ""},
		{"operator.logout", "ok", corp.subject("olivia"), ""},
		{"operator.login", "ok", corp.subject("tara"), "acme"},
		{"operator.logout", "ok", corp.subject("tara"), "acme"},
		{"operator.login", "forbidden", corp.subject("nemo"), ""},
		{"operator.login", "forbidden", corp.subject("ghosty"), ""},
		{"operator.login", "forbidden", acmeIdP.subject("mallory"), "acme"},
		{"operator.login", "ok", acmeIdP.subject("alan"), "acme"},
		{"operator.refused", "not_found", corp.subject("tara"), "acme"},
	} {
		if !has(want.kind, want.outcome, want.subject, want.tenant) {
			t.Errorf("no %s %s record of %s (tenant %q) in %+v", want.kind, want.outcome, want.subject, want.tenant, recs)
		}
	}
}

// A revoked operator certificate ends a live browser session opened with
// it within seconds (the page's live refresh is refused and the browser
// is sent to the login page), and every new request with it is refused,
// on a connection opened before the revocation as on new ones.
func TestRevokedOperatorCertificateInBrowser(t *testing.T) {
	a := startAdminRelay(t)
	a.addTenant(t, "acme")
	ag := startAgent(t, a.relayProc, "acme", agentOpts{})
	dir := t.TempDir()
	a.admin(t, "operator", "certificate", "create", "bob", "--out", dir, "--tenant", "acme", "--role", "admin")
	var certs []struct{ Serial, Name, Tenant, Role string }
	if err := json.Unmarshal([]byte(a.admin(t, "operator", "certificate", "list", "-o", "json")), &certs); err != nil || len(certs) != 1 ||
		certs[0].Name != "bob" || certs[0].Tenant != "acme" || certs[0].Role != "admin" {
		t.Fatalf("operator certificate list: %+v, %v", certs, err)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "operator.crt"), filepath.Join(dir, "operator.key"))
	if err != nil {
		t.Fatal(err)
	}
	// One client keeps its connection: requests after the revocation go
	// over the connection made before it.
	c := a.httpClient(&pair)
	c.Transport.(*http.Transport).DisableKeepAlives = false
	if st, code := a.call(t, c, "GET", "/api/v1/whoami", nil, nil); st != 200 {
		t.Fatalf("whoami with the certificate: %d %s", st, code)
	}
	// A browser session opened with the certificate. (Chromium here cannot
	// present a client certificate without a system-wide policy; the
	// session cookie the certificate's login answers is handed to it.)
	req, _ := http.NewRequest("POST", a.url+"/login", strings.NewReader(`{}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var session string
	for _, ck := range resp.Cookies() {
		if ck.Name == "__Host-tether_session" {
			session = ck.Value
		}
	}
	if resp.StatusCode != 200 || session == "" {
		t.Fatalf("login with the certificate: %d, cookie %q", resp.StatusCode, session)
	}

	b := startBrowser(t, "opcert")
	b.do("open the login page", chromedp.Navigate(a.url+"/login"))
	b.eventually("the login page", `location.origin + location.pathname`, is(a.url+"/login"))
	b.eventually("hand the session to the browser", fmt.Sprintf(`(document.cookie = "__Host-tether_session=%s; path=/; secure; samesite=strict", String(document.cookie.includes("__Host-tether_session=%[1]s")))`, session), is("true"))
	b.do("open the agents", chromedp.Navigate(a.url+"/ui/agents"))
	b.eventually("bob's session shows acme's agent", jsAgentIDs, is("acme/"+ag.id))
	b.eventually("bob's scope", jsScope, is("admin of acme"))
	b.eventually("the live refresh runs", `document.getElementById('live-status').textContent`, contains("updated"))

	a.admin(t, "operator", "certificate", "revoke", certs[0].Serial)
	start := time.Now()
	b.eventually("the live session ends", `location.pathname`, is("/login"))
	t.Logf("the browser session ended %v after the revocation", time.Since(start).Round(time.Millisecond))
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("the browser session ended %v after the revocation; want within seconds", d)
	}
	if st, code := a.call(t, c, "GET", "/api/v1/whoami", nil, nil); st != http.StatusUnauthorized {
		t.Errorf("the revoked certificate on its open connection: %d %s; want 401", st, code)
	}
	_, errOut, err := a.ctl(t, []string{"TETHER_ADMIN_TOKEN=", "TETHER_ADMIN_CERT=" + filepath.Join(dir, "operator.crt"), "TETHER_ADMIN_KEY=" + filepath.Join(dir, "operator.key")}, "whoami")
	if err == nil || !strings.Contains(errOut, "revoked") {
		t.Errorf("tetherctl with the revoked certificate: %v, %q; want unauthenticated, revoked", err, errOut)
	}
	var listed struct {
		Certificates []struct {
			Serial    string
			RevokedAt *time.Time `json:"revoked_at"`
		}
	}
	a.ctlJSON(t, &listed, "operator", "certificate", "list")
	if len(listed.Certificates) != 1 || listed.Certificates[0].Serial != certs[0].Serial || listed.Certificates[0].RevokedAt == nil {
		t.Errorf("tetherctl operator certificate list: %+v; want bob's certificate, revoked", listed)
	}
}
