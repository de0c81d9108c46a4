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

	"github.com/jackc/pgx/v5/pgconn"
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
// poll, not skipped; a change whose Apply keeps failing otherwise is
// reported and, after RetryFor, passed over, so that one that can never
// apply does not stop the feed.
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
	defer follow(s, from, Follower{Poll: 20 * time.Millisecond, ReadTimeout: 500 * time.Millisecond, RetryFor: 100 * time.Millisecond,
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
	// It is applied again for RetryFor, then passed over.
	c := next("the change after")
	for c.c.Tenant == "broken" {
		c = next("the change after")
	}
	if c.c.Tenant != "after" {
		t.Fatalf("applied %+v, want the change after the broken one (it is passed over)", c.c)
	}
	err := nextErr(t, errs, "apply change")
	for !errors.Is(err, ErrPassedOver) {
		err = nextErr(t, errs, "apply change")
	}
	if !errors.Is(err, broken) {
		t.Fatalf("passing over the broken change reported %v, want its error", err)
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

// TestFollowApplyRetry: a change whose Apply fails for a moment, other
// than by its deadline (a connection the server terminated, a statement
// it cancelled), is applied again at the next poll, before the changes
// after it; the follower is not told it is current (Read) meanwhile.
func TestFollowApplyRetry(t *testing.T) { eachEngine(t, testFollowApplyRetry) }

func testFollowApplyRetry(t *testing.T, e engine) {
	s, _ := e.open(t)
	var log eventLog
	errs := make(chan error, 64)
	fails, flaky := 2, errors.New("connection terminated")
	from, _ := s.LatestChange(ctx)
	defer follow(s, from, Follower{Poll: 20 * time.Millisecond, ReadTimeout: 500 * time.Millisecond,
		Apply: func(_ context.Context, c Change) error {
			if c.Tenant == "flaky" && fails > 0 {
				fails--
				log.add("fail " + c.Tenant)
				return flaky
			}
			log.add("apply " + c.Tenant)
			return nil
		},
		Read:  func(time.Time) { log.add("read") },
		Error: offer(errs),
	})()
	for _, name := range []string{"flaky", "after1", "after2"} {
		if err := s.AddTenant(ctx, name, t0); err != nil {
			t.Fatal(err)
		}
	}
	got := log.waitFor(t, "apply after2")
	var applied []string
	pending := false
	for _, ev := range got {
		switch {
		case ev == "fail flaky":
			pending = true
		case ev == "apply flaky":
			pending = false
		case ev == "read" && pending:
			t.Fatalf("the follower was told it is current while a change it failed to apply was pending: %v", got)
		}
		if strings.HasPrefix(ev, "apply ") || strings.HasPrefix(ev, "fail ") {
			applied = append(applied, ev)
		}
	}
	if want := []string{"fail flaky", "fail flaky", "apply flaky", "apply after1", "apply after2"}; !slices.Equal(applied, want) {
		t.Fatalf("the follower did %v, want %v: the failed change applied again, then those after it, in order", applied, want)
	}
	if err := nextErr(t, errs, "apply change"); !errors.Is(err, flaky) || !strings.Contains(err.Error(), "applied again") {
		t.Fatalf("the failure reported %v, want its error, saying the change is applied again", err)
	}
}

// TestFollowApplyPassedOver: a change whose Apply keeps failing is tried
// again for RetryFor, at least three times, the follower not told it is
// current meanwhile; then it is passed over, loudly (ErrPassedOver), the
// whole state is read again, and the changes after it are applied.
func TestFollowApplyPassedOver(t *testing.T) { eachEngine(t, testFollowApplyPassedOver) }

func testFollowApplyPassedOver(t *testing.T, e engine) {
	s, _ := e.open(t)
	var log eventLog
	errs := make(chan error, 64)
	broken := errors.New("cannot apply")
	const retryFor = 300 * time.Millisecond
	var firstFail, passedAt time.Time
	from, _ := s.LatestChange(ctx)
	defer follow(s, from, Follower{Poll: 20 * time.Millisecond, ReadTimeout: 500 * time.Millisecond, RetryFor: retryFor,
		Apply: func(_ context.Context, c Change) error {
			if c.Tenant == "broken" {
				if firstFail.IsZero() {
					firstFail = time.Now()
				}
				log.add("fail " + c.Tenant)
				return broken
			}
			log.add("apply " + c.Tenant)
			return nil
		},
		Resync: func(context.Context) error {
			log.add("resync")
			return nil
		},
		Read: func(time.Time) { log.add("read") },
		Error: func(err error) {
			if errors.Is(err, ErrPassedOver) {
				passedAt = time.Now()
				log.add("passed over")
			}
			offer(errs)(err)
		},
	})()
	for _, name := range []string{"broken", "after"} {
		if err := s.AddTenant(ctx, name, t0); err != nil {
			t.Fatal(err)
		}
	}
	got := log.waitFor(t, "apply after")
	log.waitFor(t, "resync")
	fails, passed := 0, false
	for _, ev := range log.all() {
		switch ev {
		case "fail broken":
			if passed {
				t.Fatalf("the broken change was tried again after it was passed over: %v", got)
			}
			fails++
		case "passed over":
			passed = true
		case "read":
			if fails > 0 && !passed {
				t.Fatalf("the follower was told it is current while the broken change was pending: %v", got)
			}
		case "apply after":
			if !passed {
				t.Fatalf("the change after the broken one was applied before it was passed over: %v", got)
			}
		}
	}
	if fails < 3 {
		t.Fatalf("the broken change was tried %d times, want at least 3 before it is passed over: %v", fails, got)
	}
	if took := passedAt.Sub(firstFail); took < retryFor {
		t.Fatalf("the broken change was passed over %v after its first failure, want at least RetryFor (%v)", took, retryFor)
	}
	err := nextErr(t, errs, "apply change")
	for !errors.Is(err, ErrPassedOver) {
		if !errors.Is(err, broken) || !strings.Contains(err.Error(), "applied again") {
			t.Fatalf("a failure of the broken change reported %v, want its error, saying it is applied again", err)
		}
		err = nextErr(t, errs, "apply change")
	}
	if !errors.Is(err, broken) || !strings.Contains(err.Error(), "read again") {
		t.Fatalf("passing over reported %v, want its error, saying the state is read again", err)
	}
}

// TestFollowResyncRetry: a resync after a gap in the feed (changes pruned
// unread) that fails for a moment, other than by its deadline, is done
// again at the next poll, before any change after the gap is applied;
// a resync asked for otherwise that fails is asked again, the feed
// going on meanwhile.
func TestFollowResyncRetry(t *testing.T) { eachEngine(t, testFollowResyncRetry) }

func testFollowResyncRetry(t *testing.T, e engine) {
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
	var log eventLog
	errs := make(chan error, 64)
	fails, lost := 1, errors.New("too many clients")
	defer follow(s, from, Follower{Poll: 20 * time.Millisecond, ReadTimeout: 500 * time.Millisecond,
		Apply: func(_ context.Context, c Change) error { log.add("apply " + c.Tenant); return nil },
		Resync: func(context.Context) error {
			if fails > 0 {
				fails--
				log.add("resync failed")
				return lost
			}
			log.add("resync")
			return nil
		},
		Error: offer(errs),
	})()
	// Pruning keeps the newest change (b3), which follows the resync.
	got := log.waitFor(t, "apply b3")
	if want := []string{"resync failed", "resync", "apply b3"}; !slices.Equal(got, want) {
		t.Fatalf("the follower did %v, want %v", got, want)
	}
	if err := nextErr(t, errs, "read the whole state again"); !errors.Is(err, lost) {
		t.Fatalf("the failed resync reported %v, want its error", err)
	}
}

// TestFollowResyncAgain: a resync asked for by a change passed over that
// fails is done again, at the next poll, then after a wait that doubles;
// the feed is followed meanwhile.
func TestFollowResyncAgain(t *testing.T) { eachEngine(t, testFollowResyncAgain) }

func testFollowResyncAgain(t *testing.T, e engine) {
	s, _ := e.open(t)
	var log eventLog
	errs := make(chan error, 64)
	fails, lost := 2, errors.New("out of memory")
	from, _ := s.LatestChange(ctx)
	defer follow(s, from, Follower{Poll: 20 * time.Millisecond, ReadTimeout: 500 * time.Millisecond, RetryFor: 50 * time.Millisecond,
		Apply: func(_ context.Context, c Change) error {
			if c.Tenant == "broken" {
				return errors.New("cannot apply")
			}
			log.add("apply " + c.Tenant)
			return nil
		},
		Resync: func(context.Context) error {
			if fails > 0 {
				fails--
				log.add("resync failed")
				return lost
			}
			log.add("resync")
			return nil
		},
		Read:  func(time.Time) { log.add("read") },
		Error: offer(errs),
	})()
	for _, name := range []string{"broken", "after"} {
		if err := s.AddTenant(ctx, name, t0); err != nil {
			t.Fatal(err)
		}
	}
	got := log.waitFor(t, "resync")
	i := slices.Index(got, "apply after")
	if i < 0 {
		t.Fatalf("resynced before the change after the broken one was applied: %v", got)
	}
	var did []string
	for _, ev := range got[i:] { // after any read before the changes
		if len(did) == 0 || did[len(did)-1] != ev { // reads in a row as one
			did = append(did, ev)
		}
	}
	if want := []string{"apply after", "read", "resync failed", "read", "resync failed", "read", "resync"}; !slices.Equal(did, want) {
		t.Fatalf("the follower did %v, want %v", did, want)
	}
	for i, when := range []string{"at the next poll", "in 20ms"} {
		err := nextErr(t, errs, "read the whole state again")
		if !errors.Is(err, lost) || !strings.Contains(err.Error(), fmt.Sprintf("attempt %d failed; tried again %s", i+1, when)) {
			t.Fatalf("failed resync %d reported %v, want its error, saying it is tried again %s", i+1, err, when)
		}
	}
}

// eventLog is what a follower did, in order.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) add(ev string) {
	l.mu.Lock()
	l.events = append(l.events, ev)
	l.mu.Unlock()
}

func (l *eventLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

// waitFor waits up to 10 s for ev and returns the events up to it.
func (l *eventLog) waitFor(t *testing.T, ev string) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := l.all()
		if i := slices.Index(got, ev); i >= 0 {
			return got[:i+1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q within 10 s; the follower did %v", ev, got)
		}
		time.Sleep(5 * time.Millisecond)
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

// TestFollowApplyTerminatedPostgres: a change whose apply fails because
// the server terminated the connection it read on (SQLSTATE 57P01, as an
// administrator or a pooler does) is applied again at the next poll, and
// the follower is not told it is current meanwhile.
func TestFollowApplyTerminatedPostgres(t *testing.T) {
	s, dsn := engines[1].open(t)
	other, err := OpenDSN(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.AddTenant(ctx, "acme", t0); err != nil {
		t.Fatal(err)
	}
	// terminate ends the follower's pooled connections, but not its
	// listener nor the one it runs on, and waits for them to be gone.
	terminate := func() error {
		conn, err := other.db.Conn(ctx)
		if err != nil {
			return err
		}
		defer conn.Close()
		rows, err := conn.QueryContext(ctx, `SELECT pid FROM pg_stat_activity
			WHERE datname = current_database() AND backend_type = 'client backend'
			AND pid <> pg_backend_pid() AND query NOT LIKE 'LISTEN%'`)
		if err != nil {
			return err
		}
		var pids []string
		for rows.Next() {
			var pid int
			if err := rows.Scan(&pid); err != nil {
				rows.Close()
				return err
			}
			pids = append(pids, fmt.Sprint(pid))
		}
		if err := rows.Err(); err != nil || len(pids) == 0 {
			return errors.Join(err, errors.New("no connection to terminate"))
		}
		for _, pid := range pids {
			if _, err := conn.ExecContext(ctx, `SELECT pg_terminate_backend(`+pid+`)`); err != nil {
				return err
			}
		}
		for deadline := time.Now().Add(10 * time.Second); ; {
			var n int
			if err := conn.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity WHERE pid IN (`+strings.Join(pids, ",")+`)`).Scan(&n); err != nil {
				return err
			}
			if n == 0 {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("terminated connections %v still there after 10 s", pids)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	var log eventLog
	errs := make(chan error, 64)
	terminated := false
	from, _ := s.LatestChange(ctx)
	defer follow(s, from, Follower{Poll: 50 * time.Millisecond,
		Apply: func(actx context.Context, c Change) error {
			if c.Kind != ChangeLimits {
				return nil
			}
			if !terminated {
				terminated = true
				if err := terminate(); err != nil {
					t.Errorf("terminate the follower's connections: %v", err)
				}
			}
			// As the relay does for a change of limits.
			all, err := s.AllLimits(actx)
			if err != nil {
				log.add("fail")
				return err
			}
			log.add(fmt.Sprintf("apply max_agents=%d", all["acme"].MaxAgents))
			return nil
		},
		Read:  func(time.Time) { log.add("read") },
		Error: offer(errs),
	})()
	log.waitFor(t, "read") // the follower has read the feed, on a pooled connection
	if err := other.SetLimits(ctx, Limits{Tenant: "acme", MaxAgents: 7, UpdatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	got := log.waitFor(t, "apply max_agents=7")
	i := slices.Index(got, "fail")
	if i < 0 {
		t.Fatalf("no apply failed after the follower's connections were terminated (the test did not reproduce it): %v", got)
	}
	if slices.Contains(got[i:], "read") {
		t.Fatalf("the follower was told it is current while the change was pending: %v", got[i:])
	}
	var pe *pgconn.PgError
	if err := nextErr(t, errs, "apply change"); !errors.As(err, &pe) || pe.Code != "57P01" || !strings.Contains(err.Error(), "applied again") {
		t.Fatalf("the failure reported %v, want the server's 57P01, saying the change is applied again", err)
	}
}

func TestConsoleSessionBounds(t *testing.T) { eachEngine(t, testConsoleSessionBounds) }

// testConsoleSessionBounds: TrimConsoleSessions keeps a credential's newest
// sessions and no one else's; CountScopedConsoleSessions counts tenants'
// sessions, not vendor operators'.
func testConsoleSessionBounds(t *testing.T, e engine) {
	s, _ := e.open(t)
	add := func(name, token, tenant string, at time.Time) {
		t.Helper()
		role := "viewer"
		if tenant == "" {
			role = "vendor"
		}
		if err := s.AddConsoleSession(ctx, ConsoleSession{IDHash: hash(name), Operator: "o", TokenID: token, Tenant: tenant, Role: role, CSRF: "c",
			CreatedAt: at, ExpiresAt: at.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		add(fmt.Sprintf("vic-%d", i), "vic", "acme", t0.Add(time.Duration(i)*time.Second))
	}
	add("ann", "ann", "acme", t0)
	add("gil", "gil", "globex", t0)
	add("vera", "vera", "", t0)
	if all, acme, err := s.CountScopedConsoleSessions(ctx, "acme"); err != nil || all != 7 || acme != 6 {
		t.Fatalf("CountScopedConsoleSessions(acme) = %d, %d, %v; want 7, 6", all, acme, err)
	}
	if all, none, err := s.CountScopedConsoleSessions(ctx, "initech"); err != nil || all != 7 || none != 0 {
		t.Fatalf("CountScopedConsoleSessions(initech) = %d, %d, %v; want 7, 0", all, none, err)
	}
	if n, err := s.TrimConsoleSessions(ctx, "vic", "", "", 2); err != nil || n != 3 {
		t.Fatalf("TrimConsoleSessions(vic, 2) = %d, %v; want 3 ended", n, err)
	}
	for name, live := range map[string]bool{"vic-0": false, "vic-1": false, "vic-2": false, "vic-3": true, "vic-4": true, "ann": true, "gil": true, "vera": true} {
		_, err := s.ConsoleSession(ctx, hash(name), t0)
		if (err == nil) != live {
			t.Errorf("session %s after trimming vic's: %v, want live %v", name, err, live)
		}
	}
}
