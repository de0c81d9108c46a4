package console

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// updatesAt is when the newest update state addUpdates writes changed.
var updatesAt = time.Now().Add(-time.Hour).Truncate(time.Second)

// addUpdates writes the update states of n agents of acme to version, the
// newest first in the order of the agents' numbers, from first on: agent
// i's state changed i seconds before updatesAt.
func addUpdates(t *testing.T, d *dashRelay, version string, first, n int, state string) {
	t.Helper()
	at := updatesAt
	for i := range n {
		u := store.AgentUpdate{Agent: fmt.Sprintf("ag%04d", first+i), Tenant: "acme", Version: version, State: state, UpdatedAt: at.Add(-time.Duration(first+i) * time.Second)}
		if err := d.dir.Store.SetAgentUpdate(context.Background(), u); err != nil {
			t.Fatal(err)
		}
	}
}

// rolloutsPage is the answer of GET /api/v1/rollouts.
type rolloutsPage struct {
	Rollouts []json.RawMessage `json:"rollouts"`
	Agents   []struct {
		Agent   string `json:"agent"`
		Version string `json:"version"`
		State   string `json:"state"`
	} `json:"agents"`
	Counts     map[string]int `json:"counts"`
	NextCursor *string        `json:"next_cursor"`
}

// GET /api/v1/rollouts answers a page of the agents' update states (200
// unless limit says otherwise, at most 1000), with the rollouts, the
// counts by state and, when more follow, next_cursor; following it lists
// every agent once. A bad limit, state or cursor is a 400 saying what is
// wanted.
func TestRolloutsAPIPages(t *testing.T) {
	d := startDashRelay(t)
	addUpdates(t, d, "1.2.0", 0, 250, "succeeded")
	addUpdates(t, d, "1.2.0", 250, 7, "failed")
	addUpdates(t, d, "1.1.0", 0, 5, "rolled_back")
	c := d.client(t)
	bearer := map[string]string{"Authorization": "Bearer " + d.tok}
	get := func(query string) (int, rolloutsPage, string) {
		t.Helper()
		res := d.do(t, c, http.MethodGet, "/api/v1/rollouts"+query, nil, bearer)
		var p rolloutsPage
		if res.status == http.StatusOK {
			if err := json.Unmarshal([]byte(res.body), &p); err != nil {
				t.Fatalf("%s: %v\n%s", query, err, res.body)
			}
			if p.Rollouts == nil || p.Agents == nil || p.Counts == nil {
				t.Fatalf("%s: an answer without rollouts, agents or counts:\n%s", query, res.body)
			}
		}
		return res.status, p, res.body
	}

	status, p, body := get("")
	if status != http.StatusOK || len(p.Agents) != 200 || p.NextCursor == nil {
		t.Fatalf("the first page: %d, %d agents, next cursor %v, want 200 agents and a cursor:\n%.500s", status, len(p.Agents), p.NextCursor, body)
	}
	// Ties (ag0000 to ag0004 of both versions) are broken by version.
	if p.Agents[0].Agent != "ag0000" || p.Agents[0].Version != "1.2.0" || p.Agents[1].Version != "1.1.0" || p.Agents[199].Agent != "ag0194" {
		t.Errorf("the first page is not the newest first: %+v … %+v", p.Agents[0], p.Agents[199])
	}
	if p.Counts["succeeded"] != 250 || p.Counts["failed"] != 7 || p.Counts["rolled_back"] != 5 || p.Counts["offered"] != 0 || len(p.Counts) != 8 {
		t.Errorf("counts of every version: %v", p.Counts)
	}

	// Following the cursors of 1.2.0 lists its 257 agents once.
	seen := map[string]bool{}
	q := url.Values{"version": {"1.2.0"}, "limit": {"100"}}
	for pages := 1; ; pages++ {
		status, p, body := get("?" + q.Encode())
		if status != http.StatusOK {
			t.Fatalf("page %d: %d\n%s", pages, status, body)
		}
		if p.Counts["succeeded"] != 250 || p.Counts["failed"] != 7 || p.Counts["rolled_back"] != 0 {
			t.Errorf("page %d: counts of 1.2.0 %v", pages, p.Counts)
		}
		for _, a := range p.Agents {
			if seen[a.Agent] || a.Version != "1.2.0" {
				t.Errorf("page %d lists %+v again or of another version", pages, a)
			}
			seen[a.Agent] = true
		}
		if p.NextCursor == nil {
			if pages != 3 || len(seen) != 257 {
				t.Errorf("%d pages listed %d agents, want 3 pages and 257", pages, len(seen))
			}
			break
		}
		q.Set("cursor", *p.NextCursor)
	}
	if status, p, _ := get("?version=1.2.0&state=failed&limit=1000"); status != http.StatusOK || len(p.Agents) != 7 || p.NextCursor != nil || p.Counts["succeeded"] != 250 {
		t.Errorf("failed agents of 1.2.0: %d, %d agents, next %v, counts %v; want 7, no cursor, every state counted", status, len(p.Agents), p.NextCursor, p.Counts)
	}

	for query, want := range map[string]string{
		"?limit=0":            "limit",
		"?limit=1001":         "limit",
		"?limit=-1":           "limit",
		"?limit=all":          "limit",
		"?state=updated":      "state",
		"?version=latest":     "version",
		"?tenant=..%2Fx":      "tenant",
		"?cursor=not-a-page!": "cursor",
	} {
		status, _, body := get(query)
		var e struct{ Error APIError }
		json.Unmarshal([]byte(body), &e)
		if status != http.StatusBadRequest || e.Error.Code != CodeBadRequest || !strings.Contains(e.Error.Message, want) {
			t.Errorf("%s: %d %s; want 400 bad_request about %s", query, status, body, want)
		}
	}
}

