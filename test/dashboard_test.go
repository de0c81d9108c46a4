package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tetherhq/tether/installer"
	"github.com/tetherhq/tether/protocol"
)

// The dashboard in a real headless Chromium (Debian's chromium, installed by
// scripts/deps.sh), driven with chromedp: log in through the login page,
// see the real agents of a running relay in two tenants, with real traffic
// (a stream held open moving bytes, stream opens and refusals, dials to a
// service that refuses) drawn in the charts of the overview, a tenant's
// and an agent's page (every chart must have data); the relay's health
// panel; an agent whose service fails shown as "service failing"; the
// pages of join tokens, backends, audit search (paged) and releases; the
// "add a connector" flow, whose install command, run as shown (without
// sudo and the service manager), enrols an agent; every page at 760 px
// without a sideways scroll; filter by tenant, open an agent's page,
// revoke an agent with the relay CLI and watch it leave the live table
// without a reload. Screenshots are saved under $TETHER_ARTIFACTS
// (default: the test's temporary directory).
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

	// The relay serves the install script and the agent binary, as a
	// release directory would hold them, for the connector flow.
	dl := t.TempDir()
	for src, name := range map[string]string{bins.agent: "tether-agent-linux-" + runtime.GOARCH, "../scripts/install.sh": "install.sh"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dl, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r := startRelay(t, relayOpts{extra: []string{"--admin-listen", adminAddr,
		"--download-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--download-dir", dl}})
	r.addTenant(t, "acme")
	r.addTenant(t, "globex")
	r.admin(t, "tenant", "limits", "acme", "--max-streams", "5")
	echoAddr := tcpService(t, echo)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close() // dials to it are refused
	acme1 := startAgent(t, r, "acme", agentOpts{services: map[string]string{"echo": echoAddr}})
	acme2 := startAgent(t, r, "acme", agentOpts{transport: "tcp", services: map[string]string{"echo": echoAddr}})
	globex := startAgent(t, r, "globex", agentOpts{services: map[string]string{"dead": deadAddr}, extra: "report_interval: 500ms\n"})
	token := r.admin(t, "operator", "token", "create", "--name", "alice")
	base := "https://" + adminAddr

	// Traffic: a stream held open that moves bytes every 100 ms until the
	// test ends, stream opens and refusals, and a dial to a service that
	// refuses it (which makes globex's service fail, not its agent).
	d := r.backend(t, "billing", "acme", "globex")
	long := waitDial(t, d, "echo.acme.tether:7", 30*time.Second)
	trafficCtx, stopTraffic := context.WithCancel(context.Background())
	var traffic sync.WaitGroup
	traffic.Go(func() {
		buf := make([]byte, 16<<10)
		for trafficCtx.Err() == nil {
			if _, err := long.Write(buf); err != nil {
				return
			}
			if _, err := io.ReadFull(long, buf); err != nil {
				return
			}
			select {
			case <-trafficCtx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	defer func() {
		stopTraffic()
		long.Close()
		traffic.Wait()
	}()
	for i := range 30 {
		if _, err := fetch(d, fmt.Sprintf("nosuch%d.acme.tether:80", i)); protocol.CodeOf(err) != protocol.CodeUnknownService {
			t.Fatalf("unknown service: %v", err)
		}
	}
	if _, err := fetch(d, "dead.globex.tether:80"); protocol.CodeOf(err) != protocol.CodeTargetUnreachable {
		t.Fatalf("dead service: %v, want target_unreachable", err)
	}

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
	// Every chart of the page, by name, with its count of values and
	// whether it drew any: "name:points:drawn …". A chart without data
	// fails the test.
	const chartsJS = `Array.from(document.querySelectorAll('figure.chart')).map(f => f.dataset.chart + ':' + f.dataset.points + ':' + (f.querySelector('svg polyline, svg rect.bar, svg circle') ? 'drawn' : 'blank')).join(' ')`
	charts := func(page string, names ...string) {
		t.Helper()
		eventually("every chart of the "+page+" has data", chartsJS, func(s string) bool {
			got := map[string]bool{}
			for f := range strings.FieldsSeq(s) {
				parts := strings.Split(f, ":")
				if len(parts) == 3 && parts[1] != "0" && parts[2] == "drawn" {
					got[parts[0]] = true
				}
			}
			if len(strings.Fields(s)) != len(names) {
				return false
			}
			for _, n := range names {
				if !got[n] {
					return false
				}
			}
			return true
		})
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
	// globex's agent is connected and well; only its service "dead" fails.
	eventually("globex's service failing", fmt.Sprintf(`(r => r ? r.dataset.state + ' ' + (r.dataset.failing || '') + ' ' + r.querySelector('.badge').textContent : '')(document.querySelector('#agent-rows tr[data-agent=%q]'))`, globex.id),
		func(s string) bool { return s == "degraded service service failing" })

	// The overview: counts, the relay's health, the charts.
	do("open the overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("ul.counts")))
	eventually("the overview counts", `document.querySelector('ul.counts').textContent.replace(/\s+/g, ' ').trim()`, func(s string) bool {
		return strings.Contains(s, "3 enrolled") && strings.Contains(s, "0 down") && strings.Contains(s, "1 service failing")
	})
	eventually("the tenant rows", `Array.from(document.querySelectorAll('table.tenants tr[data-tenant]')).map(r => r.dataset.tenant).join(' ')`,
		func(s string) bool { return s == "acme globex" })
	eventually("the relay's health", `document.querySelector('#relay-health') ? document.querySelector('#relay-health').textContent.replace(/\s+/g, ' ') : ''`,
		func(s string) bool {
			return strings.Contains(s, "Version") && strings.Contains(s, "3 in 2 tenants") && strings.Contains(s, "audit_commit") && strings.Contains(s, "heap in use")
		})
	charts("overview", "throughput", "opens", "streams", "rtt", "connects")
	eventually("acme's bytes in the throughput", `Array.from(document.querySelectorAll('figure[data-chart=throughput] ul.legend li')).map(l => l.textContent).join(' | ')`,
		func(s string) bool { return strings.Contains(s, "acme") && !strings.Contains(s, "acme 0 B/s") })
	eventually("refusals stacked with the opens", `Array.from(document.querySelectorAll('figure[data-chart=opens] ul.legend li')).map(l => l.textContent).join(' | ')`,
		func(s string) bool { return strings.Contains(s, "ok") && strings.Contains(s, "unknown_service") })
	shot(t, ctx, artifacts, "dashboard-overview.png")

	// A tenant's page: actions at the top, its charts (the open stream
	// under its limit), its agents, its audit records.
	do("acme's page", chromedp.Navigate(base+"/ui/tenants/acme"), chromedp.WaitVisible(chromedp.CSS("#agent-rows")))
	charts("tenant page", "throughput", "agent-throughput", "opens", "streams", "rtt", "connects")
	eventually("the limit drawn against the open streams", `document.querySelectorAll('figure[data-chart=streams] polyline.limit').length + ' ' + document.querySelector('figure[data-chart=streams] figcaption').textContent`,
		func(s string) bool { return strings.HasPrefix(s, "1 ") && strings.Contains(s, "5 streams") })
	eventually("actions before the charts", `(a => a && a.compareDocumentPosition(document.querySelector('.charts')) & Node.DOCUMENT_POSITION_FOLLOWING ? 'yes' : 'no')(document.querySelector('section.actions a[href^="/ui/connect"]'))`,
		func(s string) bool { return s == "yes" })
	shot(t, ctx, artifacts, "dashboard-tenant.png")

	// The page of the agent that carries the stream held open.
	do("filter acme", chromedp.Navigate(base+"/ui/agents?tenant=acme"), chromedp.WaitVisible(chromedp.CSS("#agent-rows")))
	eventually("acme's agents", rowsJS, rows("acme/"+acme1.id, "acme/"+acme2.id))
	carrier := eventually("the agent carrying the open stream", `(r => r ? r.dataset.agent : '')(Array.from(document.querySelectorAll('#agent-rows tr[data-agent]')).find(r => r.cells[7].textContent.trim().startsWith('1 /')))`,
		func(s string) bool { return s == acme1.id || s == acme2.id })
	do("open an agent", chromedp.Click(chromedp.CSS(fmt.Sprintf(`#agent-rows tr[data-agent=%q] a.agent-link`, carrier))))
	eventually("the agent page", `document.querySelector('h1 code') ? document.querySelector('h1 code').textContent : ''`,
		func(s string) bool { return s == carrier })
	eventually("its live session", `document.querySelector('table.sessions tbody').textContent`, func(s string) bool {
		return strings.Contains(s, "serving")
	})
	eventually("its enrolment in the audit records", `document.querySelector('table.audit').textContent`, func(s string) bool {
		return strings.Contains(s, "agent.enrol")
	})
	charts("agent page", "throughput", "rtt", "connects")
	eventually("the stream's bytes in the agent's throughput", `Array.from(document.querySelectorAll('figure[data-chart=throughput] ul.legend .v')).map(v => v.textContent).join(' ')`,
		func(s string) bool { f := strings.Fields(s); return len(f) == 4 && f[0] != "0" && f[2] != "0" })
	eventually("revoke and drain before the charts", `(a => a && a.compareDocumentPosition(document.querySelector('.charts')) & Node.DOCUMENT_POSITION_FOLLOWING ? 'yes' : 'no')(document.querySelector('section.actions form.revoke'))`,
		func(s string) bool { return s == "yes" })
	shot(t, ctx, artifacts, "dashboard-agent.png")
	do("globex's agent", chromedp.Navigate(base+"/ui/agents/"+globex.id), chromedp.WaitVisible(chromedp.CSS("#agent-state")))
	eventually("its failing service", `document.getElementById('agent-state').textContent`, func(s string) bool {
		return strings.Contains(s, "service failing") && strings.Contains(s, "dead")
	})
	shot(t, ctx, artifacts, "dashboard-service-failing.png")

	// Backends and their grants, releases and rollouts.
	do("backends", chromedp.Navigate(base+"/ui/backends"), chromedp.WaitVisible(chromedp.CSS("#backend-rows")))
	eventually("billing's grants", `document.querySelector('#backend-rows tr[data-backend=billing]').textContent.replace(/\s+/g, ' ')`,
		func(s string) bool { return strings.Contains(s, "acme") && strings.Contains(s, "globex") })
	shot(t, ctx, artifacts, "dashboard-backends.png")
	do("billing's page", chromedp.Click(chromedp.CSS(`#backend-rows a[href="/ui/backends/billing"]`)), chromedp.WaitVisible(chromedp.CSS("table.audit")))
	eventually("billing's streams in its audit records", `document.querySelector('table.audit').textContent`, func(s string) bool { return strings.Contains(s, "unknown_service") })
	do("releases", chromedp.Navigate(base+"/ui/releases"), chromedp.WaitVisible(chromedp.CSS("#release-rows")))
	eventually("no releases yet", `document.querySelector('#release-rows').textContent`, func(s string) bool { return strings.Contains(s, "No releases published") })
	shot(t, ctx, artifacts, "dashboard-releases.png")
	do("relays", chromedp.Navigate(base+"/ui/relays"), chromedp.WaitVisible(chromedp.CSS("#relay-rows")))
	eventually("this relay up in the list", `document.querySelector('#relay-rows').textContent.replace(/\s+/g, ' ')`,
		func(s string) bool { return strings.Contains(s, "(this relay)") && strings.Contains(s, " up ") })
	shot(t, ctx, artifacts, "dashboard-relays.png")

	// Audit search, paged.
	do("search the audit trail", chromedp.Navigate(base+"/ui/audit?tenant=acme&kind=stream&limit=25"), chromedp.WaitVisible(chromedp.CSS("table.audit")))
	eventually("a full first page", `document.querySelectorAll('table.audit tbody tr').length + ' ' + !!document.querySelector('nav.pager a.older')`,
		func(s string) bool { return s == "25 true" })
	pageOne := eventually("the first page's records", `document.querySelector('table.audit tbody').textContent`, func(s string) bool { return s != "" })
	shot(t, ctx, artifacts, "dashboard-audit.png")
	do("older records", chromedp.Click(chromedp.CSS("nav.pager a.older")))
	eventually("the second page", `location.search.includes('cursor=') + ' ' + document.querySelectorAll('table.audit tbody tr').length + ' ' + !!document.querySelector('nav.pager a.newest')`,
		func(s string) bool {
			return strings.HasPrefix(s, "true ") && strings.HasSuffix(s, " true") && !strings.Contains(s, " 0 ")
		})
	if pageTwo := eventually("the second page's records", `document.querySelector('table.audit tbody').textContent`, func(s string) bool { return s != "" }); pageTwo == pageOne {
		t.Error("the second audit page shows the first page's records")
	}

	// Add a connector: a join token for acme and the command that installs
	// an agent with it. The command, run as shown but without sudo and
	// the service manager, enrols an agent.
	do("add a connector", chromedp.Navigate(base+"/ui/connect?tenant=acme"), chromedp.WaitVisible(chromedp.CSS("#connect-form")))
	eventually("the relay's agent address", `document.getElementById('connect-relay').value`, func(s string) bool { return s == r.agentAddr })
	do("name a service and create the token", chromedp.SendKeys(chromedp.CSS("#connect-services"), "echo="+echoAddr), chromedp.Click(chromedp.CSS("#connect-submit")))
	joinToken := eventually("the join token", `document.getElementById('join-token') ? document.getElementById('join-token').value : ''`,
		func(s string) bool { return strings.HasPrefix(s, "tjt1_") })
	linux := eventually("the install command", `document.getElementById('install-linux').value`, func(s string) bool {
		return strings.Contains(s, "/install.sh -o install.sh") && strings.Contains(s, "sha256sum -c") && strings.Contains(s, "--service echo=")
	})
	if strings.Contains(linux, joinToken) {
		t.Error("the install command holds the join token")
	}
	shot(t, ctx, artifacts, "dashboard-connector.png")
	root, work := t.TempDir(), t.TempDir()
	cmd := strings.Replace(linux, "sudo sh install.sh", "sh install.sh", 1) + " --no-service --root " + root
	install := exec.Command("sh", "-c", cmd)
	install.Dir = work
	install.Env = append(os.Environ(), "TETHER_JOIN_TOKEN="+joinToken)
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("the connector's install command %q: %v\n%s", cmd, err, out)
	}
	if _, err := os.Stat(filepath.Join(installer.LinuxLayout(root).StateDir, "agent.key")); err != nil {
		t.Errorf("the install command enrolled no agent: %v", err)
	}
	do("join tokens", chromedp.Navigate(base+"/ui/tokens?tenant=acme"), chromedp.WaitVisible(chromedp.CSS("#token-rows")))
	eventually("the used token", `Array.from(document.querySelectorAll('#token-rows tr[data-token]')).map(r => r.dataset.state + ' ' + r.querySelector('td.num').textContent).join(', ')`,
		func(s string) bool { return strings.Contains(s, "used up 1 / 1") })
	shot(t, ctx, artifacts, "dashboard-tokens.png")

	// At 760 px every page fits without a sideways scroll (wide tables
	// scroll in their own box) and the charts still draw.
	do("a narrow window", chromedp.EmulateViewport(760, 1000))
	for _, page := range []struct{ path, shot string }{
		{"/", "dashboard-760-overview.png"}, {"/ui/tenants/acme", "dashboard-760-tenant.png"}, {"/ui/agents/" + acme1.id, ""},
		{"/ui/agents", ""}, {"/ui/tokens", ""}, {"/ui/connect", ""}, {"/ui/backends", ""}, {"/ui/audit", ""}, {"/ui/releases", ""},
		{"/ui/relays", ""},
	} {
		do("narrow "+page.path, chromedp.Navigate(base+page.path), chromedp.WaitVisible(chromedp.CSS("main h1")))
		eventually("no sideways scroll on "+page.path, `document.documentElement.scrollWidth + ' ' + document.documentElement.clientWidth`, func(s string) bool {
			var w, c int
			fmt.Sscan(s, &w, &c)
			return c > 0 && w <= c
		})
		if page.shot != "" {
			eventually("charts drawn at 760 px", `String(Array.from(document.querySelectorAll('figure.chart svg')).filter(s => s.getBoundingClientRect().width > 300).length)`,
				func(s string) bool { return s != "0" })
			shot(t, ctx, artifacts, page.shot)
		}
	}
	do("a wide window", chromedp.EmulateViewport(1440, 900))

	// Filter by tenant: the select submits the filter form. SetValue fires
	// the change event, so the page's own script submits the form; clicking
	// the submit button as well would start a second navigation that can
	// land after the next Navigate and put the globex filter back.
	do("open the agent table", chromedp.Navigate(base+"/ui/agents"), chromedp.WaitVisible(chromedp.CSS("#filter-tenant")))
	eventually("every agent in the table", rowsJS, func(s string) bool { return strings.Count(s, "/") >= len(all) })
	do("filter by tenant", chromedp.SetValue(chromedp.CSS("#filter-tenant"), "globex"))
	eventually("the filtered URL", `location.search`, func(s string) bool { return strings.Contains(s, "tenant=globex") })
	eventually("only globex's agent", rowsJS, rows("globex/"+globex.id))

	// Revoke an agent from the relay CLI while the table is open: it leaves
	// the live table without a reload (the marker set on this page's
	// window would not survive one).
	do("back to acme's agents", chromedp.Navigate(base+"/ui/agents?tenant=acme"), chromedp.WaitVisible(chromedp.CSS("#agent-rows")))
	eventually("acme's agents", rowsJS, func(s string) bool {
		return strings.Contains(s, "acme/"+acme1.id) && strings.Contains(s, "acme/"+acme2.id)
	})
	eventually("mark this page", `(window.tetherTestMarker = 'same page', window.tetherTestMarker)`, func(s string) bool { return s == "same page" })
	r.admin(t, "agent", "revoke", acme2.id, "--reason", "browser test")
	eventually("the revoked agent leaves the live table", rowsJS, func(s string) bool {
		return strings.Contains(s, "acme/"+acme1.id) && !strings.Contains(s, "acme/"+acme2.id)
	})
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
