// Package store keeps the relay's persistent state: tenants, join tokens,
// agents, backend credentials, limits, operators and their console
// sessions, releases and rollouts, the audit trail, settings, and the
// change feed that tells running relays what an operator changed.
//
// One concrete *Store runs over database/sql. What differs between
// database engines (DDL fragments, how driver errors are classified, how
// writers of the change feed are ordered) is kept behind an unexported
// dialect; everything else is portable SQL ($n placeholders, hashes as hex
// text, times as Unix seconds or milliseconds in BIGINT columns). The
// embedded engine is SQLite (modernc.org/sqlite, pure Go), in a file of the
// relay's data directory; several processes may use one file at once (the
// relay serving and offline admin commands).
//
// The SQL is split by subject: tenants.go, tokens.go, agents.go,
// backends.go, limits.go, operators.go, releases.go, audit.go, settings.go,
// changes.go; schema.go holds the migrations.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Sentinel errors; the store wraps them with the subject, e.g.
// `tenant "acme": not found`.
var (
	ErrNotFound     = errors.New("not found")
	ErrExists       = errors.New("already exists")
	ErrTokenExpired = errors.New("join token expired")
	ErrTokenUsedUp  = errors.New("join token has no uses left")
	ErrTokenSecret  = errors.New("join token secret does not match")
	// ErrAgentLimit: a tenant has as many agents enrolled (and not
	// revoked) as its limit allows (EnrolAgent).
	ErrAgentLimit = errors.New("tenant has as many agents as its limit allows")
	// ErrCertChanged: an agent's newest certificate changed (another
	// renewal recorded one) between reading it and replacing it.
	ErrCertChanged = errors.New("the agent's newest certificate changed meanwhile")
	// ErrRevoked is returned when an operation needs a live agent and the
	// agent was revoked.
	ErrRevoked = errors.New("agent was revoked")
	// ErrInUse: what is to be removed is still in use (a release that a
	// rollout offers, or that agents are fetching: RemoveRelease).
	ErrInUse = errors.New("in use")
)

// Store is the relay's state.
type Store struct {
	db *sql.DB
	d  dialect

	wakeMu sync.Mutex    // guards wake
	wake   chan struct{} // closed and replaced when this process commits a change (changes.go)

	// connLost, where the engine has connections to lose (PostgreSQL),
	// is when (Unix nanoseconds) a transaction last found its connection
	// lost: pooled connections last used before then are checked before
	// they are used again.
	connLost *atomic.Int64

	log    *slog.Logger // where opening the store logs (WithLogger)
	schema SchemaState  // what opening it found of its schema
}

// Option is an option of Open, OpenPostgres and OpenDSN.
type Option func(*Store)

// WithLogger has the store log to l what opening it does and finds (a
// schema newer than this binary's); slog.Default() without it.
func WithLogger(l *slog.Logger) Option {
	return func(s *Store) {
		if l != nil {
			s.log = l
		}
	}
}

// newStore is a Store on db, with opts applied.
func newStore(db *sql.DB, d dialect, lost *atomic.Int64, opts []Option) *Store {
	s := &Store{db: db, d: d, wake: make(chan struct{}), connLost: lost, log: slog.Default()}
	for _, o := range opts {
		o(s)
	}
	return s
}

// retryAttempts bounds how often a transaction that failed for a reason
// worth retrying (a lock held by another process, a serialization failure
// or deadlock, a lost connection) is run again.
const retryAttempts = 8

// Open opens (creating if needed) the SQLite database at path and applies
// pending migrations. It refuses, with a SchemaTooNewError, a store whose
// schema requires a binary newer than this one.
func Open(ctx context.Context, path string, opts ...Option) (*Store, error) {
	db, err := openSQLite(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	s := newStore(db, sqliteDialect{}, nil, opts)
	if err := s.migrate(ctx); err != nil {
		db.Close()
		if full, avail := diskFull(path, err); full {
			return nil, fmt.Errorf("migrate %s: %w (%d bytes available): free some space there and start again: %w", path, ErrDiskFull, avail, err)
		}
		return nil, fmt.Errorf("migrate %s: %w", path, err)
	}
	return s, nil
}

// OpenDSN opens the store at dsn: a PostgreSQL database when dsn is a
// postgres:// URL, else the SQLite file at that path.
func OpenDSN(ctx context.Context, dsn string, opts ...Option) (*Store, error) {
	if IsPostgres(dsn) {
		return OpenPostgres(ctx, dsn, opts...)
	}
	return Open(ctx, dsn, opts...)
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// tx runs fn in a transaction and commits it. A failure worth retrying
// (retryable: a lock, a serialization failure, a connection that failed
// before the transaction's effects could commit) runs fn again, after a
// short jittered wait, up to retryAttempts times; fn must therefore have
// no effect outside the transaction. A connection found lost has the
// pool's other connections checked before their next use (OpenPostgres),
// so that a restarted server costs one retry, not one per pooled
// connection.
func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	wait := 5 * time.Millisecond
	for attempt := 1; ; attempt++ {
		committing, err := s.txOnce(ctx, fn)
		if err == nil {
			return nil
		}
		class := s.noteLost(err)
		if !retryable(class, committing) || attempt == retryAttempts || !pause(ctx, &wait) {
			return err
		}
	}
}

// read runs fn, a read outside a transaction, and runs it again, as tx
// does, when it failed for a reason worth retrying: a read has no
// effect, so a connection lost under it is, whenever it was lost.
func (s *Store) read(ctx context.Context, fn func() error) error {
	wait := 5 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil {
			return nil
		}
		if !retryable(s.noteLost(err), false) || attempt == retryAttempts || !pause(ctx, &wait) {
			return err
		}
	}
}

