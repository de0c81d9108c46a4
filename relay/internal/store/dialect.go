package store

import (
	"context"
	"database/sql"
	"errors"
	"net/url"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// errClass is what the store needs to know of a driver error.
type errClass int

const (
	classOther      errClass = iota
	classUnique              // a uniqueness (or primary key) violation
	classForeignKey          // a foreign key violation
	classRetry               // worth running the transaction again: locked, busy, serialization failure, deadlock
	// classConnUnsent: the connection failed before anything of the
	// statement reached the server (a dead pooled connection found when
	// writing to it, a connection that could not be made): the
	// statement had no effect, even a COMMIT's.
	classConnUnsent
	// classConnLost: the connection ended under the statement (the
	// server terminated it: a restart, an administrator, a pooler; the
	// network failed). What the server did with a COMMIT is then unknown,
	// but a transaction not yet committing was rolled back with it.
	classConnLost
	// classLockTimeout: a statement gave up waiting for a lock, as the
	// transaction's lock timeout told it to (a migration's: dialect
	// lockTimeout).
	classLockTimeout
)

// retryable reports whether a transaction that failed with an error of
// class c is worth running again: a lock, a serialization failure or a
// connection that failed before the statement was sent, at any time; a
// connection lost under a statement only before the transaction began to
// commit, since a COMMIT whose answer was lost may have committed.
func retryable(c errClass, committing bool) bool {
	switch c {
	case classRetry, classConnUnsent:
		return true
	case classConnLost:
		return !committing
	}
	return false
}

// dialect is what differs between database engines. Errors are classified
// by the driver's error code, never by message text.
type dialect interface {
	// classify maps an error returned by the driver to a class.
	classify(err error) errClass
	// refused reports whether err says the database refused the data
	// or the statement it was given (Store.Refused).
	refused(err error) bool
	// ddl expands the engine-specific fragments of a migration: {{serial}}
	// (an auto-incrementing 64-bit primary key) and {{blob}} (bytes).
	ddl(portable string) string
	// orderChanges runs in every transaction that appends to the change
	// feed, before it does, so that changes commit in the order of their
	// sequence numbers and a follower that has read seq N never misses a
	// change below N committed later.
	orderChanges(ctx context.Context, tx *sql.Tx) error
	// insertIDQuery returns an INSERT into a table with a {{serial}}
	// column named key, completed so that execInsertID can return the
	// new key.
	insertIDQuery(query, key string) string
	// execInsertID runs a statement prepared from insertIDQuery and
	// returns the new key; sql.ErrNoRows when it inserted no row (ON
	// CONFLICT DO NOTHING).
	execInsertID(ctx context.Context, stmt *sql.Stmt, args ...any) (int64, error)
	// notifyChanges runs in every transaction that appended to the
	// change feed, after it did: other processes learn of the change
	// when it commits, where the engine can tell them.
	notifyChanges(ctx context.Context, tx *sql.Tx) error
	// listen calls wake whenever another process may have committed a
	// change, until ctx ends; it returns at once where the engine cannot
	// tell (followers then poll).
	// reconnected is called (before wake) each time it listens again
	// after losing its connection.
	listen(ctx context.Context, wake, reconnected func(), failed func(error))
	// nowMillis is an SQL expression for the database's clock, in Unix
	// milliseconds: the one clock every relay of a cluster agrees on.
	nowMillis() string
	// lockRows is the clause that ends a SELECT of rows to lock them
	// until the transaction ends, against other transactions that lock
	// them so; "" where every transaction already excludes the others.
	lockRows() string
	// lockStatements are the statements that take and release a lock
	// shared by every process on the database, held by one connection
	// and waiting until it is free ($1: the lock's key); "" where the
	// engine has none (Store.Lock).
	lockStatements() (lock, unlock string)
	// tryLockStatement takes the lock of lockStatements only if it is
	// free, answering whether it did; "" where the engine has none.
	tryLockStatement() string
	// lockTimeout is the statement that bounds, for the rest of the
	// transaction, how long a statement waits for a lock on a table
	// (a migration's: it gives up rather than queue every reader of
	// the table behind it); "" where the engine has no such bound
	// (SQLite: busy_timeout bounds the wait for the write lock).
	lockTimeout(d time.Duration) string
	// agentUpdateSeq is an SQL expression for the seq of an agent_updates
	// row written now, in a statement whose parameter versionParam is the
	// row's version. A reader that read the version's rows up to a mark
	// (agentUpdateMark) and then reads those whose seq is at least that
	// mark misses no row committed since, however the writers of a
	// cluster interleave (releases.go, AgentUpdatesSince).
	agentUpdateSeq(versionParam string) string
	// agentUpdateMark returns, taken before a read of agent_updates, the
	// lowest seq that a row that read does not see can have; -1 where it
	// is the highest seq the read returns plus one.
	agentUpdateMark(ctx context.Context, q queryRower) (int64, error)
}

// sqliteDialect is SQLite through modernc.org/sqlite.
type sqliteDialect struct{}

// openSQLite opens the database file at path. Every transaction begins
// IMMEDIATE (it takes the write lock first), so one process at a time
// writes and changes commit in order; readers proceed concurrently in WAL
// mode.
//
// Every connection is synchronous FULL: a commit returns once the WAL is
// synced, so what a caller was told is done (an enrolment, a revocation,
// the audit record written before the relay acts) survives a power loss.
// NORMAL, SQLite's usual choice with WAL, syncs only at checkpoints: the
// last commits before a power loss roll back. Audit batches keep FULL
// too: the relay writes the record of an action before acting so that it
// is never taken unaudited, and batches (group commit) already share one
// sync among many records. (The WAL is one file: a NORMAL commit would
// in any case become durable with the next FULL one.)
func openSQLite(path string) (*sql.DB, error) {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, err
	}
	// Keep connections open: opening one re-runs the pragmas above and
	// costs more than most queries.
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return db, nil
}

