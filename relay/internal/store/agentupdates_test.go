package store

import (
	"database/sql"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/pgtest"
)

// updateKeys are the agents of rows, sorted, each with its state.
func updateKeys(us []AgentUpdate) []string {
	var out []string
	for _, u := range us {
		out = append(out, u.Agent+"="+u.State)
	}
	slices.Sort(out)
	return out
}

func TestAgentUpdatesSince(t *testing.T) { eachEngine(t, testAgentUpdatesSince) }

// AgentUpdatesSince reads a version's rows whole from 0, and from the mark
// it returned only those written since, through this store or another
// handle on the same database (another relay of the cluster), however
// their writes interleave.
func testAgentUpdatesSince(t *testing.T, e engine) {
	s, dsn := e.open(t)
	other, err := OpenDSN(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	set := func(s *Store, agent, version, state string) {
		t.Helper()
		if err := s.SetAgentUpdate(ctx, AgentUpdate{Agent: agent, Version: version, Tenant: "acme", Rollout: 1, State: state, UpdatedAt: t0}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 50 {
		set(s, fmt.Sprintf("ag%02d", i), "1.0.0", "offered")
		if i < 10 {
			set(s, fmt.Sprintf("ag%02d", i), "2.0.0", "offered")
		}
	}
	since := func(mark int64, want ...string) int64 {
		t.Helper()
		got, next, err := s.AgentUpdatesSince(ctx, "1.0.0", mark)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(want)
		if keys := updateKeys(got); !slices.Equal(keys, want) {
			t.Fatalf("rows of 1.0.0 since %d: %v, want %v", mark, keys, want)
		}
		if next < mark {
			t.Fatalf("the mark went back from %d to %d", mark, next)
		}
		return next
	}
	var all []string
	for i := range 50 {
		all = append(all, fmt.Sprintf("ag%02d=offered", i))
	}
	mark := since(0, all...)
	mark = since(mark)

	// Another relay changes two rows and adds one; a row of another
	// version is not read.
	set(other, "ag03", "1.0.0", "downloading")
	set(other, "ag40", "1.0.0", "failed")
	set(other, "ag50", "1.0.0", "offered")
	set(other, "ag04", "2.0.0", "failed")
	mark = since(mark, "ag03=downloading", "ag40=failed", "ag50=offered")
	mark = since(mark)
	// A claim that does not take the row changes nothing; one that does
	// is read.
	if ok, err := other.ClaimAgentUpdate(ctx, AgentUpdate{Agent: "ag03", Version: "1.0.0", Tenant: "acme", Rollout: 1, State: "offered", UpdatedAt: t0},
		t0.Add(-time.Minute), t0.Add(-time.Minute)); err != nil || ok {
		t.Fatalf("claim of a row downloading: %v, %v; want not taken", ok, err)
	}
	mark = since(mark)
	if ok, err := other.ClaimAgentUpdate(ctx, AgentUpdate{Agent: "ag40", Version: "1.0.0", Tenant: "acme", Rollout: 2, State: "offered", UpdatedAt: t0},
		t0.Add(-time.Minute), t0.Add(-time.Minute)); err != nil || !ok {
		t.Fatalf("claim of a row failed: %v, %v; want taken", ok, err)
	}
	mark = since(mark, "ag40=offered")

	if e.name == "postgres" {
		// Writers interleave: a row written by a transaction that
		// commits after a later one did, and after a read that saw the
		// later one, is read next time. (SQLite writers take the write
		// lock at BEGIN: one waits for the other.)
		tx, err := other.db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		if err := other.setAgentUpdate(ctx, tx, AgentUpdate{Agent: "ag20", Version: "1.0.0", Tenant: "acme", Rollout: 2, State: "rolled_back", UpdatedAt: t0}); err != nil {
			t.Fatal(err)
		}
		set(s, "ag21", "1.0.0", "succeeded")
		before := mark
		mark = since(mark, "ag21=succeeded")
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		// ag21's transaction began after ag20's, which was still running
		// at that read: from its mark, ag21 may be read again.
		got, _, err := s.AgentUpdatesSince(ctx, "1.0.0", mark)
		if err != nil {
			t.Fatal(err)
		}
		if keys := updateKeys(got); !slices.Contains(keys, "ag20=rolled_back") || len(keys) > 2 || len(keys) == 2 && keys[1] != "ag21=succeeded" {
			t.Fatalf("rows of 1.0.0 since %d (after %d): %v, want ag20=rolled_back, and ag21=succeeded read again or not", mark, before, keys)
		}
	}

	// What the reads kept is what a whole read finds.
	kept := map[string]string{}
	for _, k := range all {
		a, st, _ := strings.Cut(k, "=")
		kept[a] = st
	}
	for _, k := range []string{"ag03=downloading", "ag40=offered", "ag50=offered"} {
		a, st, _ := strings.Cut(k, "=")
		kept[a] = st
	}
	if e.name == "postgres" {
		kept["ag20"], kept["ag21"] = "rolled_back", "succeeded"
	}
	whole, err := s.AgentUpdates(ctx, "1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]string{}
	for _, u := range whole {
		found[u.Agent] = u.State
	}
	if !maps.Equal(found, kept) {
		t.Errorf("a whole read finds %v, the reads since kept %v", found, kept)
	}
}

func TestAgentUpdatesSinceIndex(t *testing.T) { eachEngine(t, testAgentUpdatesSinceIndex) }

// A read since a mark finds its rows through the index on (version, seq),
// however many rows the version has.
func testAgentUpdatesSinceIndex(t *testing.T, e engine) {
	s, _ := e.open(t)
	addAgentUpdates(t, s)
	conn, err := s.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	explain := `EXPLAIN QUERY PLAN `
	if e.name == "postgres" {
		for _, q := range []string{`SET enable_seqscan = off`, `SET enable_bitmapscan = off`} {
			if _, err := conn.ExecContext(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		explain = `EXPLAIN `
	} else if _, err := conn.ExecContext(ctx, `ANALYZE`); err != nil {
		t.Fatal(err)
	}
	rows, err := conn.QueryContext(ctx, explain+`SELECT `+agentUpdateCols+`, seq FROM agent_updates WHERE version = $1 AND seq >= $2`, "1.1.0", 5)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
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
	if text := strings.Join(plan, "\n"); !strings.Contains(text, "agent_updates_version_seq") {
		t.Errorf("the read since a mark does not use the index on (version, seq):\n%s", text)
	}
}

func TestMigrationToAgentUpdateSeq(t *testing.T) { eachEngine(t, testMigrationToAgentUpdateSeq) }

// A store of schema 16 gets the column and index that reads since a mark
// use; its rows, written before, are read from 0, and rows written after
// since the mark that read returned.
func testMigrationToAgentUpdateSeq(t *testing.T, e engine) {
	s, dsn := e.open(t)
	// Go back to schema 16 by hand, and write rows as a relay of then did.
	for _, q := range []string{
		`DROP INDEX agent_updates_version_seq`,
		`ALTER TABLE agent_updates DROP COLUMN seq`,
		`DELETE FROM schema_migrations WHERE version = 17`,
	} {
		if _, err := s.db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for i := range 5 {
		if _, err := s.db.ExecContext(ctx, `INSERT INTO agent_updates (agent, version, tenant, rollout, state, updated_at) VALUES ($1, '1.0.0', 'acme', 1, 'offered', $2)`,
			fmt.Sprintf("ag%d", i), t0.Unix()); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s, err := OpenDSN(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.SchemaVersion(ctx); err != nil || v != latestMigration() {
		t.Fatalf("schema version %d, %v; want %d", v, err, latestMigration())
	}
	old, mark, err := s.AgentUpdatesSince(ctx, "1.0.0", 0)
	if err != nil || len(old) != 5 {
		t.Fatalf("rows written before the migration, read from 0: %d, %v; want 5", len(old), err)
	}
	if err := s.SetAgentUpdate(ctx, AgentUpdate{Agent: "ag2", Version: "1.0.0", Tenant: "acme", Rollout: 1, State: "failed", UpdatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	got, _, err := s.AgentUpdatesSince(ctx, "1.0.0", mark)
	if err != nil || !slices.Equal(updateKeys(got), []string{"ag2=failed"}) {
		t.Fatalf("rows written since: %v, %v; want ag2=failed", updateKeys(got), err)
	}
	q := `SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'agent_updates_version_seq'`
	if e.name == "postgres" {
		q = `SELECT count(*) FROM pg_indexes WHERE indexname = 'agent_updates_version_seq'`
	}
	if ok, err := exists(ctx, s.db, q); err != nil || !ok {
		t.Fatalf("index agent_updates_version_seq after the migration: %v, %v", ok, err)
	}
}

// BenchmarkAgentUpdatesTick is what the rollout loop reads each tick of a
// version with 10 000 agents' rows, 10 of which changed since the last
// tick: the whole version (AgentUpdates, as a tick read before schema 17), or
// what changed (AgentUpdatesSince).
func BenchmarkAgentUpdatesTick(b *testing.B) {
	for _, e := range engines {
		b.Run(e.name, func(b *testing.B) {
			dsn := filepath.Join(b.TempDir(), "tether.db")
			if e.name == "postgres" {
				dsn = pgtest.Shared(b).CreateDatabase(b)
			}
			s, err := OpenDSN(ctx, dsn)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			const n, changed = 10000, 10
			write := func(from, to int, state string) {
				err := s.tx(ctx, func(tx *sql.Tx) error {
					for i := from; i < to; i++ {
						if err := s.setAgentUpdate(ctx, tx, AgentUpdate{Agent: fmt.Sprintf("ag%05d", i), Version: "1.0.0", Tenant: "acme", Rollout: 1,
							State: state, From: "0.9.0", UpdatedAt: t0}); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			write(0, n, "offered")
			_, mark, err := s.AgentUpdatesSince(ctx, "1.0.0", 0)
			if err != nil {
				b.Fatal(err)
			}
			write(0, changed, "downloading")
			b.Run("whole", func(b *testing.B) {
				var rows int
				for b.Loop() {
					us, err := s.AgentUpdates(ctx, "1.0.0")
					if err != nil {
						b.Fatal(err)
					}
					rows = len(us)
				}
				b.ReportMetric(float64(rows), "rows/op")
			})
			b.Run("since", func(b *testing.B) {
				var rows int
				for b.Loop() {
					us, _, err := s.AgentUpdatesSince(ctx, "1.0.0", mark)
					if err != nil {
						b.Fatal(err)
					}
					rows = len(us)
				}
				b.ReportMetric(float64(rows), "rows/op")
			})
		})
	}
}

// BenchmarkSetAgentUpdate is one agent's update state written, among a
// version's 10 000.
func BenchmarkSetAgentUpdate(b *testing.B) {
	for _, name := range []string{"sqlite", "postgres"} {
		b.Run(name, func(b *testing.B) {
			dsn := filepath.Join(b.TempDir(), "tether.db")
			if name == "postgres" {
				dsn = pgtest.Shared(b).CreateDatabase(b)
			}
			s, err := OpenDSN(ctx, dsn)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			const n = 10000
			for i := range n {
				if err := s.SetAgentUpdate(ctx, AgentUpdate{Agent: fmt.Sprintf("ag%05d", i), Version: "1.0.0", Tenant: "acme", Rollout: 1, State: "offered", UpdatedAt: t0}); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := s.SetAgentUpdate(ctx, AgentUpdate{Agent: fmt.Sprintf("ag%05d", i%n), Version: "1.0.0", Tenant: "acme", Rollout: 1, State: "downloading", UpdatedAt: t0}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
