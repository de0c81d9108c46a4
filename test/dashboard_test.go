package test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The dashboard in a real headless Chromium (Debian's chromium, installed by
// scripts/deps.sh), driven with chromedp: log in through the login page,
// see the real agents of a running relay in two tenants, filter by tenant,
// open an agent's page, revoke an agent with the relay CLI and watch it
// leave the live table without a reload. Screenshots are saved under
// $TETHER_ARTIFACTS (default: the test's temporary directory).
func TestDashboardInBrowser(t *testing.T) {
	browser, err := exec.LookPath("chromium")
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

	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r := startRelay(t, relayOpts{extra: []string{"--admin-listen", adminAddr}})
	r.addTenant(t, "acme")
	r.addTenant(t, "globex")
	acme1 := startAgent(t, r, "acme", agentOpts{})
	acme2 := startAgent(t, r, "acme", agentOpts{transport: "tcp"})
	globex := startAgent(t, r, "globex", agentOpts{})
	token := r.admin(t, "operator", "token", "create", "--name", "alice")
	base := "https://" + adminAddr

	ctx, cancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(browser),
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
	defer cancel()
	ctx, cancelTab := chromedp.NewContext(ctx, chromedp.WithLogf(t.Logf))
	defer cancelTab()
	// The first Run starts the browser; it must not carry a timeout.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}

	// do runs steps with a generous deadline (a loaded 2-core machine).
	// A navigation the page itself still had in flight (a form submitted
	// a moment before) can abort the next one with net::ERR_ABORTED; the
	// steps are then run again, a few times at most.
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		for attempt := 1; ; attempt++ {
			c, cancel := context.WithTimeout(ctx, 60*time.Second)
			err := chromedp.Do(c, steps...)
			cancel()
			if err == nil {
				return
			}
			if attempt < 4 && strings.Contains(err.Error(), "net::ERR_ABORTED") {
				t.Logf("%s: %v; again", what, err)
				time.Sleep(500 * time.Millisecond)
				continue
			}
			shot(t, ctx, artifacts, "dashboard-failed.png")
			t.Fatalf("%s: %v", what, err)
		}
	}
	// eventually polls a JavaScript expression until it yields want.
	eventually := func(what, expr string, want func(string) bool) string {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		var got string
		var err error
		for {
			c, cancel := context.WithTimeout(ctx, 20*time.Second)
			got, err = chromedp.Run(c, chromedp.Evaluate[string](expr))
			cancel()
			if err == nil && want(got) {
				return got
			}
			if time.Now().After(deadline) {
				shot(t, ctx, artifacts, "dashboard-failed.png")
				t.Fatalf("%s: last value %q, error %v", what, got, err)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	const rowsJS = `Array.from(document.querySelectorAll('#agent-rows tr[data-agent]')).map(r => r.dataset.tenant + '/' + r.dataset.agent).sort().join(' ')`
	rows := func(ids ...string) func(string) bool {
		slices.Sort(ids)
		want := strings.Join(ids, " ")
		return func(got string) bool { return got == want }
	}

	// Without a session the dashboard sends the browser to the login page.
	do("open the dashboard", chromedp.Navigate(base+"/ui/agents"), chromedp.WaitVisible(chromedp.CSS("#token")))
	eventually("the login page", `location.pathname + location.search`, func(s string) bool {
		return s == "/login?next=%2Fui%2Fagents"
	})
	do("log in", chromedp.SendKeys(chromedp.CSS("#token"), token), chromedp.Click(chromedp.CSS("#login-submit")))
	eventually("the agent table after login", `location.pathname`, func(s string) bool { return s == "/ui/agents" })
	all := []string{"acme/" + acme1.id, "acme/" + acme2.id, "globex/" + globex.id}
	eventually("every agent in the table", rowsJS, rows(all...))
	eventually("the agents are up", `Array.from(document.querySelectorAll('#agent-rows tr[data-agent]')).map(r => r.dataset.state).join(' ')`,
		func(s string) bool { return s != "" && !strings.Contains(s, "down") })
	eventually("the operator is named", `document.querySelector('.who').textContent`, func(s string) bool { return s == "alice" })
	eventually("transport column", `document.querySelector('#agent-rows').textContent`, func(s string) bool {
		return strings.Contains(s, "tcp") && strings.Contains(s, "quic")
	})

	// The overview counts by state.
	do("open the overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("ul.counts")))
	eventually("the overview counts", `document.querySelector('ul.counts').textContent.replace(/\s+/g, ' ').trim()`, func(s string) bool {
		return strings.Contains(s, "3 enrolled") && strings.Contains(s, "0 down")
	})
	eventually("the tenant rows", `Array.from(document.querySelectorAll('table.tenants tr[data-tenant]')).map(r => r.dataset.tenant).join(' ')`,
		func(s string) bool { return s == "acme globex" })
	shot(t, ctx, artifacts, "dashboard-overview.png")

	// Filter by tenant: the select submits the filter form. SetValue fires
	// the change event, so the page's own script submits the form; clicking
	// the submit button as well would start a second navigation that can
	// land after the next Navigate and put the globex filter back.
	do("open the agent table", chromedp.Navigate(base+"/ui/agents"), chromedp.WaitVisible(chromedp.CSS("#filter-tenant")))
	eventually("every agent in the table", rowsJS, rows(all...))
	do("filter by tenant", chromedp.SetValue(chromedp.CSS("#filter-tenant"), "globex"))
	eventually("the filtered URL", `location.search`, func(s string) bool { return strings.Contains(s, "tenant=globex") })
	eventually("only globex's agent", rowsJS, rows("globex/"+globex.id))

	// An agent's page.
	do("filter acme", chromedp.Navigate(base+"/ui/agents?tenant=acme"), chromedp.WaitVisible(chromedp.CSS("#agent-rows")))
	eventually("acme's agents", rowsJS, rows("acme/"+acme1.id, "acme/"+acme2.id))
	do("open an agent", chromedp.Click(chromedp.CSS(fmt.Sprintf(`#agent-rows tr[data-agent=%q] a.agent-link`, acme1.id))))
	eventually("the agent page", `document.querySelector('h1 code') ? document.querySelector('h1 code').textContent : ''`,
		func(s string) bool { return s == acme1.id })
	eventually("its live session", `document.querySelector('table.sessions tbody').textContent`, func(s string) bool {
		return strings.Contains(s, "serving")
	})
	eventually("its enrolment in the audit records", `document.querySelector('table.audit').textContent`, func(s string) bool {
		return strings.Contains(s, "agent.enrol")
	})
	shot(t, ctx, artifacts, "dashboard-agent.png")

	// Revoke an agent from the relay CLI while the table is open: it leaves
	// the live table without a reload (the marker set on this page's
	// window would not survive one).
	do("back to acme's agents", chromedp.Navigate(base+"/ui/agents?tenant=acme"), chromedp.WaitVisible(chromedp.CSS("#agent-rows")))
	eventually("acme's agents", rowsJS, rows("acme/"+acme1.id, "acme/"+acme2.id))
	eventually("mark this page", `(window.tetherTestMarker = 'same page', window.tetherTestMarker)`, func(s string) bool { return s == "same page" })
	r.admin(t, "agent", "revoke", acme2.id, "--reason", "browser test")
	eventually("the revoked agent leaves the live table", rowsJS, rows("acme/"+acme1.id))
	eventually("no reload", `String(window.tetherTestMarker)`, func(s string) bool { return s == "same page" })
	eventually("the live status", `document.getElementById('live-status').textContent`, func(s string) bool {
		return strings.Contains(s, "updated")
	})
	path := shot(t, ctx, artifacts, "dashboard-agents.png")
	t.Logf("dashboard screenshots in %s (last: %s)", artifacts, path)

	// The revoked agent is still listed under its state.
	do("revoked agents", chromedp.Navigate(base+"/ui/agents?state=revoked"), chromedp.WaitVisible(chromedp.CSS("#agent-rows")))
	eventually("the revoked agent", rowsJS, rows("acme/"+acme2.id))

	// Logging out ends the session.
	do("log out", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("form.logout button")), chromedp.Click(chromedp.CSS("form.logout button")))
	eventually("the login page after logout", `location.pathname`, func(s string) bool { return s == "/login" })
	do("open the dashboard again", chromedp.Navigate(base+"/ui/agents"), chromedp.WaitVisible(chromedp.CSS("#token")))

	cancelTab()
	cancel()
}

// shot saves a full-page screenshot as name under dir and returns its path;
// a failure to take one is only logged.
func shot(t *testing.T, ctx context.Context, dir, name string) string {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(c, chromedp.FullScreenshot(100))
	if err == nil && len(png) == 0 {
		err = errors.New("empty screenshot")
	}
	if err != nil {
		t.Logf("screenshot %s: %v", name, err)
		return ""
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Logf("screenshot %s: %v", name, err)
		return ""
	}
	t.Logf("screenshot: %s", path)
	return path
}
