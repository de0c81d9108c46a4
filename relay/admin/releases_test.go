package admin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// A query of agents' update states takes a limit from 1 to MaxUpdatePage
// (DefaultUpdatePage when not given), a semantic version, a tenant's name,
// one of the update states and a cursor the API gave; anything else is
// ErrInvalid, saying what is wanted.
func TestParseUpdateQuery(t *testing.T) {
	for _, tc := range []struct {
		query, err string
		limit      int
	}{
		{"", "", 0},
		{"limit=1", "", 1},
		{"limit=1000&version=1.2.3&tenant=acme&state=rolled_back", "", 1000},
		{"limit=0", "want a number from 1 to 1000", 0},
		{"limit=-5", "want a number from 1 to 1000", 0},
		{"limit=1001", "want a number from 1 to 1000", 0},
		{"limit=ten", "want a number from 1 to 1000", 0},
		{"version=v1.2.3", "not a semantic version", 0},
		{"tenant=../x", "tenant", 0},
		{"state=updated", "want one of offered, downloading, downloaded, applied, succeeded, refused, failed, rolled_back", 0},
		{"cursor=xyz", "not one this API returned", 0},
		{"cursor=" + updateCursor(store.AgentUpdateKey{UpdatedAt: time.Unix(1_800_000_000, 0), Agent: "ag1", Version: "1.2.3"}), "", 0},
	} {
		q, _ := url.ParseQuery(tc.query)
		got, err := ParseUpdateQuery(q)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("ParseUpdateQuery(%s): %v", tc.query, err)
		case tc.err != "" && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseUpdateQuery(%s): error %v; want ErrInvalid saying %q", tc.query, err, tc.err)
		case err == nil && got.Limit != tc.limit:
			t.Errorf("ParseUpdateQuery(%s): limit %d, want %d", tc.query, got.Limit, tc.limit)
		}
	}
}

// UpdateStatus lists a page of the agents' update states, newest first,
// with a cursor to the next page only when more follow: the pages list
// every state once. The counts by state are those of the version and
// tenant asked for, on every page, whatever the state asked for; every
// state is counted, 0 or not. Limits out of bounds are ErrInvalid.
func TestUpdateStatusPages(t *testing.T) {
	ctx := context.Background()
	a, err := Open(ctx, Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	t0 := time.Unix(1_800_000_000, 0).UTC()
	for _, v := range []string{"1.1.0", "1.2.0"} { // a rollout needs a release
		bin := "binary " + v
		sum := sha256.Sum256([]byte(bin))
		if err := a.store.AddRelease(ctx, store.Release{Version: v, OS: "linux", Arch: "amd64", Channel: "stable", SHA256: hex.EncodeToString(sum[:]), Size: int64(len(bin)),
			ExpiresAt: t0.Add(time.Hour), PublishedAt: t0, BinarySignature: []byte("bsig"), Manifest: []byte("{}"), ManifestSignature: []byte("msig")}, strings.NewReader(bin)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.store.AddRollout(ctx, store.Rollout{Version: "1.1.0", Percent: 10, CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.store.AddRollout(ctx, store.Rollout{Version: "1.2.0", Percent: 50, CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	var want []string // newest first
	for i := range 9 {
		version, state := "1.2.0", []string{"succeeded", "failed", "offered"}[i%3]
		if i == 4 {
			version = "1.1.0"
		}
		u := store.AgentUpdate{Agent: fmt.Sprintf("ag%d", i), Tenant: []string{"acme", "globex"}[i%2], Version: version, State: state,
			UpdatedAt: t0.Add(time.Duration(i/2) * time.Second)}
		if err := a.store.SetAgentUpdate(ctx, u); err != nil {
			t.Fatal(err)
		}
		if version == "1.2.0" {
			want = append([]string{u.Agent}, want...)
		}
	}
	follow := func(q UpdateQuery) (agents []string, pages int) {
		t.Helper()
		for {
			st, err := a.UpdateStatus(ctx, q)
			if err != nil {
				t.Fatalf("%+v: %v", q, err)
			}
			pages++
			if len(st.Agents) > q.Limit || (st.NextCursor != "" && len(st.Agents) != q.Limit) {
				t.Fatalf("%+v: a page of %d agents, next cursor %q", q, len(st.Agents), st.NextCursor)
			}
			if len(st.Rollouts) != 1 || st.Rollouts[0].Version != "1.2.0" {
				t.Errorf("%+v: rollouts %+v, want 1.2.0's", q, st.Rollouts)
			}
			wantCounts := map[string]int{"offered": 3, "downloading": 0, "downloaded": 0, "applied": 0, "succeeded": 3, "refused": 0, "failed": 2, "rolled_back": 0}
			if q.Tenant == "acme" {
				wantCounts = map[string]int{"offered": 2, "downloading": 0, "downloaded": 0, "applied": 0, "succeeded": 2, "refused": 0, "failed": 0, "rolled_back": 0}
			}
			if fmt.Sprint(st.Counts) != fmt.Sprint(wantCounts) {
				t.Errorf("%+v: counts %v, want %v", q, st.Counts, wantCounts)
			}
			for _, u := range st.Agents {
				agents = append(agents, u.Agent)
			}
			if st.NextCursor == "" {
				return agents, pages
			}
			q.Cursor = st.NextCursor
		}
	}
	// 8 states of 1.2.0: 3 pages of 3, 3 and 2; 2 pages of 4 (no third,
	// empty, page); one of 8.
	for limit, pages := range map[int]int{3: 3, 4: 2, 8: 1, 1000: 1} {
		got, n := follow(UpdateQuery{Version: "1.2.0", Limit: limit})
		if !slices.Equal(got, want) || n != pages {
			t.Errorf("limit %d: %d pages list %v, want %d pages listing %v", limit, n, got, pages, want)
		}
	}
	if got, _ := follow(UpdateQuery{Version: "1.2.0", Tenant: "acme", State: "succeeded", Limit: 1}); !slices.Equal(got, []string{"ag6", "ag0"}) {
		t.Errorf("acme's succeeded: %v, want ag6, ag0", got)
	}
	if st, err := a.UpdateStatus(ctx, UpdateQuery{}); err != nil || len(st.Agents) != 9 || len(st.Rollouts) != 2 || st.NextCursor != "" {
		t.Errorf("the default page: %d agents, %d rollouts, next %q, %v; want all 9, 2 rollouts and no next", len(st.Agents), len(st.Rollouts), st.NextCursor, err)
	}
	for _, limit := range []int{-1, MaxUpdatePage + 1} {
		if _, err := a.UpdateStatus(ctx, UpdateQuery{Limit: limit}); !errors.Is(err, ErrInvalid) {
			t.Errorf("limit %d: %v, want ErrInvalid", limit, err)
		}
	}
}
