package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/pgtest"
)

// requirementKey is schemaRequiresKey, spelt out: the tests check what
// the store holds, whichever binary wrote it.
const requirementKey = "schema_requires_binary"

// applyUnknownMigration makes the store at dsn look migrated by a newer
// binary: a migration this binary does not know, applied, with the
// requirement that binary recorded.
func applyUnknownMigration(t *testing.T, s *Store, requires int) int {
	t.Helper()
	v := latestMigration() + 1
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE from_the_future (x INTEGER)`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)`, v, time.Now().Unix()); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSetting(ctx, requirementKey, strconv.Itoa(requires)); err != nil {
		t.Fatal(err)
	}
	return v
}

// A store migrated by a binary that says older binaries do not work on
// its schema is refused, by relays and admin commands alike (both open
// it with OpenDSN), with an error that names both versions and says to
// upgrade; nothing is changed, and the requirement stays for the next
// open.
func TestSchemaTooNewRefused(t *testing.T) { eachEngine(t, testSchemaTooNewRefused) }

func testSchemaTooNewRefused(t *testing.T, e engine) {
	s, dsn := e.open(t)
	v := applyUnknownMigration(t, s, latestMigration()+1)
	s.Close()

	for range 2 {
		s2, err := OpenDSN(ctx, dsn)
		if err == nil {
			s2.Close()
			t.Fatalf("opened a store at schema %d that requires a binary knowing %d, with a binary knowing %d; want it refused", v, v, latestMigration())
		}
		want := "the store's schema is at version " + strconv.Itoa(v) + " and requires a binary that knows schema version " + strconv.Itoa(v) +
			" or newer; this binary knows only up to version " + strconv.Itoa(latestMigration())
		if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "upgrade this tether-relay binary") {
			t.Fatalf("refusal says %q; want it to contain %q and to say to upgrade", err, want)
		}
		var te *SchemaTooNewError
		if !errors.As(err, &te) || !errors.Is(err, ErrSchemaTooNew) || te.Store != v || te.Requires != v || te.Binary != latestMigration() {
			t.Fatalf("refusal %#v is not a SchemaTooNewError{%d, %d, %d}", err, v, v, latestMigration())
		}
	}
	// The store as the newer binary left it.
	s3 := reopenRaw(t, e, dsn)
	if got := requirement(t, s3); got != v {
		t.Errorf("requirement %d after the refused opens, want %d", got, v)
	}
}

// A store at a schema newer than this binary's that still works with it
// opens, with a warning naming both versions; the requirement the newer
// binary recorded is not lowered.
func TestSchemaNewerCompatibleWarns(t *testing.T) { eachEngine(t, testSchemaNewerCompatibleWarns) }

func testSchemaNewerCompatibleWarns(t *testing.T, e engine) {
	s, dsn := e.open(t)
	req := latestMigration() // above what this binary's migrations require
	v := applyUnknownMigration(t, s, req)
	s.Close()

	var logs bytes.Buffer
	s2, err := OpenDSN(ctx, dsn, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatalf("a newer schema that still works with this binary: %v", err)
	}
	defer s2.Close()
	if got, want := s2.Schema(), (SchemaState{Store: v, Binary: latestMigration(), Requires: req}); got != want {
		t.Errorf("Schema() = %+v, want %+v", got, want)
	}
	line := logs.String()
	if !strings.Contains(line, "level=WARN") || !strings.Contains(line, "store_schema="+strconv.Itoa(v)) ||
		!strings.Contains(line, "binary_schema="+strconv.Itoa(latestMigration())) || !strings.Contains(line, "upgrade") {
		t.Errorf("log at open: %q; want a warning naming store_schema=%d and binary_schema=%d", line, v, latestMigration())
	}
	if got := requirement(t, s2); got != req {
		t.Errorf("requirement %d after this binary opened the store, want %d (not lowered)", got, req)
	}
}

// A new store records what its migrations require, and so does a store
// migrated before the requirement was recorded, at its next open; a store
// at this binary's own schema opens without a warning.
func TestSchemaRequirementRecorded(t *testing.T) { eachEngine(t, testSchemaRequirementRecorded) }