// noteLost classifies err and, for a lost connection, has the pool's
// connections last used before now checked before their next use.
func (s *Store) noteLost(err error) errClass {
	class := s.d.classify(err)
	if s.connLost != nil && (class == classConnLost || class == classConnUnsent) {
		s.connLost.Store(time.Now().UnixNano())
	}
	return class
}

// pause waits about *wait (jittered) and doubles it, up to a second; it
// reports false, at once, when ctx ends first.
func pause(ctx context.Context, wait *time.Duration) bool {
	if ctx.Err() != nil {
		return false
	}
	t := time.NewTimer(*wait + rand.N(*wait))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	}
	*wait = min(2**wait, time.Second)
	return true
}

// txOnce runs fn in a transaction and commits it. committing reports
// whether err came from the COMMIT, whose effects may have been made
// whatever the error.
func (s *Store) txOnce(ctx context.Context, fn func(*sql.Tx) error) (committing bool, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return false, err
	}
	return true, tx.Commit()
}

// exec runs one statement outside an explicit transaction, retried like
// tx.
func (s *Store) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	var res sql.Result
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		res, err = tx.ExecContext(ctx, query, args...)
		return err
	})
	return res, err
}

// Refused reports whether err, returned by a write, says the store
// refused what it was given — a value it cannot hold (text that is not
// UTF-8, say), a constraint, a statement it does not know — rather than
// that it did not answer as it should (a lock, a lost connection, a time
// limit, a server short of resources, or anything else): the same write
// would fail again, while one that failed otherwise may succeed later.
func (s *Store) Refused(err error) bool {
	if err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	var re refusedError
	return errors.As(err, &re) || s.d.refused(err)
}

// Unreachable reports whether err, returned by a read, says the store
// could not be reached or did not answer in time — a connection that
// could not be made or was lost, a time limit passed — rather than that
// it answered (not found, a refusal, any other error of the database's
// own). context.Canceled is neither: the caller went away.
func (s *Store) Unreachable(err error) bool {
	if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch s.d.classify(err) {
	case classConnUnsent, classConnLost:
		return true
	}
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// refusedError is a value a write was given that no store could hold,
// found before the database was asked.
type refusedError struct{ error }

func (e refusedError) Unwrap() error { return e.error }

// unique reports whether err is a uniqueness violation.
func (s *Store) unique(err error) bool { return err != nil && s.d.classify(err) == classUnique }

// queryRower is a *sql.DB or a *sql.Tx.
type queryRower interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// exists reports whether query (a SELECT count(*)) finds a row.
func exists(ctx context.Context, q queryRower, query string, args ...any) (bool, error) {
	var n int
	if err := q.QueryRowContext(ctx, query, args...).Scan(&n); err != nil {
		return false, err
	}
	return n > 0, nil
}

// affected returns how many rows res changed.
func affected(res sql.Result) (int64, error) { return res.RowsAffected() }

func unix(t time.Time) int64     { return t.Unix() }
func fromUnix(n int64) time.Time { return time.Unix(n, 0).UTC() }

func fromUnixMilli(n int64) time.Time { return time.UnixMilli(n).UTC() }

// unixMilliOrZero is t in Unix milliseconds, 0 for the zero time.
func unixMilliOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// fromUnixMilliOrZero is fromUnixMilli, with 0 meaning the zero time.
func fromUnixMilliOrZero(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return fromUnixMilli(n)
}

// fromUnixOrZero is fromUnix, with 0 meaning "never" (the zero time).
func fromUnixOrZero(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return fromUnix(n)
}