// The releases page shows the counts by state and the first page of the
// agents' updates of its filters (kept in its form), with the command that
// lists the next page when there is one.
func TestReleasesPageCountsAndFirstPage(t *testing.T) {
	d := startDashRelay(t)
	addUpdates(t, d, "1.2.0", 0, dashListLimit+30, "succeeded")
	addUpdates(t, d, "1.1.0", 0, 5, "failed")
	c := d.client(t)
	d.login(t, c)
	rows := regexp.MustCompile(`<a href="/ui/agents/ag\d+">`)
	count := func(body, state string) string {
		m := regexp.MustCompile(`data-state="` + state + `"><span class="n">([^<]*)</span>`).FindStringSubmatch(body)
		if m == nil {
			return "none"
		}
		return m[1]
	}
	res := d.do(t, c, http.MethodGet, "/ui/releases?live=1", nil, nil)
	if n := len(rows.FindAllString(res.body, -1)); res.status != http.StatusOK || n != dashListLimit {
		t.Fatalf("releases page: %d, %d agents' rows, want %d", res.status, n, dashListLimit)
	}
	if count(res.body, "succeeded") != "230" || count(res.body, "failed") != "5" || count(res.body, "offered") != "0" || count(res.body, "") != "235" {
		t.Errorf("counts of every version: succeeded %s, failed %s, offered %s, in all %s", count(res.body, "succeeded"), count(res.body, "failed"), count(res.body, "offered"), count(res.body, ""))
	}
	more := regexp.MustCompile(`id="updates-more">The 200 most recent of 235 are shown; the next ones: <code>tetherctl release status --limit 200 --cursor [A-Za-z0-9_-]+</code>`)
	if !more.MatchString(res.body) {
		t.Errorf("no note of the agents not shown:\n%s", res.body)
	}
	res = d.do(t, c, http.MethodGet, "/ui/releases?version=1.1.0", nil, nil)
	if n := len(rows.FindAllString(res.body, -1)); res.status != http.StatusOK || n != 5 || strings.Contains(res.body, `id="updates-more"`) || count(res.body, "failed") != "5" || count(res.body, "succeeded") != "0" {
		t.Errorf("releases page of 1.1.0: %d, %d agents' rows, a note of more %v, failed %s; want its 5 and no note", res.status, n, strings.Contains(res.body, `id="updates-more"`), count(res.body, "failed"))
	}
	if !strings.Contains(res.body, `<option value="1.1.0" selected>`) {
		t.Errorf("the filter form does not keep the version shown")
	}
	if res := d.do(t, c, http.MethodGet, "/ui/releases?state=updated", nil, nil); res.status != http.StatusBadRequest {
		t.Errorf("releases page of an unknown state: %d, want 400", res.status)
	}
}

