package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// postgresDialect is PostgreSQL through pgx, for several relays sharing
// one store.
type postgresDialect struct {
	dsn string // for the connection that listens for change notices
}

// notifyChannel is the channel a writer of the change feed notifies in
// its transaction; the notice is delivered when the transaction commits.
const notifyChannel = "tether_changes"

// changesLockKey is the transaction-level advisory lock that orders the
// writers of the change feed (and the migrations).
const changesLockKey = 0x7465746865720001

// IsPostgres reports whether dsn names a PostgreSQL database
// (postgres:// or postgresql://) rather than a SQLite file.
func IsPostgres(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// OpenPostgres connects to the PostgreSQL database dsn (a postgres:// URL)
// and applies pending migrations. It refuses, with a SchemaTooNewError, a
// store whose schema requires a binary newer than this one.
func OpenPostgres(ctx context.Context, dsn string, opts ...Option) (*Store, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("store address: %w", err)
	}
	tuneConnConfig(cfg)
	// A pooled connection is pinged before it is reused when it has been
	// idle over a second (pgx's default), and when it was last taken
	// before a connection of the pool was found lost: the server
	// restarted or a pooler dropped its clients, and the others are
	// likely gone too, so they are found dead and replaced by the pool
	// rather than failing one transaction each.
	lost := new(atomic.Int64)
	db := stdlib.OpenDB(*cfg, stdlib.OptionShouldPing(func(_ context.Context, p stdlib.ShouldPingParams) bool {
		return p.IdleDuration > time.Second || time.Now().Add(-p.IdleDuration).UnixNano() <= lost.Load()
	}))
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	db.SetConnMaxIdleTime(5 * time.Minute)
	s := newStore(db, postgresDialect{dsn: dsn}, lost, opts)
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate %s: %w", redact(cfg), err)
	}
	return s, nil
}

// storeConnectTimeout bounds the making of a connection to PostgreSQL
// (TCP, TLS, the startup), where the address gives no connect_timeout:
// without one, a connection to a server that vanished without a reset
// waits for the kernel to give up, minutes.
const storeConnectTimeout = 10 * time.Second

// storeKeepAlive probes a connection idle for 15 s every 5 s and ends it
// after 3 probes unanswered: a server gone without a reset (a failover
// whose old primary vanished, a host powered off) is noticed within 30 s
// of silence, rather than Go's default (15 s, then 9 probes 15 s apart:
// 2.5 min).
var storeKeepAlive = net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3}

// tuneConnConfig gives the connections cfg makes a connect timeout
// (storeConnectTimeout, unless the address gives connect_timeout) and
// TCP keepalive (storeKeepAlive).
func tuneConnConfig(cfg *pgx.ConnConfig) {
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = storeConnectTimeout
	}
	d := &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAliveConfig: storeKeepAlive}
	cfg.DialFunc = d.DialContext
}

// listenCheckEvery is how long the listen connection may go without a
// notice before it is pinged, and listenPingTimeout how long the ping
// has: keepalive does not find a connection whose peer still answers TCP
// but no longer PostgreSQL (a proxy or load balancer in front of a server
// that vanished), and a listener that stays on one misses the full
// resync it does when it connects again.
var (
	listenCheckEvery  = 30 * time.Second
	listenPingTimeout = 10 * time.Second
)

// redact names a database without its password.
func redact(cfg *pgx.ConnConfig) string {
	return fmt.Sprintf("postgres://%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}

func (postgresDialect) classify(err error) errClass {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "23505": // unique_violation
			return classUnique
		case pe.Code == "23503": // foreign_key_violation
			return classForeignKey
		case pe.Code == "40001", pe.Code == "40P01": // serialization_failure, deadlock_detected
			return classRetry
		case pe.Code == "55P03": // lock_not_available: lock_timeout, a migration's
			return classLockTimeout
		case pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03":
			// admin_shutdown (a restart, pg_terminate_backend, a pooler),
			// crash_shutdown, cannot_connect_now (starting up, shutting
			// down): the server ended the connection or refused a new one.
			if connectFailed(err) {
				return classConnUnsent
			}
			return classConnLost
		case strings.HasPrefix(pe.Code, "08"): // connection_exception
			if connectFailed(err) {
				return classConnUnsent
			}
			return classConnLost
		}
		return classOther
	}
	switch {
	case pgconn.Timeout(err):
		// A statement that timed out: the server may still be working on
		// it, and the caller's time is spent.
		return classOther
	case pgconn.SafeToRetry(err), errors.Is(err, driver.ErrBadConn), connectFailed(err):
		return classConnUnsent // nothing reached the server
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, pgconn.ErrConnClosed): // closed by a failure earlier in the same operation
		return classConnLost
	}
	return classOther
}