func (sqliteDialect) classify(err error) errClass {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return classOther
	}
	switch se.Code() { // extended result codes are on
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		return classUnique
	case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
		return classForeignKey
	}
	switch se.Code() & 0xff {
	// BUSY comes back at once, without the busy timeout, where waiting
	// could deadlock (e.g. switching a fresh file to WAL while another
	// process does the same, or upgrading a read transaction).
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return classRetry
	}
	return classOther
}

// refused: a constraint, a value of the wrong type, too big or out of
// range.
func (sqliteDialect) refused(err error) bool {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_CONSTRAINT, sqlite3.SQLITE_MISMATCH, sqlite3.SQLITE_TOOBIG, sqlite3.SQLITE_RANGE, sqlite3.SQLITE_ERROR:
		return true
	}
	return false
}

func (sqliteDialect) ddl(portable string) string {
	return strings.NewReplacer("{{serial}}", "INTEGER PRIMARY KEY AUTOINCREMENT", "{{blob}}", "BLOB").Replace(portable)
}

// orderChanges does nothing: BEGIN IMMEDIATE already serialises writers.
func (sqliteDialect) orderChanges(context.Context, *sql.Tx) error { return nil }

func (sqliteDialect) insertIDQuery(query, _ string) string { return query }

// execInsertID reads the key as the last rowid: an Exec costs less than a
// query's rows, which matters to the audit writer's batches.
func (sqliteDialect) execInsertID(ctx context.Context, stmt *sql.Stmt, args ...any) (int64, error) {
	res, err := stmt.ExecContext(ctx, args...)
	if err != nil {
		return 0, err
	}
	if n, err := res.RowsAffected(); err != nil {
		return 0, err
	} else if n == 0 {
		return 0, sql.ErrNoRows
	}
	return res.LastInsertId()
}

// notifyChanges does nothing: SQLite cannot tell other processes.
func (sqliteDialect) notifyChanges(context.Context, *sql.Tx) error { return nil }

func (sqliteDialect) listen(context.Context, func(), func(), func(error)) {}

func (sqliteDialect) nowMillis() string {
	return `CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)`
}

// lockRows: BEGIN IMMEDIATE already serialises the transactions that
// write.
func (sqliteDialect) lockRows() string { return "" }

// lockStatements: SQLite has no lock a connection holds across
// transactions without blocking every other writer.
func (sqliteDialect) lockStatements() (string, string) { return "", "" }

func (sqliteDialect) tryLockStatement() string { return "" }

func (sqliteDialect) lockTimeout(time.Duration) string { return "" }

// agentUpdateSeq numbers a version's rows one after another: writers take
// the write lock at BEGIN (BEGIN IMMEDIATE), one at a time, so a row
// committed later has a higher seq than every row of its version
// committed before. The index on (version, seq) finds the highest.
func (sqliteDialect) agentUpdateSeq(versionParam string) string {
	return `(SELECT coalesce(max(seq), 0) + 1 FROM agent_updates WHERE version = ` + versionParam + `)`
}

// agentUpdateMark: a read sees every row committed before it, and rows
// committed after it have a higher seq than those it returns.
func (sqliteDialect) agentUpdateMark(context.Context, queryRower) (int64, error) { return -1, nil }