func testSchemaRequirementRecorded(t *testing.T, e engine) {
	s, dsn := e.open(t)
	if got := requirement(t, s); got != requiredByMigrations() || got < 11 || got > latestMigration() {
		t.Fatalf("a new store requires %d, want %d", got, requiredByMigrations())
	}
	if _, err := s.db.ExecContext(ctx, `DELETE FROM settings WHERE key = $1`, requirementKey); err != nil {
		t.Fatal(err)
	}
	s.Close()
	var logs bytes.Buffer
	s2, err := OpenDSN(ctx, dsn, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got := requirement(t, s2); got != requiredByMigrations() {
		t.Errorf("a store migrated before the requirement was recorded requires %d after an open, want %d", got, requiredByMigrations())
	}
	if s2.Schema().Newer() || logs.Len() != 0 {
		t.Errorf("store at this binary's schema: Schema() = %+v, log %q; want no warning", s2.Schema(), logs.String())
	}
}

// reopenRaw opens the store at dsn without migrating it, to read what is
// there.
func reopenRaw(t *testing.T, e engine, dsn string) *Store {
	t.Helper()
	var s *Store
	if e.name == "sqlite" {
		db, err := openSQLite(dsn)
		if err != nil {
			t.Fatal(err)
		}
		s = &Store{db: db, d: sqliteDialect{}}
	} else {
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		s = &Store{db: db, d: postgresDialect{dsn: dsn}}
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func requirement(t *testing.T, s *Store) int {
	t.Helper()
	v, err := s.Setting(ctx, requirementKey)
	if err != nil {
		t.Fatalf("requirement: %v", err)
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// undoMigration18 opens the PostgreSQL store at dsn, which it leaves
// migrated but for migration 18 (the audit records' key), which its next
// open applies: an ALTER TABLE of audit, which waits for every reader of
// the table. It returns a connection of its own to the database.
func undoMigration18(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	s, err := OpenPostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.ExecContext(ctx, `DROP INDEX audit_record_key; ALTER TABLE audit DROP COLUMN record_key; DELETE FROM schema_migrations WHERE version = 18`); err != nil {
		t.Fatal(err)
	}
	return db
}

// holdTable begins a transaction that reads table, so holds a lock on it
// that an ALTER TABLE waits for, until the function returned is called.
func holdTable(t *testing.T, db *sql.DB, table string) (release func()) {
	t.Helper()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `SELECT count(*) FROM `+table); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() { once.Do(func() { tx.Rollback() }) }
	t.Cleanup(release)
	return release
}

// A migration that waits for a table another transaction holds gives up
// after MigrationLockTimeout, saying so, rather than wait (queueing every
// reader of the table behind it) for as long as the caller lets it; once
// the table is free, the migration is applied, its start and end logged.
func TestMigrationLockTimeout(t *testing.T) {
	dsn := pgtest.Shared(t).CreateDatabase(t)
	db := undoMigration18(t, dsn)
	release := holdTable(t, db, "audit")

	defer func(d time.Duration) { MigrationLockTimeout = d }(MigrationLockTimeout)
	MigrationLockTimeout = 300 * time.Millisecond
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	start := time.Now()
	s, err := OpenPostgres(octx, dsn)
	took := time.Since(start)
	if err == nil {
		s.Close()
		t.Fatal("migration 18 applied while another transaction held the audit table")
	}
	if !strings.Contains(err.Error(), "migration 18: gave up after waiting 300ms for a lock on a table that another transaction holds") || took > 3*time.Second {
		t.Fatalf("open with the audit table held: %v after %v; want migration 18 to give up on the lock within 3 s, saying so", err, took.Round(time.Millisecond))
	}

	release()
	var logs bytes.Buffer
	s, err = OpenPostgres(ctx, dsn, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatalf("open once the table is free: %v", err)
	}
	defer s.Close()
	if !migration18Applied(t, db) {
		t.Fatal("migration 18 not applied once the table was free")
	}
	if !strings.Contains(logs.String(), `msg="applying store migration" migration=18`) || !strings.Contains(logs.String(), `msg="applied store migration" migration=18 took=`) {
		t.Errorf("log of the migration: %q; want its start and its end with its duration", logs.String())
	}
}

// A migration has MigrationTimeout of its own: one that outlasts the
// caller's deadline (relay.New gives its whole start 30 s) is still
// applied, rather than rolled back to be tried again, and blocking the
// cluster's writes again, at every start.
func TestMigrationOutlastsCallerDeadline(t *testing.T) {
	dsn := pgtest.Shared(t).CreateDatabase(t)
	db := undoMigration18(t, dsn)

	// The caller's deadline must pass while the migration waits for its
	// table: the table is let go 800 ms after it. Opening the store before
	// the migration can use up a short deadline on a loaded machine; then
	// the migration never began, which is not what is under test, and the
	// open is tried again with twice the deadline.
	for deadline := 700 * time.Millisecond; ; deadline *= 2 {
		release := holdTable(t, db, "audit")
		octx, cancel := context.WithTimeout(ctx, deadline)
		later := context.AfterFunc(octx, func() { time.AfterFunc(800*time.Millisecond, release) })
		var logs bytes.Buffer
		s, err := OpenPostgres(octx, dsn, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
		if later() {
			release() // the open returned before its deadline
		}
		cancel()
		if err == nil {
			s.Close()
		}
		t.Logf("open with a %v deadline: %v", deadline, err)
		if !strings.Contains(logs.String(), `msg="applying store migration" migration=18`) {
			if migration18Applied(t, db) || deadline > 10*time.Second {
				t.Fatalf("open with a %v deadline: %v; the migration did not begin (log: %q)", deadline, err, logs.String())
			}
			continue // the deadline passed before the migration began
		}
		if !migration18Applied(t, db) {
			t.Fatalf("migration 18 not applied by an open whose caller's deadline (%v) passed while it waited for its table", deadline)
		}
		if err == nil || !strings.Contains(err.Error(), "store migrations 18-18 applied") {
			t.Errorf("open: %v; want it to say the migrations were applied and to start again", err)
		}
		return
	}
}

func migration18Applied(t *testing.T, db *sql.DB) bool {
	t.Helper()
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations WHERE version = 18`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}

// A relay's row says which schema its binary knows, as JoinCluster and
// Heartbeat write it; a row an older binary wrote again (under another
// version, without the column) says it is not known.
func TestRelaySchema(t *testing.T) { eachEngine(t, testRelaySchema) }

func testRelaySchema(t *testing.T, e engine) {
	s, _ := e.open(t)
	if _, err := s.JoinCluster(ctx, Relay{ID: "r1", Epoch: 1, Version: "1.1.0", StartedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Heartbeat(ctx, Relay{ID: "r2", Epoch: 1, Version: "1.1.0", StartedAt: t0}); err != nil {
		t.Fatal(err)
	}
	// r2 rolled back to a binary that does not write the schema.
	if _, err := s.db.ExecContext(ctx, `UPDATE relays SET version = '1.0.0' WHERE id = 'r2'`); err != nil {
		t.Fatal(err)
	}
	rs, err := s.Relays(ctx)
	if err != nil || len(rs) != 2 {
		t.Fatalf("Relays = %+v, %v", rs, err)
	}
	if rs[0].Schema != BinarySchemaVersion() || rs[1].Schema != 0 {
		t.Errorf("schemas %d (written by this binary), %d (rewritten by an older one); want %d, 0", rs[0].Schema, rs[1].Schema, BinarySchemaVersion())
	}
}

// withMigration runs test with m added to this binary's migrations, as a
// newer binary would have it.
func withMigration(m migration, test func()) {
	saved := migrations
	migrations = append(slices.Clip(migrations), m)
	defer func() { migrations = saved }()
	test()
}

// A newer binary does not apply a migration that breaks older binaries
// while relays of an older release are live on the store; once they are
// gone it does, and the binaries of the older release are refused from
// then on.
func TestBreakingMigrationWaitsForOlderRelays(t *testing.T) {
	eachEngine(t, testBreakingMigrationWaitsForOlderRelays)
}

func testBreakingMigrationWaitsForOlderRelays(t *testing.T, e engine) {
	s, dsn := e.open(t)
	if _, err := s.JoinCluster(ctx, Relay{ID: "old-1", Epoch: 1, Version: "1.0.0", StartedAt: t0}); err != nil {
		t.Fatal(err)
	}
	next := latestMigration() + 1
	breaking := migration{next, next, `CREATE TABLE breaking_change (x INTEGER)`}
	withMigration(breaking, func() {
		s2, err := OpenDSN(ctx, dsn)
		if err == nil {
			s2.Close()
			t.Fatalf("migration %d, which breaks older binaries, applied while relay old-1 of an older release runs", next)
		}
		if !strings.Contains(err.Error(), fmt.Sprintf(`migration %d breaks binaries that do not know it, and relays that run one are live on this store: old-1 (version "1.0.0", schema %d)`, next, next-1)) {
			t.Fatalf("open: %v; want it refused, naming old-1", err)
		}
	})
	// old-1 stopped: its heartbeat ages past the live window.
	if _, err := s.db.ExecContext(ctx, `UPDATE relays SET heartbeat_ms = `+s.d.nowMillis()+` - 11000`); err != nil {
		t.Fatal(err)
	}
	withMigration(breaking, func() {
		s2, err := OpenDSN(ctx, dsn)
		if err != nil {
			t.Fatalf("open once old-1 is gone: %v", err)
		}
		defer s2.Close()
		if st := s2.Schema(); st.Store != next || st.Requires != next {
			t.Fatalf("Schema() = %+v after the breaking migration; want store %d requiring %d", st, next, next)
		}
	})
	// This binary is the older release now.
	_, err := OpenDSN(ctx, dsn)
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("open by a binary that does not know migration %d, which breaks it: %v; want ErrSchemaTooNew", next, err)
	}
}
