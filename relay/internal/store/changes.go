package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// The change feed. Every control-plane write appends a row to changes in
// the same transaction, naming what changed; a running relay follows the
// table and applies each change through the part that owns it. The table
// is the truth: a wake-up (Changed) is only a hint to read it sooner.

// Change kinds: what a follower re-reads when it sees one.
const (
	ChangeTenant        = "tenant"         // a tenant was added (Tenant)
	ChangeRevoke        = "agent.revoke"   // an agent was revoked (Tenant, Subject: the agent)
	ChangeDrain         = "agent.drain"    // an operator asked an agent to move its sessions (Tenant, Subject: the agent)
	ChangeBackend       = "backend"        // a backend's key or grants changed, or it was added or removed (Subject: the backend)
	ChangeLimits        = "limits"         // a tenant's limits changed (Tenant)
	ChangeToken         = "token"          // a join token was created or revoked (Tenant, Subject: the token)
	ChangeOperatorToken = "operator_token" // an operator token was revoked (Subject: the token)
	ChangeOperatorCert  = "operator_cert"  // an operator certificate was revoked (Subject: its serial)
	ChangeCA            = "ca"             // the CA's roots changed: rotation, renew-now, retirement
	ChangeRollout       = "rollout"        // a rollout started or was halted (Subject: its id)
	ChangeRelease       = "release"        // a release was removed (Subject: its version)
)

// Change is one row of the change feed.
type Change struct {
	Seq     int64
	At      time.Time
	Kind    string
	Tenant  string
	Subject string
}

// write runs fn in a transaction that also appends changes, and wakes this
// process's followers once it has committed.
func (s *Store) write(ctx context.Context, fn func(*sql.Tx) error, changes ...Change) error {
	return s.writeChanges(ctx, func(tx *sql.Tx) ([]Change, error) { return changes, fn(tx) })
}

// writeChanges is write for a transaction that learns what it changed as
// it goes: fn returns the changes to append.
func (s *Store) writeChanges(ctx context.Context, fn func(*sql.Tx) ([]Change, error)) error {
	var n int
	err := s.tx(ctx, func(tx *sql.Tx) error {
		// Take the order lock before any other write, so that
		// transactions holding it never wait on one another's rows.
		if err := s.d.orderChanges(ctx, tx); err != nil {
			return err
		}
		changes, err := fn(tx)
		if err != nil {
			return err
		}
		n = len(changes)
		if n == 0 {
			return nil
		}
		if err := s.appendChanges(ctx, tx, changes); err != nil {
			return err
		}
		return s.d.notifyChanges(ctx, tx)
	})
	if err == nil && n > 0 {
		s.notify()
	}
	return err
}

func (s *Store) appendChanges(ctx context.Context, tx *sql.Tx, changes []Change) error {
	now := time.Now().UnixMilli()
	for _, c := range changes {
		if _, err := tx.ExecContext(ctx, `INSERT INTO changes (at_ms, kind, tenant, subject) VALUES ($1, $2, $3, $4)`, now, c.Kind, c.Tenant, c.Subject); err != nil {
			return err
		}
	}
	return nil
}

// AppendChange records a change made outside the store (the CA's files in
// the data directory, a drain request) for running relays to apply.
func (s *Store) AppendChange(ctx context.Context, c Change) error {
	return s.write(ctx, func(*sql.Tx) error { return nil }, c)
}

// notify wakes every follower in this process.
func (s *Store) notify() {
	s.wakeMu.Lock()
	close(s.wake)
	s.wake = make(chan struct{})
	s.wakeMu.Unlock()
}

// Changed returns a channel closed at the next change this process
// commits. Changes committed by other processes are only seen by reading
// the table.
func (s *Store) Changed() <-chan struct{} {
	s.wakeMu.Lock()
	defer s.wakeMu.Unlock()
	return s.wake
}

// Changes returns up to limit changes after seq, oldest first.
func (s *Store) Changes(ctx context.Context, after int64, limit int) ([]Change, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, at_ms, kind, tenant, subject FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2`, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Change
	for rows.Next() {
		var c Change
		var at int64
		if err := rows.Scan(&c.Seq, &at, &c.Kind, &c.Tenant, &c.Subject); err != nil {
			return nil, err
		}
		c.At = fromUnixMilli(at)
		out = append(out, c)
	}
	return out, rows.Err()
}

// LatestChange is the sequence number of the newest change (0 if none):
// a follower that reads its state after taking it, then follows from it,
// misses nothing.
func (s *Store) LatestChange(ctx context.Context) (int64, error) {
	var seq sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT max(seq) FROM changes`).Scan(&seq)
	return seq.Int64, err
}

