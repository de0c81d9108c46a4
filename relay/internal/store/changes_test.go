package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestChangeFeed checks that control-plane writes append to the change
// feed in the same transaction, that a follower in the same process is
// woken, and that another process (another Store on the same file, as an
// admin command is) reads the same changes in order.
func TestChangeFeed(t *testing.T) { eachEngine(t, testChangeFeed) }

func testChangeFeed(t *testing.T, e engine) {
	s, path := e.open(t)
	other, err := OpenDSN(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	start, err := other.LatestChange(ctx)
	if err != nil {
		t.Fatal(err)
	}
	woken := s.Changed()
	if err := s.AddTenant(ctx, "acme", t0); err != nil {
		t.Fatal(err)
	}
	select {
	case <-woken:
	case <-time.After(5 * time.Second):
		t.Fatal("a change committed in this process woke no follower")
	}
	if err := s.AddAgent(ctx, Agent{ID: "a1", Tenant: "acme", CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	steps := []func() error{
		func() error { return s.SetLimits(ctx, Limits{Tenant: "acme", MaxAgents: 2, UpdatedAt: t0}) },
		func() error { _, err := s.RevokeAgent(ctx, "a1", "lost", t0); return err },
		func() error { _, err := s.RevokeAgent(ctx, "a1", "again", t0); return err }, // no change: already revoked
		func() error {
			return s.AddBackend(ctx, Backend{Name: "billing", KeyHash: hash("k"), Grants: []Grant{{Tenant: "acme", Service: "*"}}, CreatedAt: t0})
		},
		func() error { return s.Ungrant(ctx, "billing", []Grant{{Tenant: "acme", Service: "db"}}) }, // fails: no change
		func() error { return s.AppendChange(ctx, Change{Kind: ChangeCA}) },
	}
	for i, step := range steps {
		err := step()
		if i == 4 {
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("ungrant of a missing grant: %v", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	got, err := other.Changes(ctx, start, 100)
	if err != nil {
		t.Fatal(err)
	}
	want := []Change{{Kind: ChangeTenant, Tenant: "acme"}, {Kind: ChangeLimits, Tenant: "acme"}, {Kind: ChangeRevoke, Tenant: "acme", Subject: "a1"},
		{Kind: ChangeBackend, Subject: "billing"}, {Kind: ChangeCA}}
	if len(got) != len(want) {
		t.Fatalf("changes: got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i].Kind != want[i].Kind || got[i].Tenant != want[i].Tenant || got[i].Subject != want[i].Subject || (i > 0 && got[i].Seq <= got[i-1].Seq) {
			t.Fatalf("change %d: got %+v, want %+v (in order)", i, got[i], want[i])
		}
	}
	if latest, _ := other.LatestChange(ctx); latest != got[len(got)-1].Seq {
		t.Fatalf("LatestChange = %d, want %d", latest, got[len(got)-1].Seq)
	}
	if rest, _ := other.Changes(ctx, got[1].Seq, 2); len(rest) != 2 || rest[0].Seq != got[2].Seq {
		t.Fatalf("Changes after %d, limit 2: %+v", got[1].Seq, rest)
	}
	// Pruning keeps the newest change, so positions never go back.
	if _, err := s.PruneChanges(ctx, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	oldest, _ := s.OldestChange(ctx)
	latest, _ := s.LatestChange(ctx)
	if oldest != latest || latest != got[len(got)-1].Seq {
		t.Fatalf("after pruning: oldest %d, latest %d; want both %d", oldest, latest, got[len(got)-1].Seq)
	}
}

// TestErrorClasses checks the dialect's classification of real driver
// errors by their codes.
func TestErrorClasses(t *testing.T) {
	s, path := engines[0].open(t)
	if err := s.AddTenant(ctx, "acme", t0); err != nil {
		t.Fatal(err)
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO tenants (name, created_at) VALUES ('acme', 0)`)
	if c := s.d.classify(err); c != classUnique {
		t.Fatalf("duplicate key: class %d (%v), want unique", c, err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO agents (id, tenant, created_at) VALUES ('x', 'nobody', 0)`)
	if c := s.d.classify(err); c != classForeignKey {
		t.Fatalf("missing tenant: class %d (%v), want foreign key", c, err)
	}
	// A second writer that will not wait gets SQLITE_BUSY: worth a retry.
	holder, err := sql.Open("sqlite", "file:"+path+"?_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	tx, err := holder.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	impatient, err := sql.Open("sqlite", "file:"+filepath.Clean(path)+"?_txlock=immediate&_pragma=busy_timeout(0)")
	if err != nil {
		t.Fatal(err)
	}
	defer impatient.Close()
	_, err = impatient.Begin()
	if c := s.d.classify(err); c != classRetry {
		t.Fatalf("write lock held elsewhere: class %d (%v), want retry", c, err)
	}
	if c := s.d.classify(errors.New("UNIQUE constraint failed: not a driver error")); c != classOther {
		t.Fatalf("a message that merely reads like a driver error: class %d, want other", c)
	}
}

func TestConsoleSessions(t *testing.T) { eachEngine(t, testConsoleSessions) }

func testConsoleSessions(t *testing.T, e engine) {
	s, _ := e.open(t)
	if err := s.AddOperatorToken(ctx, OperatorToken{ID: "op1", Name: "alice", SecretHash: hash("x"), CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	cs := ConsoleSession{IDHash: hash("session-1"), Operator: "alice", TokenID: "op1", CSRF: "c1", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	if err := s.AddConsoleSession(ctx, cs); err != nil {
		t.Fatal(err)
	}
	got, err := s.ConsoleSession(ctx, hash("session-1"), t0.Add(time.Minute))
	if err != nil || got.Operator != "alice" || got.TokenID != "op1" || got.CSRF != "c1" || !got.ExpiresAt.Equal(cs.ExpiresAt) {
		t.Fatalf("session: %+v, %v", got, err)
	}
	if _, err := s.ConsoleSession(ctx, hash("session-1"), t0.Add(2*time.Hour)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired session: %v, want ErrNotFound", err)
	}
	// Revoking the token ends its sessions.
	if _, err := s.RevokeOperatorToken(ctx, "op1", t0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ConsoleSession(ctx, hash("session-1"), t0.Add(time.Minute)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("session of a revoked token: %v, want ErrNotFound", err)
	}
	cs.IDHash = hash("session-2")
	s.AddConsoleSession(ctx, cs)
	if ok, err := s.DeleteConsoleSession(ctx, hash("session-2")); !ok || err != nil {
		t.Fatalf("delete: %v, %v", ok, err)
	}
	if ok, _ := s.DeleteConsoleSession(ctx, hash("session-2")); ok {
		t.Fatal("deleted a session twice")
	}
	cs.IDHash = hash("session-3")
	s.AddConsoleSession(ctx, cs)
	if err := s.PruneConsoleSessions(ctx, t0.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	var n int
	s.db.QueryRow(`SELECT count(*) FROM console_sessions`).Scan(&n)
	if n != 0 {
		t.Fatalf("sessions left after pruning: %d", n)
	}
}

// TestFollow checks that a follower sees its own process's changes at once
// (without waiting for a poll), another process's at the next poll, and
// reads everything again when changes it had not read were pruned.
func TestFollow(t *testing.T) { eachEngine(t, testFollow) }

func testFollow(t *testing.T, e engine) {
	s, path := e.open(t)
	other, err := OpenDSN(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	applied := make(chan Change, 16)
	resynced := make(chan struct{}, 1)
	f := Follower{
		Poll:   time.Hour, // only wake-ups in the first part
		Apply:  func(_ context.Context, c Change) error { applied <- c; return nil },
		Resync: func(context.Context) error { resynced <- struct{}{}; return nil },
		Error:  func(err error) { t.Errorf("follow: %v", err) },
	}
	from, _ := s.LatestChange(ctx)
	stop := follow(s, from, f)
	next := func(what string) Change {
		t.Helper()
		select {
		case c := <-applied:
			return c
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no change applied", what)
			return Change{}
		}
	}
	if err := s.AddTenant(ctx, "acme", t0); err != nil {
		t.Fatal(err)
	}
	if c := next("own commit"); c.Kind != ChangeTenant || c.Tenant != "acme" {
		t.Fatalf("own commit: applied %+v", c)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// Another process's change is read at the next poll.
	f.Poll = 50 * time.Millisecond
	from, _ = s.LatestChange(ctx)
	stop = follow(s, from, f)
	defer stop()
	if err := other.SetLimits(ctx, Limits{Tenant: "acme", MaxAgents: 1, UpdatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if c := next("other process"); c.Kind != ChangeLimits {
		t.Fatalf("other process: applied %+v", c)
	}
	stop()

	// Changes pruned before the follower read them: it resyncs.
	from, _ = s.LatestChange(ctx)
	for _, name := range []string{"b1", "b2", "b3"} {
		if err := other.AddTenant(ctx, name, t0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := other.PruneChanges(ctx, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	stop = follow(s, from, f)
	defer stop()
	select {
	case <-resynced:
	case <-time.After(10 * time.Second):
		t.Fatal("no resync after unread changes were pruned")
	}
	if c := next("after resync"); c.Tenant != "b3" {
		t.Fatalf("after resync: applied %+v, want the newest change (b3)", c)
	}
}

// TestFollowApplyStall: a change whose Apply the store does not answer
// in time (its context's deadline passes) is applied again at the next
// poll, not skipped; a change whose Apply fails otherwise is reported and
// passed over, so that one that can never apply does not stop the feed.
func TestFollowApplyStall(t *testing.T) { eachEngine(t, testFollowApplyStall) }

func testFollowApplyStall(t *testing.T, e engine) {
	s, _ := e.open(t)
	type call struct {
		c        Change
		deadline bool
	}
	calls := make(chan call, 16)
	errs := make(chan error, 16)
	stalls, broken := 1, errors.New("cannot apply")
	from, _ := s.LatestChange(ctx)
	defer follow(s, from, Follower{Poll: 20 * time.Millisecond, ReadTimeout: 500 * time.Millisecond,
		Apply: func(actx context.Context, c Change) error {
			_, ok := actx.Deadline()
			calls <- call{c, ok}
			switch {
			case c.Tenant == "stalls" && stalls > 0:
				stalls--
				<-actx.Done() // a store that does not answer
				return fmt.Errorf("read: %w", actx.Err())
			case c.Tenant == "broken":
				return broken
			}
			return nil
		},
		Error: offer(errs),
	})()
	next := func(what string) call {
		t.Helper()
		select {
		case c := <-calls:
			if !c.deadline {
				t.Fatalf("%s: Apply's context has no deadline", what)
			}
			return c
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no change applied", what)
			return call{}
		}
	}
	for _, name := range []string{"stalls", "broken", "after"} {
		if err := s.AddTenant(ctx, name, t0); err != nil {
			t.Fatal(err)
		}
	}
	first := next("the stalling change")
	if first.c.Tenant != "stalls" {
		t.Fatalf("first applied %+v, want the stalling change", first.c)
	}
	if err := nextErr(t, errs, "apply change"); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "applied again") {
		t.Fatalf("the stall reported %v, want its deadline, saying the change is applied again", err)
	}
	if again := next("the stalled change again"); again.c.Seq != first.c.Seq {
		t.Fatalf("after the stall applied %+v, want the stalled change (seq %d) again", again.c, first.c.Seq)
	}
	if c := next("the broken change"); c.c.Tenant != "broken" {
		t.Fatalf("applied %+v, want the broken change", c.c)
	}
	if err := nextErr(t, errs, "apply change"); !errors.Is(err, broken) {
		t.Fatalf("the broken change reported %v, want its error", err)
	}
	if c := next("the change after"); c.c.Tenant != "after" {
		t.Fatalf("applied %+v, want the change after the broken one (it is passed over)", c.c)
	}
}

// TestFollowResyncStall: a resync (changes were pruned before the
// follower read them) that the store does not answer in time is done
// again at the next poll, before any later change is applied.
func TestFollowResyncStall(t *testing.T) { eachEngine(t, testFollowResyncStall) }

func testFollowResyncStall(t *testing.T, e engine) {
	s, _ := e.open(t)
	from, _ := s.LatestChange(ctx)
	if err := s.AddTenant(ctx, "seen", t0); err != nil {
		t.Fatal(err)
	}
	from++ // the follower has applied "seen"; the changes after it go unread
	for _, name := range []string{"b1", "b2", "b3"} {
		if err := s.AddTenant(ctx, name, t0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.PruneChanges(ctx, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	events := make(chan string, 16)
	errs := make(chan error, 16)
	stalls := 1
	defer follow(s, from, Follower{Poll: 20 * time.Millisecond, ReadTimeout: 500 * time.Millisecond, ResyncTimeout: 300 * time.Millisecond,
		Apply: func(_ context.Context, c Change) error { events <- "apply " + c.Tenant; return nil },
		Resync: func(rctx context.Context) error {
			if _, ok := rctx.Deadline(); !ok {
				t.Error("Resync's context has no deadline")
			}
			if stalls > 0 {
				stalls--
				events <- "resync stalled"
				<-rctx.Done()
				return fmt.Errorf("read limits: %w", rctx.Err())
			}
			events <- "resync"
			return nil
		},
		Error: offer(errs),
	})()
	var got []string
	for len(got) < 3 {
		select {
		case ev := <-events:
			got = append(got, ev)
		case <-time.After(10 * time.Second):
			t.Fatalf("after %v: nothing more within 10 s", got)
		}
	}
	// Pruning keeps the newest change (b3), which follows the resync.
	if want := []string{"resync stalled", "resync", "apply b3"}; !slices.Equal(got, want) {
		t.Fatalf("the follower did %v, want %v", got, want)
	}
	if err := nextErr(t, errs, "read the whole state again"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the stalled resync reported %v, want its deadline", err)
	}
}

// offer is a Follower.Error that sends each error on ch, or drops it when
// ch is full: the follower never waits on the test.
func offer(ch chan error) func(error) {
	return func(err error) {
		select {
		case ch <- err:
		default:
		}
	}
}

// nextErr is the next error on errs that starts with prefix (a slow read
// on a loaded machine may report its own first).
func nextErr(t *testing.T, errs <-chan error, prefix string) error {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case err := <-errs:
			if strings.HasPrefix(err.Error(), prefix) {
				return err
			}
		case <-deadline:
			t.Fatalf("no error %q… reported within 10 s", prefix)
			return nil
		}
	}
}

// follow runs s.Follow from from with f on a goroutine of its own; stop
// ends it, waits for it and returns what Follow returned (once; later
// calls return the same).
func follow(s *Store, from int64, f Follower) (stop func() error) {
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Follow(fctx, from, f) }()
	return sync.OnceValue(func() error {
		cancel()
		return <-done
	})
}

// TestErrorClassesPostgres checks the PostgreSQL dialect's classification
// of real server errors by SQLSTATE, and that a serialization failure is
// retried to success.
func TestErrorClassesPostgres(t *testing.T) {
	s, dsn := engines[1].open(t)
	if err := s.AddTenant(ctx, "acme", t0); err != nil {
		t.Fatal(err)
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO tenants (name, created_at) VALUES ('acme', 0)`)
	if c := s.d.classify(err); c != classUnique {
		t.Fatalf("duplicate key: class %d (%v), want unique", c, err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO agents (id, tenant, created_at) VALUES ('x', 'nobody', 0)`)
	if c := s.d.classify(err); c != classForeignKey {
		t.Fatalf("missing tenant: class %d (%v), want foreign key", c, err)
	}
	// Two serializable transactions that each read what the other
	// writes: one of them fails with 40001.
	other, err := OpenDSN(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	serial := func(st *Store) (*sql.Tx, error) {
		tx, err := st.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable})
		if err != nil {
			return nil, err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM tenants`).Scan(&n); err != nil {
			tx.Rollback()
			return nil, err
		}
		return tx, nil
	}
	a, err := serial(s)
	if err != nil {
		t.Fatal(err)
	}
	b, err := serial(other)
	if err != nil {
		t.Fatal(err)
	}
	_, errA := a.ExecContext(ctx, `INSERT INTO tenants (name, created_at) VALUES ('a', 0)`)
	_, errB := b.ExecContext(ctx, `INSERT INTO tenants (name, created_at) VALUES ('b', 0)`)
	if errA != nil || errB != nil {
		t.Fatalf("inserts: %v, %v", errA, errB)
	}
	errA, errB = a.Commit(), b.Commit()
	if (errA == nil) == (errB == nil) {
		t.Fatalf("both or neither of two conflicting serializable transactions committed: %v, %v", errA, errB)
	}
	if c := s.d.classify(errors.Join(errA, errB)); c != classRetry {
		t.Fatalf("serialization failure: class %d (%v %v), want retry", c, errA, errB)
	}
	// tx runs a function that fails with 40001 again until it succeeds.
	tries := 0
	err = s.tx(ctx, func(tx *sql.Tx) error {
		if tries++; tries < 3 {
			_, err := tx.ExecContext(ctx, `DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$`)
			return err
		}
		return nil
	})
	if err != nil || tries != 3 {
		t.Fatalf("retried transaction: %v after %d tries, want success after 3", err, tries)
	}
}

// TestFollowNotifiedPostgres checks that on PostgreSQL a change committed
// by another process reaches a follower through LISTEN/NOTIFY, without
// waiting for a poll.
func TestFollowNotifiedPostgres(t *testing.T) {
	s, dsn := engines[1].open(t)
	other, err := OpenDSN(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	applied := make(chan Change, 4)
	read := make(chan struct{}, 1)
	from, _ := s.LatestChange(ctx)
	defer follow(s, from, Follower{Poll: time.Hour, Apply: func(_ context.Context, c Change) error { applied <- c; return nil },
		Resync: func(context.Context) error { t.Error("unexpected resync"); return nil },
		Read: func(time.Time) {
			select {
			case read <- struct{}{}:
			default:
			}
		}})()
	<-read // the first read, at start, is over: what follows needs a notice
	// The listener may not be listening yet; once one change has been
	// applied it is (a change after the first read arrives only through
	// it), so the next one must come by a notice.
	wait := func(name string) bool {
		if err := other.AddTenant(ctx, name, t0); err != nil {
			t.Fatal(err)
		}
		select {
		case c := <-applied:
			if c.Kind != ChangeTenant || c.Tenant != name {
				t.Fatalf("applied %+v, want tenant %s", c, name)
			}
			return true
		case <-time.After(5 * time.Second):
			return false
		}
	}
	for i := 0; !wait(fmt.Sprintf("t%d", i)); i++ {
		if i == 5 {
			t.Fatal("no change from another process reached the follower, with polling off")
		}
	}
	if !wait("notified") {
		t.Fatal("a change from another process did not reach a listening follower within 5 s, with polling off")
	}
}

// TestFollowReadTimeoutPostgres: a read of the feed that the database
// never answers (the changes table locked by another session) fails
// after the follower's ReadTimeout and is tried again, so that the
// follower reads on once the database answers, instead of hanging in
// that read for as long as the database does.
func TestFollowReadTimeoutPostgres(t *testing.T) {
	s, dsn := engines[1].open(t)
	other, err := OpenDSN(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	applied := make(chan Change, 4)
	failed := make(chan error, 16)
	read := make(chan struct{}, 16)
	from, _ := s.LatestChange(ctx)
	defer follow(s, from, Follower{Poll: 50 * time.Millisecond, ReadTimeout: 200 * time.Millisecond,
		Apply: func(_ context.Context, c Change) error { applied <- c; return nil },
		Read: func(time.Time) {
			select {
			case read <- struct{}{}:
			default:
			}
		},
		Error: offer(failed)})()
	<-read

	tx, err := other.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "LOCK TABLE changes IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-failed:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("the read of the locked feed failed with %v, want its deadline", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a read of the locked feed neither failed nor returned within 20 s (its timeout is 200 ms)")
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := other.AddTenant(ctx, "after-the-lock", t0); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-applied:
		if c.Tenant != "after-the-lock" {
			t.Fatalf("applied %+v, want the tenant added after the lock", c)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the follower did not read on once the lock was gone")
	}
}