// refused: a data exception (22: text that is not UTF-8 or holds a NUL,
// a number out of range), an integrity constraint (23), a statement
// the database does not know (42: a column or table missing).
func (postgresDialect) refused(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	return strings.HasPrefix(pe.Code, "22") || strings.HasPrefix(pe.Code, "23") || strings.HasPrefix(pe.Code, "42")
}

// connectFailed reports whether err is a failure to make a connection (to
// reach the server, or to be let in): nothing was sent on it.
func connectFailed(err error) bool {
	var ce *pgconn.ConnectError
	return errors.As(err, &ce)
}

func (postgresDialect) nowMillis() string {
	return `CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)`
}

func (postgresDialect) ddl(portable string) string {
	return strings.NewReplacer("{{serial}}", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "{{blob}}", "BYTEA").Replace(portable)
}

// orderChanges takes the advisory lock that writers of the feed share,
// held until the transaction ends: their sequence numbers are then
// allocated in commit order.
func (postgresDialect) orderChanges(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(changesLockKey))
	return err
}

// lockRows takes the row lock that updates take when they leave the key
// alone: the rows' lockers wait for each other, while inserts whose
// foreign keys refer to the rows (which take KEY SHARE) do not wait.
func (postgresDialect) lockRows() string { return " FOR NO KEY UPDATE" }

// lockStatements are session advisory locks: held by the connection until
// released or until it closes.
func (postgresDialect) lockStatements() (string, string) {
	return `SELECT pg_advisory_lock($1)`, `SELECT pg_advisory_unlock($1)`
}

func (postgresDialect) tryLockStatement() string { return `SELECT pg_try_advisory_lock($1)` }

// lockTimeout is SET LOCAL lock_timeout: it ends with the transaction.
// It bounds each wait for a lock, the advisory lock's too: run it once
// the transaction holds that one.
func (postgresDialect) lockTimeout(d time.Duration) string {
	return fmt.Sprintf("SET LOCAL lock_timeout = %d", d.Milliseconds())
}

// agentUpdateSeq is the id of the transaction that writes the row (64
// bits: it never wraps). Writers of a cluster neither wait for one another
// nor commit in the order of their ids; agentUpdateMark makes up for it.
func (postgresDialect) agentUpdateSeq(string) string {
	return `CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT)`
}

// agentUpdateMark is the oldest transaction still running (the xmin of a
// snapshot taken now): a transaction whose rows a later read does not see
// was running when that read's snapshot was taken, or began after it, and
// either way its id is at least this one. Rows of transactions that
// committed meanwhile are read again: a long transaction elsewhere in the
// database makes reads longer, never wrong.
func (postgresDialect) agentUpdateMark(ctx context.Context, q queryRower) (int64, error) {
	var mark int64
	err := q.QueryRowContext(ctx, `SELECT CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS TEXT) AS BIGINT)`).Scan(&mark)
	return mark, err
}

func (postgresDialect) insertIDQuery(query, key string) string { return query + " RETURNING " + key }

func (postgresDialect) execInsertID(ctx context.Context, stmt *sql.Stmt, args ...any) (int64, error) {
	var id int64
	err := stmt.QueryRowContext(ctx, args...).Scan(&id)
	return id, err
}

func (postgresDialect) notifyChanges(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, `SELECT pg_notify($1, '')`, notifyChannel)
	return err
}

// listen holds a connection of its own that LISTENs for change notices
// and calls wake for each, and once after every (re)connection, since
// notices sent while it was away are lost (the feed itself is not). It
// reconnects with a jittered backoff until ctx ends.
func (d postgresDialect) listen(ctx context.Context, wake, reconnected func(), failed func(error)) {
	backoff := 100 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		err := d.listenOnce(ctx, func() {
			if !first {
				reconnected()
			}
			first = false
		}, wake)
		if ctx.Err() != nil {
			return
		}
		if failed != nil {
			failed(fmt.Errorf("listen for change notices: %w", err))
		}
		t := time.NewTimer(backoff/2 + rand.N(backoff))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (d postgresDialect) listenOnce(ctx context.Context, listening, wake func()) error {
	cfg, err := pgx.ParseConfig(d.dsn)
	if err != nil {
		return err
	}
	tuneConnConfig(cfg)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return err
	}
	listening()
	wake() // whatever was notified while no connection listened
	for {
		// A wait cut short by its deadline leaves the connection as it
		// was (pgconn only sets a deadline on the socket).
		wctx, cancel := context.WithTimeout(ctx, listenCheckEvery)
		_, err := conn.WaitForNotification(wctx)
		cancel()
		if err == nil {
			wake()
			continue
		}
		if ctx.Err() != nil || !pgconn.Timeout(err) {
			return err
		}
		// Quiet for listenCheckEvery: is anyone there?
		pctx, cancel := context.WithTimeout(ctx, listenPingTimeout)
		err = conn.Ping(pctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("the connection did not answer a ping within %v after %v without a notice: %w", listenPingTimeout, listenCheckEvery, err)
		}
	}
}
