package console

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// The agent page's "find a request id" box shows the relay's records of
// one request id, refusals that named no agent included, within the
// operator's scope: acme's operator finds acme's record and not globex's.
// A malformed id is said to be so, and the live refresh does not search.
func TestAgentPageFindsARequestID(t *testing.T) {
	r := startScopedRelay(t)
	ctx := context.Background()
	now := time.Now()
	if err := r.dir.Store.AddAudit(ctx, []store.AuditRecord{
		{At: now, Kind: "stream", Outcome: "not_allowed", Tenant: "acme", Backend: "billing", Actor: "backend:billing",
			Detail: map[string]any{"door": "connect", "request": "00aa11bb22cc33dd", "error": "acme-refusal-marker"}},
		{At: now, Kind: "stream", Outcome: "not_allowed", Tenant: "globex", Backend: "billing", Actor: "backend:billing",
			Detail: map[string]any{"door": "connect", "request": "99ff88ee77dd66cc", "error": "globex-refusal-marker"}},
		{At: now, Kind: "stream", Outcome: "ok", Tenant: "acme", Agent: "acme-agent", Backend: "billing", Actor: "backend:billing",
			Detail: map[string]any{"door": "connect", "request": "00aa11bb22cc33de", "error": "other-request-marker"}},
	}); err != nil {
		t.Fatal(err)
	}
	find := func(c *http.Client, id string, live bool) string {
		t.Helper()
		q := url.Values{"request": {id}}
		if live {
			q.Set("live", "1")
		}
		res := r.do(t, c, http.MethodGet, "/ui/agents/acme-agent?"+q.Encode(), nil, nil)
		if res.status != http.StatusOK {
			t.Fatalf("agent page ?request=%s: status %d: %s", id, res.status, res.body)
		}
		return res.body
	}

	// section is the find box's part of a page.
	section := func(body string) string {
		i := strings.Index(body, `id="find-request"`)
		if i < 0 {
			return ""
		}
		rest := body[i:]
		if j := strings.Index(rest, "</section>"); j >= 0 {
			rest = rest[:j]
		}
		return rest
	}

	vendor := r.client(t)
	r.login(t, vendor)
	if got := section(find(vendor, "", false)); !strings.Contains(got, `name="request"`) || strings.Contains(got, "<table") {
		t.Errorf("agent page without a search: find box %q, want the form and no results", got)
	}
	if got := section(find(vendor, "00aa11bb22cc33dd", false)); !strings.Contains(got, "acme-refusal-marker") || strings.Contains(got, "other-request-marker") ||
		!strings.Contains(got, `value="00aa11bb22cc33dd"`) {
		t.Errorf("vendor operator's search for acme's refusal: %s", got)
	}
	if got := section(find(vendor, "99ff88ee77dd66cc", false)); !strings.Contains(got, "globex-refusal-marker") {
		t.Errorf("vendor operator does not find globex's refusal: %s", got)
	}
	if got := section(find(vendor, "50%_off", false)); !strings.Contains(got, "letters, digits") || strings.Contains(got, "<table") {
		t.Errorf("malformed id not said to be so: %s", got)
	}
	if body := find(vendor, "00aa11bb22cc33dd", true); strings.Contains(body, "acme-refusal-marker") {
		t.Errorf("live refresh searched:\n%s", body)
	}

	scoped := r.client(t)
	r.loginWith(t, scoped, r.viewerTok)
	if got := section(find(scoped, "00aa11bb22cc33dd", false)); !strings.Contains(got, "acme-refusal-marker") {
		t.Errorf("acme's viewer does not find acme's refusal: %s", got)
	}
	if got := section(find(scoped, "99ff88ee77dd66cc", false)); strings.Contains(got, "globex-refusal-marker") || !strings.Contains(got, "No audit records.") {
		t.Errorf("acme's viewer sees globex's refusal: %s", got)
	}
}
