package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"
)

// ErrNotSQLite refuses what only an SQLite store can do (a backup by
// BackupTo): a PostgreSQL store is backed up with PostgreSQL's tools.
var ErrNotSQLite = errors.New("the store is PostgreSQL, not SQLite")

// BackupTo writes a consistent copy of the SQLite store to path, a file
// that must not exist, with SQLite's VACUUM INTO: one read transaction
// sees the database as of its start, whatever other connections and
// processes (a relay serving, admin commands) write meanwhile, and WAL
// frames not yet checkpointed are in the copy. The copy is a database on
// its own (no -wal or -shm file goes with it), made 0600, and synced to
// disk. The writers are not held up: a read transaction in WAL mode
// blocks no one.
func (s *Store) BackupTo(ctx context.Context, path string) error {
	if _, ok := s.d.(sqliteDialect); !ok {
		return ErrNotSQLite
	}
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("back up the store to %s: %w", path, os.ErrExist)
	}
	// Made empty first with owner-only permissions: SQLite would create
	// it with the process's umask. VACUUM INTO accepts an empty file.
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("back up the store: %w", err)
	}
	f.Close()
	if _, err := s.db.ExecContext(ctx, `VACUUM INTO $1`, path); err != nil {
		os.Remove(path)
		return fmt.Errorf("back up the store (VACUUM INTO %s): %w", path, err)
	}
	f, err = os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

// Summary counts what a store holds, for an operator checking a backup.
type Summary struct {
	Schema        int   `json:"schema_version"`
	Tenants       int64 `json:"tenants"`
	Agents        int64 `json:"agents"`         // enrolled, revoked ones included
	RevokedAgents int64 `json:"revoked_agents"` // of Agents
	JoinTokens    int64 `json:"join_tokens"`
	Backends      int64 `json:"backends"`
	AuditRecords  int64 `json:"audit_records"`
	// LatestChange is the sequence number of the newest change of the
	// change feed (0 if none).
	LatestChange int64 `json:"latest_change"`
}

// Summary counts what the store holds.
func (s *Store) Summary(ctx context.Context) (Summary, error) {
	return summary(ctx, s.db)
}

func summary(ctx context.Context, db *sql.DB) (Summary, error) {
	var sm Summary
	var schema, change sql.NullInt64
	if err := db.QueryRowContext(ctx, `SELECT max(version) FROM schema_migrations`).Scan(&schema); err != nil {
		return sm, fmt.Errorf("read the schema version: %w", err)
	}
	sm.Schema = int(schema.Int64)
	for _, c := range []struct {
		n     *int64
		query string
	}{
		{&sm.Tenants, `SELECT count(*) FROM tenants`},
		{&sm.Agents, `SELECT count(*) FROM agents`},
		{&sm.RevokedAgents, `SELECT count(*) FROM agents WHERE revoked_at > 0`},
		{&sm.JoinTokens, `SELECT count(*) FROM join_tokens`},
		{&sm.Backends, `SELECT count(*) FROM backends`},
		{&sm.AuditRecords, `SELECT count(*) FROM audit`},
	} {
		if err := db.QueryRowContext(ctx, c.query).Scan(c.n); err != nil {
			return sm, fmt.Errorf("count (%s): %w", c.query, err)
		}
	}
	if err := db.QueryRowContext(ctx, `SELECT max(seq) FROM changes`).Scan(&change); err != nil {
		return sm, fmt.Errorf("read the change feed: %w", err)
	}
	sm.LatestChange = change.Int64
	return sm, nil
}