// OldestChange is the sequence number of the oldest change kept (0 if
// none). A follower whose position is below it has missed changes that
// were pruned and must read its whole state again.
func (s *Store) OldestChange(ctx context.Context) (int64, error) {
	var seq sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT min(seq) FROM changes`).Scan(&seq)
	return seq.Int64, err
}

// PruneChanges deletes the changes made before before, keeping the newest
// one so that sequence numbers never go back.
func (s *Store) PruneChanges(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.exec(ctx, `DELETE FROM changes WHERE at_ms < $1 AND seq < (SELECT max(seq) FROM changes)`, before.UnixMilli())
	if err != nil {
		return 0, err
	}
	return affected(res)
}

// Follower is what Follow calls.
type Follower struct {
	// Poll is how often the feed is read for changes other processes
	// made; this process's own commits are read at once.
	Poll time.Duration
	// Apply is called with each change, in order, on Follow's goroutine,
	// with a context bounded by ReadTimeout. An error stops the round
	// before the change: it is applied again at the next poll, and Read
	// is not told until it has been, so that a store that stalls (the
	// deadline passes) or fails for a moment (a connection terminated or
	// refused, a statement cancelled) costs a change nothing, and the
	// follower does not claim to be current while one is pending. A
	// change whose Apply keeps failing otherwise than by that deadline,
	// for RetryFor and at least applyAttempts times, is passed over, so
	// that one that can never apply does not stop the feed: that is
	// reported (an error wrapping ErrPassedOver) and Resync is called
	// to read again whatever the change would have. Each failure goes to
	// Error.
	Apply func(context.Context, Change) error
	// Resync is called instead when changes were pruned before Follow
	// read them, when the store's change notices were interrupted, after
	// a change was passed over, and when the feed went back under Follow
	// (ErrRewound; Follow then goes on from the feed's newest change):
	// the follower must read its whole state again. Its context is
	// bounded by ResyncTimeout. After a gap in the feed, or the feed
	// going back, a Resync that fails is called again at the next poll,
	// before any change after the gap is applied, and passed over as a
	// change is (Resync is then called again as below). Otherwise a
	// Resync that fails is called again at the next poll, then at
	// intervals that double, from Poll up to maxResyncWait, while it
	// keeps failing; the feed is followed meanwhile.
	Resync func(context.Context) error
	// Read, when set, is told after each successful read of the feed
	// when it began: the follower is current as of then.
	Read func(began time.Time)
	// Error, when set, is told when a read, an Apply or a Resync fails;
	// Follow tries again at the next poll.
	Error func(error)
	// ReadTimeout bounds each read of the feed, and each Apply (default
	// DefaultFeedReadTimeout): a read the store never answers (a lost
	// connection nobody reset, a locked table) fails and is tried again
	// at the next poll, on another connection, rather than holding the
	// follower — and the relay's claim to be current — for as long as
	// it hangs.
	ReadTimeout time.Duration
	// ResyncTimeout bounds each Resync (default DefaultResyncTimeout).
	ResyncTimeout time.Duration
	// RetryFor is how long a change whose Apply keeps failing, other
	// than by ReadTimeout's deadline, is applied again at each poll
	// before it is passed over (default DefaultRetryFor).
	RetryFor time.Duration
}

// DefaultResyncTimeout is Follower.ResyncTimeout's default: a resync
// reads the whole state, more than one change needs.
const DefaultResyncTimeout = 30 * time.Second

// DefaultRetryFor is Follower.RetryFor's default. A connection the
// server terminated or refused is replaced within a poll or two; a
// change still failing after that is better read by a resync (tried
// again for as long as it fails) than held, since a relay that has not
// read its feed for 15 s refuses new streams, and every relay of a
// cluster meets the same change at the same time.
const DefaultRetryFor = 5 * time.Second

// applyAttempts is how many times, at least, a change whose Apply fails
// is tried before it is passed over, however long the tries took.
const applyAttempts = 3

// maxResyncWait is the longest wait between resyncs that keep failing
// (a CA that cannot be read, say): each reads the whole state and logs.
const maxResyncWait = 30 * time.Second

// ErrPassedOver is wrapped by the error Follow reports when it passes
// over a change, or a gap in the feed, that it failed to apply for
// RetryFor: a resync is to read again what it would have changed.
var ErrPassedOver = errors.New("passed over")

// ErrRewound is wrapped by the error Follow reports when the change feed
// went back under it: the change it applied last is gone, and no later
// one kept, or another change holds its number. That happens when the
// database fails over to an asynchronous replica that lacked the newest
// changes, or is restored from a backup; the changes written since may
// carry numbers the follower has passed. Follow then reads the whole
// state again (Resync) and follows the feed from its newest change.
var ErrRewound = errors.New("the change feed went back")

// positive is d, or def when d is not positive.
func positive(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// bounded runs step under ctx bounded by timeout, and returns its error,
// and whether that error is the bound's deadline: the store did not
// answer in time.
func bounded(ctx context.Context, timeout time.Duration, step func(context.Context) error) (stalled bool, err error) {
	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err = step(bctx)
	return err != nil && bctx.Err() != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded), err
}

// DefaultFeedReadTimeout is Follower.ReadTimeout's default: well within
// the 15 s after which a relay that has not read the feed refuses new
// streams.
const DefaultFeedReadTimeout = 5 * time.Second

// followBatch is how many changes Follow reads at once.
const followBatch = 500

// Follow reads the change feed after from and hands each change to f
// until ctx ends, then returns nil. A follower that reads its state after
// taking LatestChange, then follows from it, misses nothing.
func (s *Store) Follow(ctx context.Context, from int64, f Follower) error {
	fl := &following{s: s, f: f, from: from}
	t := time.NewTicker(f.Poll)
	defer t.Stop()
	// Where the engine tells of other processes' commits, listen: they
	// are then read at once rather than at the next poll.
	lctx, stopListening := context.WithCancel(ctx)
	// After the listener lost its connection (the database restarted,
	// or the network between failed), the follower reads its whole state
	// again, as well as the changes since: belt and braces, since the
	// changes table alone misses nothing not pruned. A lost connection
	// is also how a failover shows: the read that follows the reconnect,
	// as every read, checks that the feed did not go back.
	listening := make(chan struct{})
	go func() {
		defer close(listening)
		s.d.listen(lctx, s.notify, func() { fl.resync.Store(true) }, f.Error)
	}()
	defer func() {
		stopListening()
		<-listening
	}()
	for {
		woken := s.Changed() // before reading: a commit after the read wakes the next round
		if !time.Now().Before(fl.resyncAt) && fl.resync.Swap(false) {
			fl.resyncAgain(ctx)
		}
		if err := fl.once(ctx); err != nil && ctx.Err() == nil {
			fl.report(err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-woken:
		case <-t.C:
		}
	}
}

// following is the state of one Follow, kept on its goroutine but for
// resync, which the listener sets too.
type following struct {
	s    *Store
	f    Follower
	from int64 // the last change applied or passed over
	// last is the change at from, once a read has returned it (known):
	// another change under its number tells a feed that went back.
	last  Change
	known bool
	// rewoundAt is the position at which the feed was last reported gone
	// back, so that a resync retried at each poll reports it once.
	rewoundAt int64
	// resync asks for the whole state to be read again, no sooner than
	// resyncAt; resyncFailures is how many times in a row it failed.
	resync         atomic.Bool
	resyncAt       time.Time
	resyncFailures int
	// failing is the step (a change's Apply, a resync after a gap) that
	// failed last, otherwise than by stalling, and is tried again:
	// failures times since failingSince.
	failing      string
	failures     int
	failingSince time.Time
}

func (fl *following) report(err error) {
	if fl.f.Error != nil {
		fl.f.Error(err)
	}
}

// resyncStep calls Resync, when set.
func (fl *following) resyncStep(ctx context.Context) error {
	if fl.f.Resync == nil {
		return nil
	}
	return fl.f.Resync(ctx)
}

// resyncAgain reads the whole state again, as the listener or a change
// passed over asked. While that fails it is asked again: at the next
// poll, then at intervals that double, up to maxResyncWait.
func (fl *following) resyncAgain(ctx context.Context) {
	timeout := positive(fl.f.ResyncTimeout, DefaultResyncTimeout)
	stalled, err := bounded(ctx, timeout, fl.resyncStep)
	if err == nil {
		fl.resyncAt, fl.resyncFailures = time.Time{}, 0
		return
	}
	if ctx.Err() != nil {
		return
	}
	fl.resync.Store(true)
	fl.resyncFailures++
	when := "at the next poll"
	if fl.resyncFailures > 1 {
		wait := fl.f.Poll
		for i := 2; i < fl.resyncFailures && wait < maxResyncWait; i++ {
			wait *= 2
		}
		wait = min(wait, maxResyncWait)
		fl.resyncAt = time.Now().Add(wait)
		when = fmt.Sprintf("in %v", wait)
	}
	how := "failed"
	if stalled {
		how = fmt.Sprintf("failed: the store did not answer within %v", timeout)
	}
	fl.report(fmt.Errorf("read the whole state again: attempt %d %s; tried again %s: %w", fl.resyncFailures, how, when, err))
}

// failed decides what becomes of step what (a change's Apply, a resync
// after a gap), which failed with err, stalled telling whether by its
// bound's deadline, timeout. It returns the error to report: the round
// stops before the step, which is done again (again) at the next poll.
// Or it returns nil when the step is passed over, having failed other
// than by stalling at least applyAttempts times over at least RetryFor:
// it reports that, loudly, and asks for the whole state to be read again.
// A store that stalls is waited for, as long as it stalls: every relay
// meets the same stall, and the next poll tells it from a step that can
// never be done.
func (fl *following) failed(what, again string, stalled bool, timeout time.Duration, err error) error {
	if stalled {
		return fmt.Errorf("%s: the store did not answer within %v; %s at the next poll: %w", what, timeout, again, err)
	}
	now := time.Now()
	if fl.failing != what {
		fl.failing, fl.failures, fl.failingSince = what, 0, now
	}
	fl.failures++
	retryFor := positive(fl.f.RetryFor, DefaultRetryFor)
	took := now.Sub(fl.failingSince)
	if fl.failures < applyAttempts || took < retryFor {
		return fmt.Errorf("%s: attempt %d failed; %s at the next poll (passed over if still failing after %v and %d attempts): %w", what, fl.failures, again, retryFor, applyAttempts, err)
	}
	fl.failing = ""
	fl.resync.Store(true)
	fl.report(fmt.Errorf("%s: failed %d times in %v; %w, and the whole state is read again instead: %w", what, fl.failures, took.Round(time.Millisecond), ErrPassedOver, err))
	return nil
}

// try runs step what under timeout. The round goes on (goOn) when it
// succeeded or was passed over (failed); otherwise it stops with err, the
// failure to report, or nil when ctx ended.
func (fl *following) try(ctx context.Context, what, again string, timeout time.Duration, step func(context.Context) error) (goOn bool, err error) {
	stalled, err := bounded(ctx, timeout, step)
	switch {
	case err == nil:
		fl.succeeded(what)
		return true, nil
	case ctx.Err() != nil:
		return false, nil
	}
	if err := fl.failed(what, again, stalled, timeout, err); err != nil {
		return false, err
	}
	return true, nil
}

// succeeded forgets the failures of step what.
func (fl *following) succeeded(what string) {
	if fl.failing == what {
		fl.failing = ""
	}
}

// once reads and applies the changes after fl.from, up to the newest, and
// tells Read. An error stops it (before a change that failed to apply).
//
// Each read takes the change at fl.from too, the last one applied: while
// it is still there, and still the change that was applied, the feed has
// not gone back. When it is gone and nothing came after it, or another
// change holds its number, the feed went back under the follower (the
// database failed over to a replica that lacked the newest changes, or
// was restored from a backup): the changes written since carry numbers
// the follower has passed, and would never be read. rewound then reads
// the whole state again and follows the feed from its newest change.
func (fl *following) once(ctx context.Context) error {
	timeout := positive(fl.f.ReadTimeout, DefaultFeedReadTimeout)
	for {
		began := time.Now()
		rctx, cancel := context.WithTimeout(ctx, timeout)
		changes, err := fl.s.Changes(rctx, max(fl.from-1, 0), followBatch)
		cancel()
		if err != nil {
			return err
		}
		full := len(changes) == followBatch
		if fl.from > 0 {
			switch {
			case len(changes) > 0 && changes[0].Seq == fl.from && (!fl.known || sameChange(changes[0], fl.last)):
				fl.last, fl.known = changes[0], true
				changes = changes[1:]
			case len(changes) > 0 && changes[0].Seq == fl.from:
				why := fmt.Sprintf("change %d is no longer the one the follower applied (%s, now %s)", fl.from, describe(fl.last), describe(changes[0]))
				if again, err := fl.rewound(ctx, why); !again {
					return err
				}
				continue
			default:
				// The change at fl.from is gone. Pruned, with later
				// changes kept, is the gap below; gone with older ones
				// kept, or with nothing after it, the feed went back.
				rctx, cancel := context.WithTimeout(ctx, timeout)
				oldest, err := fl.s.OldestChange(rctx)
				cancel()
				if err != nil {
					return err
				}
				if len(changes) == 0 || oldest <= fl.from {
					why := fmt.Sprintf("change %d, the last the follower applied, is gone", fl.from)
					if again, err := fl.rewound(ctx, why); !again {
						return err
					}
					continue
				}
			}
		}
		if len(changes) > 0 && changes[0].Seq > fl.from+1 {
			// A gap: either changes were pruned unread, or sequence
			// numbers were skipped (a rolled-back insert). Only the
			// first is a loss; tell them apart by the oldest kept.
			rctx, cancel := context.WithTimeout(ctx, timeout)
			oldest, err := fl.s.OldestChange(rctx)
			cancel()
			if err != nil {
				return err
			}
			if oldest > fl.from+1 && fl.from > 0 {
				// Done again, gap and all, at the next poll when it fails.
				what := fmt.Sprintf("read the whole state again (changes after %d were pruned unread)", fl.from)
				if goOn, err := fl.try(ctx, what, "done again", positive(fl.f.ResyncTimeout, DefaultResyncTimeout), fl.resyncStep); !goOn {
					return err
				}
			}
		}
		for _, c := range changes {
			if ctx.Err() != nil {
				return nil
			}
			what := fmt.Sprintf("apply change %d (%s)", c.Seq, c.Kind)
			if goOn, err := fl.try(ctx, what, "applied again", timeout, func(actx context.Context) error { return fl.f.Apply(actx, c) }); !goOn {
				return err
			}
			fl.from, fl.last, fl.known = c.Seq, c, true
		}
		if fl.f.Read != nil {
			fl.f.Read(began)
		}
		if !full {
			return nil
		}
	}
}

// rewound handles a feed that went back under the follower (why says how
// it was found): it reports it, loudly (an error wrapping ErrRewound),
// reads the newest change's number, reads the whole state again and
// follows the feed from that change. again is true when the caller is to
// read the feed again from the new position; otherwise err is the
// failure to report, and the next poll finds the feed gone back again
// and tries again (a resync that keeps failing is passed over as a
// change is).
func (fl *following) rewound(ctx context.Context, why string) (again bool, err error) {
	timeout := positive(fl.f.ReadTimeout, DefaultFeedReadTimeout)
	rctx, cancel := context.WithTimeout(ctx, timeout)
	latest, err := fl.s.LatestChange(rctx)
	cancel()
	if err != nil {
		return false, err
	}
	if fl.rewoundAt != fl.from {
		fl.rewoundAt = fl.from
		fl.report(fmt.Errorf("%w: %s, and the newest change is %d: the database failed over to a copy that lacked the latest changes the follower applied, or was restored from a backup, and changes written since may carry numbers the follower has passed; it reads its whole state again and follows the feed from change %d",
			ErrRewound, why, latest, latest))
	}
	what := fmt.Sprintf("read the whole state again (the change feed went back below %d)", fl.from)
	if goOn, err := fl.try(ctx, what, "done again", positive(fl.f.ResyncTimeout, DefaultResyncTimeout), fl.resyncStep); !goOn {
		return false, err
	}
	fl.from, fl.known, fl.rewoundAt = latest, false, 0
	return true, nil
}

// sameChange reports whether a and b are the same row of the feed.
func sameChange(a, b Change) bool {
	return a.Seq == b.Seq && a.At.Equal(b.At) && a.Kind == b.Kind && a.Tenant == b.Tenant && a.Subject == b.Subject
}

// describe names a change for a log.
func describe(c Change) string {
	return fmt.Sprintf("%s %q/%q at %s", c.Kind, c.Tenant, c.Subject, c.At.UTC().Format(time.RFC3339Nano))
}
