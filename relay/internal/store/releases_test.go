package store

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/release"
)

// binary returns n bytes of test content and their SHA-256 in hex.
func binary(n int, seed byte) ([]byte, string) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

func TestReleasesAndRollouts(t *testing.T) { eachEngine(t, testReleasesAndRollouts) }

func testReleasesAndRollouts(t *testing.T, e engine) {
	s, _ := e.open(t)
	// Over two blob parts, so that reading crosses rows.
	bin, sum := binary(2*blobPart+12345, 1)
	r := Release{Version: "1.2.0", OS: "linux", Arch: "amd64", Channel: "stable", SHA256: sum, Size: int64(len(bin)), ExpiresAt: t0, PublishedAt: t0,
		BinarySignature: []byte("bsig"), Manifest: []byte("{}"), ManifestSignature: []byte("msig")}
	if err := s.AddRelease(ctx, r, bytes.NewReader(bin)); err != nil {
		t.Fatal(err)
	}
	if err := s.AddRelease(ctx, r, bytes.NewReader(bin)); !errors.Is(err, ErrExists) {
		t.Fatalf("second publish: got %v, want ErrExists", err)
	}
	if got, err := s.Releases(ctx, "1.2.0"); err != nil || len(got) != 1 || got[0].SHA256 != sum || !got[0].ExpiresAt.Equal(t0) || got[0].Manifest != nil {
		t.Fatalf("releases: got %+v, %v", got, err)
	}
	got, err := s.Release(ctx, "1.2.0", "linux", "amd64", "stable")
	if err != nil || string(got.BinarySignature) != "bsig" || string(got.Manifest) != "{}" || string(got.ManifestSignature) != "msig" {
		t.Fatalf("release: got %+v, %v", got, err)
	}
	rd, err := s.OpenBlob(ctx, sum)
	if err != nil {
		t.Fatal(err)
	}
	if back, err := io.ReadAll(rd); err != nil || !bytes.Equal(back, bin) {
		t.Fatalf("blob read back: %d bytes, %v; want %d bytes equal", len(back), err, len(bin))
	}
	// The same binary on another channel is stored once.
	r.Channel = "beta"
	if err := s.AddRelease(ctx, r, bytes.NewReader(bin)); err != nil {
		t.Fatal(err)
	}
	var parts int
	s.db.QueryRow(`SELECT count(*) FROM blobs`).Scan(&parts)
	if parts != 3 {
		t.Fatalf("blob rows after two releases of one binary: %d, want 3", parts)
	}
	// Content that does not match its hash or size is refused, and
	// nothing of the release stays.
	other, _ := binary(100, 2)
	bad := Release{Version: "1.3.0", OS: "linux", Arch: "amd64", Channel: "stable", SHA256: hex.EncodeToString(make([]byte, 32)), Size: 100, PublishedAt: t0}
	if err := s.AddRelease(ctx, bad, bytes.NewReader(other)); err == nil {
		t.Fatal("a binary that does not hash to its SHA-256 was stored")
	}
	if rs, _ := s.Releases(ctx, "1.3.0"); len(rs) != 0 {
		t.Fatalf("a refused release left rows: %+v", rs)
	}
	if _, err := s.OpenBlob(ctx, bad.SHA256); !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenBlob of a refused binary: %v, want ErrNotFound", err)
	}
	if _, err := s.ActiveRollout(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("active rollout before any: got %v, want ErrNotFound", err)
	}
	id1, err := s.AddRollout(ctx, Rollout{Version: "1.2.0", Percent: 10, CreatedAt: t0})
	if err != nil {
		t.Fatal(err)
	}
	id2, err := s.AddRollout(ctx, Rollout{Version: "1.2.0", Tenants: []string{"a", "b"}, HaltAt: 0.5, Batch: 2, CreatedAt: t0})
	if err != nil {
		t.Fatal(err)
	}
	act, err := s.ActiveRollout(ctx)
	if err != nil || act.ID != id2 || len(act.Tenants) != 2 || act.HaltAt != 0.5 || act.Batch != 2 {
		t.Fatalf("active: got %+v, %v, want rollout %d", act, err, id2)
	}
	all, _ := s.Rollouts(ctx, false)
	if len(all) != 2 || all[1].ID != id1 || all[1].State != RolloutSuperseded {
		t.Fatalf("rollouts: got %+v", all)
	}
	if ok, err := s.HaltRollout(ctx, id2, "2 of 3 failed", t0); !ok || err != nil {
		t.Fatalf("halt: %v %v", ok, err)
	}
	if ok, _ := s.HaltRollout(ctx, id2, "again", t0); ok {
		t.Fatal("halted a halted rollout again")
	}
	u := AgentUpdate{Agent: "ag1", Version: "1.2.0", Tenant: "a", Rollout: id2, State: "offered", From: "1.0.0", UpdatedAt: t0}
	if err := s.SetAgentUpdate(ctx, u); err != nil {
		t.Fatal(err)
	}
	u.State, u.Reason, u.From, u.Rollout = "rolled_back", "unhealthy", "", 0
	if err := s.SetAgentUpdate(ctx, u); err != nil {
		t.Fatal(err)
	}
	upd, err := s.AgentUpdate(ctx, "ag1", "1.2.0")
	if err != nil || upd.State != "rolled_back" || upd.From != "1.0.0" || upd.Rollout != id2 || upd.Reason != "unhealthy" {
		t.Fatalf("agent update: got %+v, %v", upd, err)
	}
	if _, err := s.AgentUpdate(ctx, "ag2", "1.2.0"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown agent update: got %v", err)
	}
}

