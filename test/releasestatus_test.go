package test

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

// writeAgentUpdates writes agents' update states into the store of the
// relay's data directory, as relays write them when agents take updates:
// n agents of tenant, from agent number first on, in state for version,
// agent i's state changed i seconds before at.
func writeAgentUpdates(t *testing.T, dataDir, tenant, version, state string, first, n int, at time.Time) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dataDir, "tether.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := first; i < first+n; i++ {
		if _, err := tx.Exec(`INSERT INTO agent_updates (agent, version, tenant, rollout, state, from_version, updated_at) VALUES ($1, $2, $3, 1, $4, '1.0.0', $5)`,
			fmt.Sprintf("ag%04d", i), version, tenant, state, at.Add(-time.Duration(i)*time.Second).Unix()); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// statusPage is what release status printed: the counts row (its cells),
// the agents listed and, on stderr, the command of the next page.
type statusPage struct {
	counts []string
	agents []string
	next   []string
}

func parseStatus(t *testing.T, prog, out, errOut string) statusPage {
	t.Helper()
	var p statusPage
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		f := strings.Fields(l)
		switch {
		case len(f) > 0 && f[0] == "VERSION" && i+1 < len(lines) && len(f) > 2 && f[2] == "OFFERED":
			p.counts = strings.Fields(lines[i+1])
		case len(f) > 0 && strings.HasPrefix(f[0], "ag0"):
			p.agents = append(p.agents, f[0])
		}
	}
	if _, cmd, ok := strings.Cut(errOut, "the next page: "+prog+" "); ok {
		p.next = strings.Fields(cmd)
	}
	return p
}

// release status, in both binaries, shows the counts by state of the
// version and tenant asked for and a page of the agents' update states,
// newest first; after a page with more to follow it prints on stderr the
// command of the next page, and following them lists every agent once.
// -o json carries the counts and next_cursor; a limit out of bounds or an
// unknown state is refused saying so.
func TestReleaseStatusPages(t *testing.T) {
	a := startAdminRelay(t)
	a.addTenant(t, "acme")
	at := time.Now().Add(-time.Hour)
	writeAgentUpdates(t, a.dataDir, "acme", "1.2.3", "succeeded", 0, 200, at)
	writeAgentUpdates(t, a.dataDir, "acme", "1.2.3", "failed", 200, 25, at)
	writeAgentUpdates(t, a.dataDir, "acme", "1.2.3", "offered", 225, 5, at)
	writeAgentUpdates(t, a.dataDir, "acme", "1.2.2", "succeeded", 0, 10, at.Add(-time.Hour))

	ctl := func(args ...string) (string, string) {
		t.Helper()
		out, errOut, err := a.ctl(t, nil, args...)
		if err != nil {
			t.Fatalf("tetherctl %s: %v\n%s", strings.Join(args, " "), err, errOut)
		}
		return out, errOut
	}
	relay := func(args ...string) (string, string) {
		t.Helper()
		out, errOut, err := runCmdEnv(t, nil, bins.relay, append(args, "--data-dir", a.dataDir)...)
		if err != nil {
			t.Fatalf("tether-relay %s: %v\n%s", strings.Join(args, " "), err, errOut)
		}
		return out, errOut
	}
	wantCounts := strings.Fields("1.2.3 all 5 0 0 0 200 0 25 0 230")
	for prog, run := range map[string]func(...string) (string, string){"tetherctl": ctl, "tether-relay": relay} {
		args := []string{"release", "status", "--version", "1.2.3", "--limit", "100"}
		seen := map[string]bool{}
		for page := 1; ; page++ {
			out, errOut := run(args...)
			p := parseStatus(t, prog, out, errOut)
			if strings.Join(p.counts, " ") != strings.Join(wantCounts, " ") {
				t.Errorf("%s page %d: counts %v, want %v\n%s", prog, page, p.counts, wantCounts, out)
			}
			if page == 1 && (len(p.agents) == 0 || p.agents[0] != "ag0000" || !strings.Contains(errOut, "the 100 most recent of 230 agents' update states are shown")) {
				t.Errorf("%s: the first page does not start with the newest or say how many there are:\n%s\n%s", prog, out, errOut)
			}
			for _, ag := range p.agents {
				if seen[ag] {
					t.Errorf("%s page %d lists %s again", prog, page, ag)
				}
				seen[ag] = true
			}
			if p.next == nil {
				if page != 3 || len(seen) != 230 {
					t.Errorf("%s: %d pages listed %d agents, want 3 and 230", prog, page, len(seen))
				}
				break
			}
			if page > 3 || len(p.agents) != 100 {
				t.Fatalf("%s page %d: %d agents, and a next page: %v", prog, page, len(p.agents), p.next)
			}
			args = p.next
		}
	}

	var st struct {
		Agents     []struct{ State string } `json:"agents"`
		Counts     map[string]int           `json:"counts"`
		NextCursor string                   `json:"next_cursor"`
	}
	a.ctlJSON(t, &st, "release", "status", "--version", "1.2.3", "--state", "failed", "--limit", "10")
	if len(st.Agents) != 10 || st.Agents[0].State != "failed" || st.NextCursor == "" || st.Counts["failed"] != 25 || st.Counts["succeeded"] != 200 {
		t.Errorf("release status -o json of failed agents: %+v", st)
	}
	out, _ := relay("release", "status", "--tenant", "acme", "-o", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Agents) != 200 || st.Counts["succeeded"] != 210 || st.NextCursor == "" {
		t.Errorf("tether-relay release status -o json: %v, %d agents, counts %v, next %q", err, len(st.Agents), st.Counts, st.NextCursor)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"release", "status", "--limit", "1001"}, "limit"},
		{[]string{"release", "status", "--limit", "-1"}, "limit"},
		{[]string{"release", "status", "--state", "updated"}, "want one of offered"},
		{[]string{"release", "status", "--cursor", "bogus!"}, "cursor"},
	} {
		_, errOut, err := a.ctl(t, nil, tc.args...)
		if err == nil || !strings.Contains(errOut, "(bad_request, HTTP 400)") || !strings.Contains(errOut, tc.want) {
			t.Errorf("tetherctl %s: %v %q; want bad_request about %s", strings.Join(tc.args, " "), err, errOut, tc.want)
		}
		_, errOut, err = runCmdEnv(t, nil, bins.relay, append(tc.args, "--data-dir", a.dataDir)...)
		if err == nil || !strings.Contains(errOut, tc.want) {
			t.Errorf("tether-relay %s: %v %q; want an error about %s", strings.Join(tc.args, " "), err, errOut, tc.want)
		}
	}
}
