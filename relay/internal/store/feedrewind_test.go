package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// rewind makes the change feed go back to seq, as a failover to an
// asynchronous replica that lacked the newest changes, or a restore from
// a backup, does: the rows after seq are gone and the next change is
// numbered seq+1 again. Then, in the same transaction (a follower sees
// the feed before or after, nothing between), it writes changes of
// kind tenant for each of tenants, as from another process: no wake-up.
func rewind(t *testing.T, s *Store, e engine, seq int64, tenants ...string) {
	t.Helper()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM changes WHERE seq > $1`, seq); err != nil {
		t.Fatal(err)
	}
	q := `UPDATE sqlite_sequence SET seq = $1 WHERE name = 'changes'`
	if e.name == "postgres" {
		q = `SELECT setval(pg_get_serial_sequence('changes', 'seq'), $1)`
	}
	if _, err := tx.ExecContext(ctx, q, seq); err != nil {
		t.Fatal(err)
	}
	for _, tenant := range tenants {
		if _, err := tx.ExecContext(ctx, `INSERT INTO changes (at_ms, kind, tenant, subject) VALUES ($1, 'tenant', $2, '')`, time.Now().UnixMilli(), tenant); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// TestFollowRewound: the change feed goes back under a follower (the
// follower has applied change 5; the store now ends at change 2 and
// numbers the next change 3). The follower notices, reports it
// (ErrRewound), reads its whole state again, which covers the change
// written meanwhile, and applies the changes after it: it does not wait,
// silently, for the feed to pass its old position.
func TestFollowRewound(t *testing.T) { eachEngine(t, testFollowRewound) }

func testFollowRewound(t *testing.T, e engine) {
	s, _ := e.open(t)
	for _, name := range []string{"t1", "t2", "t3", "t4", "t5"} {
		if err := s.AddTenant(ctx, name, t0); err != nil {
			t.Fatal(err)
		}
	}
	from, _ := s.LatestChange(ctx)
	var log eventLog
	errs := make(chan error, 64)
	defer follow(s, from, Follower{Poll: 20 * time.Millisecond, ReadTimeout: 2 * time.Second,
		Apply: func(_ context.Context, c Change) error {
			log.add(fmt.Sprintf("apply %s %d", c.Tenant, c.Seq))
			return nil
		},
		Resync: func(context.Context) error { log.add("resync"); return nil },
		Read:   func(time.Time) { log.add("read") },
		Error:  offer(errs),
	})()
	log.waitFor(t, "read")

	rewind(t, s, e, from-3)
	if err := s.AddTenant(ctx, "after-failover", t0); err != nil {
		t.Fatal(err)
	}
	seq, _ := s.LatestChange(ctx)
	if seq != from-2 {
		t.Fatalf("the change after the rewind is %d, want %d (the test did not rewind the feed)", seq, from-2)
	}
	applied := fmt.Sprintf("apply after-failover %d", seq)
	if !log.within(10*time.Second, "resync", applied) {
		t.Fatalf("the change written after the feed went back (seq %d, below the follower's position %d) was neither applied nor read by a resync within 10 s; the follower did %v (reads left out)", seq, from, log.acts())
	}
	if err := nextErr(t, errs, ErrRewound.Error()); !strings.Contains(err.Error(), fmt.Sprintf("change %d, the last the follower applied, is gone", from)) {
		t.Fatalf("reported %v, want the position that is gone", err)
	}
	if err := s.AddTenant(ctx, "later", t0); err != nil {
		t.Fatal(err)
	}
	got := log.waitFor(t, fmt.Sprintf("apply later %d", seq+1))
	if i := slices.Index(got, "resync"); i < 0 || slices.Index(got, fmt.Sprintf("apply later %d", seq+1)) < i {
		t.Fatalf("the follower did %v: want a resync, then the change after it applied", got)
	}
}

// TestFollowRewrittenPastPosition: the feed goes back, then more changes
// are written than it lost before the follower reads it again, so that a
// change other than the one the follower applied holds its position and
// the newest is past it. The follower tells the change at its position
// from the one it applied, and reads its whole state again rather than
// going on from its position (which would pass over the changes below
// it, and the one at it).
func TestFollowRewrittenPastPosition(t *testing.T) { eachEngine(t, testFollowRewrittenPastPosition) }

func testFollowRewrittenPastPosition(t *testing.T, e engine) {
	s, _ := e.open(t)
	for _, name := range []string{"t1", "t2", "t3", "t4", "t5"} {
		if err := s.AddTenant(ctx, name, t0); err != nil {
			t.Fatal(err)
		}
	}
	from, _ := s.LatestChange(ctx)
	var log eventLog
	errs := make(chan error, 64)
	// Polling off: the follower reads the feed at start and when woken.
	defer follow(s, from, Follower{Poll: time.Hour, ReadTimeout: 2 * time.Second,
		Apply: func(_ context.Context, c Change) error {
			log.add(fmt.Sprintf("apply %s %d", c.Tenant, c.Seq))
			return nil
		},
		Resync: func(context.Context) error { log.add("resync"); return nil },
		Read:   func(time.Time) { log.add("read") },
		Error:  offer(errs),
	})()
	log.waitFor(t, "read") // it has read the change at its position

	// The feed goes back 3 changes; 4 are written before the follower
	// reads again (no wake-up: as from another process).
	rewind(t, s, e, from-3, "n1", "n2", "n3", "n4")
	if latest, _ := s.LatestChange(ctx); latest != from+1 {
		t.Fatalf("newest change %d after rewriting, want %d", latest, from+1)
	}
	s.notify()
	if !log.within(10*time.Second, "resync") {
		t.Fatalf("the feed was rewritten past the follower's position %d (changes %d to %d written anew) and the follower did not read its state again within 10 s; it did %v (reads left out)", from, from-2, from+1, log.acts())
	}
	if err := nextErr(t, errs, ErrRewound.Error()); !strings.Contains(err.Error(), fmt.Sprintf("change %d is no longer the one the follower applied", from)) {
		t.Fatalf("reported %v, want the position rewritten", err)
	}
	if slices.ContainsFunc(log.all(), func(ev string) bool { return strings.HasPrefix(ev, "apply n") }) {
		t.Fatalf("the follower applied rewritten changes one by one, some of them passed over: %v", log.all())
	}
	// It follows the feed from its newest change.
	if err := s.AddTenant(ctx, "later", t0); err != nil {
		t.Fatal(err)
	}
	log.waitFor(t, fmt.Sprintf("apply later %d", from+2))
	select {
	case err := <-errs:
		if errors.Is(err, ErrRewound) {
			t.Fatalf("reported twice: %v", err)
		}
	default:
	}
}

// within waits up to d for any of evs and reports whether one came.
func (l *eventLog) within(d time.Duration, evs ...string) bool {
	deadline := time.Now().Add(d)
	for {
		if slices.ContainsFunc(l.all(), func(ev string) bool { return slices.Contains(evs, ev) }) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// acts is what the follower did but read.
func (l *eventLog) acts() []string {
	return slices.DeleteFunc(l.all(), func(ev string) bool { return ev == "read" })
}