// TestReleaseDirsImported opens a database of schema version 7, whose
// release row names the directory its files were copied to: the files move
// into the store and the row no longer names a path.
func TestReleaseDirsImported(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tether.db")
	bin, sum := binary(5000, 3)
	relDir := filepath.Join(dir, "releases", "1.0.0", "linux-amd64-stable")
	os.MkdirAll(relDir, 0o700)
	for name, data := range map[string][]byte{release.BinaryFile: bin, release.BinarySignatureFile: []byte("bs"), release.ManifestFile: []byte("m"), release.ManifestSignatureFile: []byte("ms")} {
		if err := os.WriteFile(filepath.Join(relDir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeVersion(t, path, 7,
		fmt.Sprintf(`INSERT INTO releases (version, os, arch, channel, sha256, size, expires_at, dir, published_at) VALUES ('1.0.0', 'linux', 'amd64', 'stable', '%s', %d, 0, '%s', 0)`, sum, len(bin), relDir),
		`INSERT INTO releases (version, os, arch, channel, sha256, size, expires_at, dir, published_at) VALUES ('0.9.0', 'linux', 'amd64', 'stable', 'ff', 1, 0, '/nonexistent', 0)`)
	s, err := OpenDSN(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Release(ctx, "1.0.0", "linux", "amd64", "stable")
	if err != nil || string(got.Manifest) != "m" || string(got.ManifestSignature) != "ms" || string(got.BinarySignature) != "bs" {
		t.Fatalf("imported release: %+v, %v", got, err)
	}
	rd, err := s.OpenBlob(ctx, sum)
	if err != nil {
		t.Fatal(err)
	}
	if back, _ := io.ReadAll(rd); !bytes.Equal(back, bin) {
		t.Fatal("imported binary differs")
	}
	var dirs int
	s.db.QueryRow(`SELECT count(*) FROM releases WHERE dir <> ''`).Scan(&dirs)
	if dirs != 1 {
		t.Fatalf("rows still naming a directory: %d, want 1 (the release whose files are gone)", dirs)
	}
	if _, err := s.Release(ctx, "0.9.0", "linux", "amd64", "stable"); err == nil {
		t.Fatal("a release whose files were never imported was served")
	}
}

// writeVersion creates a database at path with the migrations up to
// version applied, then runs stmts.
func writeVersion(t *testing.T, path string, version int, stmts ...string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	all := []string{`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`}
	for _, m := range migrations {
		if m.version > version {
			break
		}
		all = append(all, sqliteDialect{}.ddl(m.sql), fmt.Sprintf(`INSERT INTO schema_migrations VALUES (%d, 0)`, m.version))
	}
	for _, q := range append(all, stmts...) {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// updateStates are the agent update states, in the order of a rollout.
var updateStates = []string{"offered", "downloading", "downloaded", "applied", "succeeded", "refused", "failed", "rolled_back"}

// addAgentUpdates writes update states of 30 agents of three tenants to
// three versions, with many of them sharing their second, and returns
// them.
func addAgentUpdates(t *testing.T, s *Store) []AgentUpdate {
	t.Helper()
	versions, tenants := []string{"1.0.0", "1.1.0", "2.0.0"}, []string{"acme", "globex", "initech"}
	var all []AgentUpdate
	for a := range 30 {
		for v, version := range versions {
			if (a+v)%4 == 0 {
				continue
			}
			i := len(all)
			u := AgentUpdate{Agent: fmt.Sprintf("ag%02d", (a*7)%30), Version: version, Tenant: tenants[a%3], Rollout: int64(v + 1),
				State: updateStates[(i*3)%len(updateStates)], UpdatedAt: t0.Add(time.Duration((i*7)%5) * time.Second)}
			if err := s.SetAgentUpdate(ctx, u); err != nil {
				t.Fatal(err)
			}
			all = append(all, u)
		}
	}
	return all
}

func TestAgentUpdatePages(t *testing.T) { eachEngine(t, testAgentUpdatePages) }

// Following the pages of AgentUpdatePage lists every row the filter
// selects exactly once, newest first with ties in a stable order, at any
// page size; CountAgentUpdates counts them by state; a row updated while
// the pages are followed moves to the front and is not listed twice.
func testAgentUpdatePages(t *testing.T, e engine) {
	s, _ := e.open(t)
	all := addAgentUpdates(t, s)
	// The order: updated_at, then agent, then version, all descending.
	slices.SortFunc(all, func(x, y AgentUpdate) int {
		return cmp.Or(y.UpdatedAt.Compare(x.UpdatedAt), strings.Compare(y.Agent, x.Agent), strings.Compare(y.Version, x.Version))
	})
	key := func(u AgentUpdate) string {
		return fmt.Sprintf("%s@%s:%s/%s+%d", u.Agent, u.Version, u.Tenant, u.State, u.UpdatedAt.Sub(t0)/time.Second)
	}
	follow := func(f AgentUpdateFilter) []string {
		t.Helper()
		var got []string
		for pages := 0; ; pages++ {
			if pages > len(all)+1 {
				t.Fatalf("%+v: the pages do not end", f)
			}
			page, err := s.AgentUpdatePage(ctx, f)
			if err != nil {
				t.Fatalf("%+v: %v", f, err)
			}
			if len(page) > f.Limit {
				t.Fatalf("%+v: a page of %d rows", f, len(page))
			}
			for _, u := range page {
				got = append(got, key(u))
			}
			if len(page) < f.Limit {
				return got
			}
			k := page[len(page)-1].Key()
			f.After = &k
		}
	}
	for _, f := range []AgentUpdateFilter{
		{}, {Version: "1.1.0"}, {Tenant: "globex"}, {State: "failed"}, {Version: "2.0.0", State: "offered"},
		{Version: "1.0.0", Tenant: "initech"}, {Version: "1.0.0", Tenant: "initech", State: "succeeded"}, {Version: "9.9.9"},
	} {
		var want []string
		for _, u := range all {
			if (f.Version == "" || u.Version == f.Version) && (f.Tenant == "" || u.Tenant == f.Tenant) && (f.State == "" || u.State == f.State) {
				want = append(want, key(u))
			}
		}
		if len(want) == 0 && f.Version != "9.9.9" {
			t.Fatalf("%+v selects no row of the test data", f)
		}
		for _, limit := range []int{1, 4, 7, 1000} {
			f.Limit = limit
			if got := follow(f); !slices.Equal(got, want) {
				t.Errorf("%+v: the pages list\n%v\nwant\n%v", f, got, want)
			}
		}
	}

	for _, version := range []string{"", "1.0.0", "2.0.0", "9.9.9"} {
		for _, tenant := range []string{"", "acme", "initech"} {
			want := map[string]int{}
			for _, u := range all {
				if (version == "" || u.Version == version) && (tenant == "" || u.Tenant == tenant) {
					want[u.State]++
				}
			}
			got, err := s.CountAgentUpdates(ctx, version, tenant)
			if err != nil || !maps.Equal(got, want) {
				t.Errorf("CountAgentUpdates(%q, %q) = %v, %v; want %v", version, tenant, got, err, want)
			}
		}
	}

	// While the pages are followed, a row already listed and one not yet
	// listed are updated: neither is listed (again) by the pages after,
	// and a new first page starts with both.
	first, err := s.AgentUpdatePage(ctx, AgentUpdateFilter{Limit: 10})
	if err != nil || len(first) != 10 {
		t.Fatalf("first page: %d rows, %v", len(first), err)
	}
	seen, later := first[3], all[40]
	for _, u := range []AgentUpdate{seen, later} {
		u.State, u.UpdatedAt = "succeeded", t0.Add(time.Minute)
		if err := s.SetAgentUpdate(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	k := first[9].Key()
	rest, err := s.AgentUpdatePage(ctx, AgentUpdateFilter{After: &k, Limit: 1000})
	if err != nil || len(rest) != len(all)-11 {
		t.Fatalf("the pages after the first: %d rows, %v; want %d", len(rest), err, len(all)-11)
	}
	for _, u := range rest {
		if u.Agent == seen.Agent && u.Version == seen.Version || u.Agent == later.Agent && u.Version == later.Version {
			t.Errorf("an updated row is listed after its new place: %s", key(u))
		}
	}
	if again, err := s.AgentUpdatePage(ctx, AgentUpdateFilter{Limit: 2}); err != nil || len(again) != 2 || again[0].UpdatedAt != t0.Add(time.Minute) || again[1].UpdatedAt != t0.Add(time.Minute) {
		t.Errorf("a new first page: %+v, %v; want the two rows updated", again, err)
	}
}

func TestAgentUpdatePageIndexes(t *testing.T) { eachEngine(t, testAgentUpdatePageIndexes) }

// An index serves every page of AgentUpdatePage in its order, whatever the
// filter and with or without a cursor: the engine reads the page's rows in
// order and stops, and sorts nothing, however many rows accumulate.
func testAgentUpdatePageIndexes(t *testing.T, e engine) {
	s, _ := e.open(t)
	addAgentUpdates(t, s)
	conn, err := s.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	explain := `EXPLAIN QUERY PLAN `
	if e.name == "postgres" {
		// The tables of a test are small enough that PostgreSQL would
		// rather read them whole and sort; made (nearly) impossible, a
		// sort is left only when no index gives the order.
		for _, q := range []string{`SET enable_seqscan = off`, `SET enable_sort = off`, `SET enable_bitmapscan = off`} {
			if _, err := conn.ExecContext(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		explain = `EXPLAIN `
	} else if _, err := conn.ExecContext(ctx, `ANALYZE`); err != nil {
		t.Fatal(err)
	}
	after := &AgentUpdateKey{UpdatedAt: t0.Add(2 * time.Second), Agent: "ag10", Version: "1.1.0"}
	for _, f := range []AgentUpdateFilter{
		{}, {Version: "1.1.0"}, {Tenant: "globex"}, {State: "failed"}, {Version: "2.0.0", State: "offered"}, {Version: "1.0.0", Tenant: "initech"},
	} {
		for _, cursor := range []*AgentUpdateKey{nil, after} {
			f.After, f.Limit = cursor, 200
			q, args := agentUpdatePageQuery(f)
			rows, err := conn.QueryContext(ctx, explain+q, args...)
			if err != nil {
				t.Fatal(err)
			}
			cols, _ := rows.Columns()
			var plan []string
			for rows.Next() {
				vals := make([]any, len(cols))
				ptrs := make([]any, len(cols))
				for i := range vals {
					ptrs[i] = &vals[i]
				}
				if err := rows.Scan(ptrs...); err != nil {
					t.Fatal(err)
				}
				plan = append(plan, fmt.Sprint(vals[len(vals)-1]))
			}
			rows.Close()
			text := strings.Join(plan, "\n")
			if !strings.Contains(text, "agent_updates_") || strings.Contains(text, "TEMP B-TREE") || strings.Contains(text, "Sort") {
				f.After = nil
				t.Errorf("%+v (cursor %v): the plan does not read an index of agent_updates in order:\n%s", f, cursor != nil, text)
			}
		}
	}
}

func TestMigrationToAgentUpdateIndexes(t *testing.T) {
	eachEngine(t, testMigrationToAgentUpdateIndexes)
}

// A store of schema 14 gets the indexes that serve the pages of agents'
// update states, in place of the one on their version, and keeps its rows.
func testMigrationToAgentUpdateIndexes(t *testing.T, e engine) {
	s, dsn := e.open(t)
	// Go back to schema 14 by hand.
	for _, q := range []string{
		`DROP INDEX agent_updates_recent`,
		`DROP INDEX agent_updates_version_recent`,
		`DROP INDEX agent_updates_tenant_recent`,
		`CREATE INDEX agent_updates_version ON agent_updates(version)`,
		`DELETE FROM schema_migrations WHERE version = 15`,
	} {
		if _, err := s.db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	all := addAgentUpdates(t, s)
	s.Close()
	s, err := OpenDSN(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	q := `SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'agent_updates' AND sql IS NOT NULL ORDER BY name`
	if e.name == "postgres" {
		q = `SELECT indexname FROM pg_indexes WHERE tablename = 'agent_updates' AND indexname <> 'agent_updates_pkey' ORDER BY indexname`
	}
	rows, err := s.db.QueryContext(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for rows.Next() {
		var n string
		rows.Scan(&n)
		names = append(names, n)
	}
	rows.Close()
	// (And the one of migration 17, which the store had.)
	if want := []string{"agent_updates_recent", "agent_updates_tenant_recent", "agent_updates_version_recent", "agent_updates_version_seq"}; !slices.Equal(names, want) {
		t.Errorf("indexes of agent_updates after the migration: %v, want %v", names, want)
	}
	if page, err := s.AgentUpdatePage(ctx, AgentUpdateFilter{Limit: 1000}); err != nil || len(page) != len(all) {
		t.Errorf("rows after the migration: %d, %v; want %d", len(page), err, len(all))
	}
}