// DELETE /api/v1/releases/{version} removes a version's releases: a 409
// conflict naming the rollout while the active rollout offers it, a 404
// for a version with no release, a 400 for a bad force; once superseded,
// a 200 with what was removed.
func TestRemoveReleaseAPI(t *testing.T) {
	ctx := context.Background()
	d := startDashRelay(t)
	for i, v := range []string{"1.0.0", "1.1.0"} {
		bin := fmt.Sprintf("binary %d", i)
		sum := sha256.Sum256([]byte(bin))
		err := d.dir.Store.AddRelease(ctx, store.Release{Version: v, OS: "linux", Arch: "amd64", Channel: "stable", SHA256: hex.EncodeToString(sum[:]), Size: int64(len(bin)),
			ExpiresAt: time.Now().Add(time.Hour), PublishedAt: time.Now(), BinarySignature: []byte("s"), Manifest: []byte("m"), ManifestSignature: []byte("s")}, strings.NewReader(bin))
		if err != nil {
			t.Fatal(err)
		}
	}
	id, err := d.dir.Store.AddRollout(ctx, store.Rollout{Version: "1.0.0", Percent: 100, CreatedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	c := d.client(t)
	bearer := map[string]string{"Authorization": "Bearer " + d.tok}
	for _, tc := range []struct {
		path   string
		status int
		want   string
	}{
		{"/api/v1/releases/1.0.0?force=true", http.StatusConflict, fmt.Sprintf(`"code": "conflict",
    "message": "release 1.0.0: rollout %d offers it`, id)},
		{"/api/v1/releases/2.0.0", http.StatusNotFound, `"code": "not_found"`},
		{"/api/v1/releases/1.0.0?force=maybe", http.StatusBadRequest, `force=\"maybe\"`},
		{"/api/v1/releases/v1", http.StatusBadRequest, "not a semantic version"},
	} {
		res := d.do(t, c, http.MethodDelete, tc.path, nil, bearer)
		if res.status != tc.status || !strings.Contains(res.body, tc.want) {
			t.Errorf("DELETE %s: %d %s; want %d with %s", tc.path, res.status, res.body, tc.status, tc.want)
		}
	}
	if _, err := d.dir.Store.AddRollout(ctx, store.Rollout{Version: "1.1.0", Percent: 100, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	res := d.do(t, c, http.MethodDelete, "/api/v1/releases/1.0.0", nil, bearer)
	var rm struct {
		Version      string            `json:"version"`
		Releases     []json.RawMessage `json:"releases"`
		BlobsRemoved int               `json:"blobs_removed"`
		BytesFreed   int64             `json:"bytes_freed"`
	}
	if res.status != http.StatusOK || json.Unmarshal([]byte(res.body), &rm) != nil || rm.Version != "1.0.0" || len(rm.Releases) != 1 || rm.BlobsRemoved != 1 || rm.BytesFreed != 8 {
		t.Fatalf("removal: %d %s", res.status, res.body)
	}
	if rs, err := d.dir.Store.Releases(ctx, ""); err != nil || len(rs) != 1 || rs[0].Version != "1.1.0" {
		t.Fatalf("releases left: %v, %v; want 1.1.0", rs, err)
	}
}