// CheckFile opens the SQLite database at path read-only, without
// changing it (no migration, no journal), and checks it: SQLite's
// integrity_check, a schema this binary can open (a SchemaTooNewError
// otherwise), and its tables readable. It returns what it holds.
func CheckFile(ctx context.Context, path string) (Summary, error) {
	if _, err := os.Stat(path); err != nil {
		return Summary{}, err
	}
	q := url.Values{}
	q.Set("mode", "ro")
	q.Add("_pragma", "query_only(1)")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return Summary{}, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	rows, err := db.QueryContext(ctx, `PRAGMA integrity_check`)
	if err != nil {
		return Summary{}, fmt.Errorf("integrity check of %s: %w", path, err)
	}
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			rows.Close()
			return Summary{}, fmt.Errorf("integrity check of %s: %w", path, err)
		}
		if line != "ok" && len(problems) < 10 {
			problems = append(problems, line)
		}
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return Summary{}, fmt.Errorf("integrity check of %s: %w", path, err)
	}
	if len(problems) > 0 {
		return Summary{}, fmt.Errorf("integrity check of %s failed: %s", path, strings.Join(problems, "; "))
	}
	var req string
	err = db.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = $1`, schemaRequiresKey).Scan(&req)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return Summary{}, fmt.Errorf("%s is not a relay's store: %w", path, err)
	}
	sm, err := summary(ctx, db)
	if err != nil {
		return Summary{}, fmt.Errorf("%s is not a relay's store: %w", path, err)
	}
	if sm.Schema == 0 {
		return Summary{}, fmt.Errorf("%s is not a relay's store: no schema migration applied", path)
	}
	var requires int
	if req != "" {
		if _, err := fmt.Sscan(req, &requires); err != nil {
			return Summary{}, fmt.Errorf("%s: setting %s is damaged: %q", path, schemaRequiresKey, req)
		}
	}
	if requires > latestMigration() {
		return sm, &SchemaTooNewError{Store: sm.Schema, Requires: requires, Binary: latestMigration()}
	}
	return sm, nil
}

// SpendJoinTokens takes every use left of the join tokens created at or
// before createdBy that still have uses left, so that they enrol no
// more agents, and returns them as they were (newest first). A relay
// restored from a backup does it at its first start: a token of the
// backup may have been used since, and the restored store does not know.
func (s *Store) SpendJoinTokens(ctx context.Context, createdBy time.Time) ([]Token, error) {
	var spent []Token
	err := s.writeChanges(ctx, func(tx *sql.Tx) ([]Change, error) {
		ts, err := queryTokens(ctx, tx, `SELECT `+tokenCols+` FROM join_tokens WHERE created_at <= $1 AND uses < max_uses ORDER BY created_at DESC, id`, unix(createdBy))
		if err != nil {
			return nil, err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE join_tokens SET uses = max_uses WHERE created_at <= $1 AND uses < max_uses`, unix(createdBy)); err != nil {
			return nil, err
		}
		spent = ts
		changes := make([]Change, len(ts))
		for i, t := range ts {
			changes[i] = Change{Kind: ChangeToken, Tenant: t.Tenant, Subject: t.ID}
		}
		return changes, nil
	})
	return spent, err
}

// restoreWindowKey is the setting holding a restored store's restore
// windows (RestoreWindows): "from to" in Unix milliseconds, one pair per
// window, separated by ";" (a store restored once by a binary from before
// it kept more than one holds a single pair).
const restoreWindowKey = "restore_window"

// MaxRestoreWindows bounds the restore windows a store keeps: past it,
// AddRestoreWindow drops the oldest.
const MaxRestoreWindows = 16

// RestoreWindow is, for a store restored from a backup, the time between
// the backup (From) and the restore (To): certificates the relay issued
// then are not on record in the restored store.
type RestoreWindow struct{ From, To time.Time }

// AddRestoreWindow records w beside the windows of earlier restores: a
// certificate issued in any of them may still be unknown to the store (a
// backup taken before an earlier restore, restored again, knows nothing
// of that restore's window). Windows that ended before dropBefore (the
// restore's time less the longest an agent certificate lives: every
// certificate issued in them has expired) are dropped, and past
// MaxRestoreWindows the oldest.
func (s *Store) AddRestoreWindow(ctx context.Context, w RestoreWindow, dropBefore time.Time) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var v string
		err := tx.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = $1`, restoreWindowKey).Scan(&v)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		ws, err := parseRestoreWindows(v)
		if err != nil {
			// A damaged value is replaced: the new window still counts.
			ws = nil
		}
		kept := []RestoreWindow{w}
		for _, o := range ws {
			if !o.To.Before(dropBefore) && o != w {
				kept = append(kept, o)
			}
		}
		sort.Slice(kept, func(i, j int) bool { return kept[i].To.After(kept[j].To) })
		if len(kept) > MaxRestoreWindows {
			kept = kept[:MaxRestoreWindows]
		}
		parts := make([]string, len(kept))
		for i, k := range kept {
			parts[i] = fmt.Sprintf("%d %d", k.From.UnixMilli(), k.To.UnixMilli())
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2`,
			restoreWindowKey, strings.Join(parts, ";"))
		return err
	})
}

// RestoreWindows returns the windows AddRestoreWindow recorded, newest
// first; none for a store never restored.
func (s *Store) RestoreWindows(ctx context.Context) ([]RestoreWindow, error) {
	v, err := s.Setting(ctx, restoreWindowKey)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseRestoreWindows(v)
}

func parseRestoreWindows(v string) ([]RestoreWindow, error) {
	if v == "" {
		return nil, nil
	}
	var ws []RestoreWindow
	for _, p := range strings.Split(v, ";") {
		var from, to int64
		var rest string
		if n, _ := fmt.Sscanf(p, "%d %d%s", &from, &to, &rest); n != 2 || from > to {
			return nil, fmt.Errorf("setting %s is damaged: %q", restoreWindowKey, v)
		}
		ws = append(ws, RestoreWindow{From: fromUnixMilli(from), To: fromUnixMilli(to)})
	}
	return ws, nil
}
