package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/tetherhq/tether/internal/pgtest"
)

// After PostgreSQL restarts, every connection the pool kept is dead, and
// the first statement on each fails with SQLSTATE 57P01; transactions
// that meet one run again on a live connection, so that none of those
// started after the restart fails, however many pooled connections died.
func TestPostgresRestartCostsNoTransaction(t *testing.T) {
	pg := pgtest.Start(t) // a server of its own: it is restarted
	s, err := OpenPostgres(ctx, pg.CreateDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	const conns = 16
	fillPool(t, s, conns)

	if err := pg.Restart(ctx); err != nil {
		t.Fatal(err)
	}

	// As many writes at once as the pool held connections, and audit
	// batches: every one succeeds.
	var wg sync.WaitGroup
	fail := make(chan error, 2*conns)
	for i := range conns {
		wg.Go(func() {
			if err := s.AddTenant(ctx, fmt.Sprintf("t%d", i), t0); err != nil {
				fail <- fmt.Errorf("add tenant after the restart: %w", err)
			}
		})
		wg.Go(func() {
			if err := s.AddAudit(ctx, []AuditRecord{{At: t0, Kind: "tenant.add", Outcome: "ok", Tenant: fmt.Sprintf("t%d", i)}}); err != nil {
				fail <- fmt.Errorf("audit batch after the restart: %w", err)
			}
		})
	}
	wg.Wait()
	close(fail)
	for err := range fail {
		t.Error(err)
	}
	tenants, err := s.ListTenants(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(tenants) != conns {
		t.Errorf("%d tenants after the restart, want %d", len(tenants), conns)
	}
}

// An agent's or a backend's lookup right after PostgreSQL restarted, on
// a pooled connection that died with it, is run again on a live one.
func TestPostgresRestartCostsNoLookup(t *testing.T) {
	pg := pgtest.Start(t)
	s, err := OpenPostgres(ctx, pg.CreateDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fillPool(t, s, 8)
	if err := pg.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	fail := make(chan error, 16)
	for i := range 8 {
		wg.Go(func() {
			if _, err := s.Agent(ctx, fmt.Sprintf("a%d", i)); !errors.Is(err, ErrNotFound) {
				fail <- fmt.Errorf("agent lookup after the restart: %v, want not found", err)
			}
		})
		wg.Go(func() {
			if _, err := s.Backend(ctx, fmt.Sprintf("b%d", i)); !errors.Is(err, ErrNotFound) {
				fail <- fmt.Errorf("backend lookup after the restart: %v, want not found", err)
			}
		})
	}
	wg.Wait()
	close(fail)
	for err := range fail {
		t.Error(err)
	}
}

// fillPool has n transactions open at once, each on a connection of its
// own, which the pool keeps once they commit.
func fillPool(t *testing.T, s *Store, n int) {
	t.Helper()
	var in sync.WaitGroup
	in.Add(n)
	all := make(chan struct{})
	errs := make(chan error, n)
	for range n {
		go func() {
			errs <- s.tx(ctx, func(tx *sql.Tx) error {
				in.Done()
				<-all
				_, err := tx.ExecContext(ctx, `SELECT 1`)
				return err
			})
		}()
	}
	in.Wait()
	close(all)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if idle := s.db.Stats().Idle; idle != n {
		t.Fatalf("%d idle connections in the pool, want %d", idle, n)
	}
}

// A connection lost before COMMIT was sent is worth a retry; one lost
// under the COMMIT is not, since the transaction may have committed; one
// that failed before anything was sent is, even for the COMMIT.
func TestRetryableConnectionFailures(t *testing.T) {
	d := postgresDialect{}
	cases := []struct {
		err              error
		class            errClass
		before, atCommit bool
	}{
		{&pgconn.PgError{Code: "57P01"}, classConnLost, true, false},
		{&pgconn.PgError{Code: "57P02"}, classConnLost, true, false},
		{&pgconn.PgError{Code: "57P03"}, classConnLost, true, false},
		{&pgconn.PgError{Code: "08006"}, classConnLost, true, false},
		{fmt.Errorf("read: %w", io.ErrUnexpectedEOF), classConnLost, true, false},
		{fmt.Errorf("commit: %w", pgconn.ErrConnClosed), classConnLost, true, false},
		{&pgconn.PgError{Code: "40001"}, classRetry, true, true},
		{&pgconn.PgError{Code: "23505"}, classUnique, false, false},
		{&pgconn.PgError{Code: "57014"}, classOther, false, false}, // query_canceled
		{&pgconn.PgError{Code: "28P01"}, classOther, false, false}, // invalid_password
	}
	for _, c := range cases {
		got := d.classify(c.err)
		if got != c.class {
			t.Errorf("classify(%v) = %d, want %d", c.err, got, c.class)
		}
		if r := retryable(got, false); r != c.before {
			t.Errorf("%v before COMMIT: retryable %v, want %v", c.err, r, c.before)
		}
		if r := retryable(got, true); r != c.atCommit {
			t.Errorf("%v at COMMIT: retryable %v, want %v", c.err, r, c.atCommit)
		}
	}
}

// A record with a key is stored once however often it is given (a batch
// tried again after its commit's answer was lost, a record read back
// from the audit file), and keeps its place; records without a key are
// stored each time, as before.
func TestAddAuditOnceByKey(t *testing.T) { eachEngine(t, testAddAuditOnceByKey) }

func testAddAuditOnceByKey(t *testing.T, e engine) {
	s, _ := e.open(t)
	batch := []AuditRecord{
		{At: t0, Kind: "tenant.add", Outcome: "ok", Tenant: "acme", Key: "k1"},
		{At: t0, Kind: "tenant.add", Outcome: "ok", Tenant: "acme"},
		{At: t0, Kind: "tenant.add", Outcome: "ok", Tenant: "acme", Key: "k2"},
	}
	if err := s.AddAudit(ctx, batch); err != nil {
		t.Fatal(err)
	}
	first := []int64{batch[0].Seq, batch[1].Seq, batch[2].Seq}
	again := []AuditRecord{batch[0], batch[2], {At: t0, Kind: "tenant.add", Outcome: "ok", Tenant: "acme", Key: "k3"}}
	if err := s.AddAudit(ctx, again); err != nil {
		t.Fatal(err)
	}
	if again[0].Seq != first[0] || again[1].Seq != first[2] {
		t.Errorf("records given again got seq %d, %d; want the seqs they were stored with, %d, %d", again[0].Seq, again[1].Seq, first[0], first[2])
	}
	if again[2].Seq <= first[2] {
		t.Errorf("a new record after them got seq %d, want more than %d", again[2].Seq, first[2])
	}
	recs, err := s.ListAudit(ctx, AuditFilter{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 4 {
		t.Fatalf("%d records stored, want 4 (3, then 1 new)", len(recs))
	}
	if err := s.AddAudit(ctx, []AuditRecord{batch[1]}); err != nil {
		t.Fatal(err)
	}
	if recs, _ := s.ListAudit(ctx, AuditFilter{Tenant: "acme"}); len(recs) != 5 {
		t.Errorf("a record without a key given again: %d records, want 5", len(recs))
	}
}

// Refused tells a write the database refused (it would fail again) from
// one that failed otherwise (it may succeed later).
func TestRefused(t *testing.T) {
	s := &Store{d: postgresDialect{}}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&pgconn.PgError{Code: "22021"}, true}, // invalid byte sequence (a NUL)
		{&pgconn.PgError{Code: "23502"}, true},
		{&pgconn.PgError{Code: "42703"}, true}, // undefined column
		{fmt.Errorf("audit detail: %w", refusedError{errors.New("json: unsupported value: NaN")}), true},
		{&pgconn.PgError{Code: "57P01"}, false},
		{&pgconn.PgError{Code: "53300"}, false}, // too many connections
		{&pgconn.PgError{Code: "40001"}, false},
		{fmt.Errorf("write: %w", context.DeadlineExceeded), false},
		{errors.New("something else"), false},
		{nil, false},
	} {
		if got := s.Refused(c.err); got != c.want {
			t.Errorf("Refused(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// Unreachable tells a read that found no store (it could not connect,
// lost its connection, ran out of time) from one the store answered.
func TestUnreachable(t *testing.T) {
	s := &Store{d: postgresDialect{}}
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"deadline", fmt.Errorf("look up agent: %w", context.DeadlineExceeded), true},
		{"connect", &pgconn.ConnectError{}, true},
		{"admin shutdown", &pgconn.PgError{Code: "57P01"}, true},
		{"connection exception", &pgconn.PgError{Code: "08006"}, true},
		{"reset", fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		{"not found", fmt.Errorf("agent a1: %w", ErrNotFound), false},
		{"canceled", context.Canceled, false},
		{"undefined column", &pgconn.PgError{Code: "42703"}, false},
		{"other", errors.New("something else"), false},
		{"nil", nil, false},
	} {
		if got := s.Unreachable(c.err); got != c.want {
			t.Errorf("%s: Unreachable(%v) = %v, want %v", c.name, c.err, got, c.want)
		}
	}
}
