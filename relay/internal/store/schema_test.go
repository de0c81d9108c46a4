package store

import (
	"bytes"
	"database/sql"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"
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
