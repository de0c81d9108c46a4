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
	// with a context bounded by ReadTimeout. An error of that deadline
	// (the store did not answer a read the change needs) stops the round
	// before the change: it is applied again at the next poll, so that
	// a store stalling for a moment costs a change nothing. Any other
	// error goes to Error and the follower goes on.
	Apply func(context.Context, Change) error
	// Resync is called instead when changes were pruned before Follow
	// read them, or the store's change notices were interrupted: the
	// follower must read its whole state again. Its context is bounded
	// by ResyncTimeout; an error of that deadline has it called again at
	// the next poll (before any change after it is applied), any other
	// goes to Error.
	Resync func(context.Context) error
	// Read, when set, is told after each successful read of the feed
	// when it began: the follower is current as of then.
	Read func(began time.Time)
	// Error, when set, is told when a read fails; Follow tries again at
	// the next poll.
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
}

// DefaultResyncTimeout is Follower.ResyncTimeout's default: a resync
// reads the whole state, more than one change needs.
const DefaultResyncTimeout = 30 * time.Second

// resync calls f.Resync with its bound (bounded).
func (f Follower) resync(ctx context.Context) error {
	if f.Resync == nil {
		return nil
	}
	return f.bounded(ctx, positive(f.ResyncTimeout, DefaultResyncTimeout), "read the whole state again", "tried again", f.Resync)
}

// positive is d, or def when d is not positive.
func positive(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// bounded runs step (what) under ctx bounded by timeout. It returns an
// error when step failed with that bound's deadline — the store did not
// answer in time — for the caller to do it again (again) at the next
// poll; any other error of step goes to f.Error, and nil is returned.
func (f Follower) bounded(ctx context.Context, timeout time.Duration, what, again string, step func(context.Context) error) error {
	bctx, cancel := context.WithTimeout(ctx, timeout)
	err := step(bctx)
	stalled := bctx.Err() != nil && ctx.Err() == nil
	cancel()
	switch {
	case err != nil && stalled && errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: the store did not answer within %v; %s at the next poll: %w", what, timeout, again, err)
	case err != nil && f.Error != nil:
		f.Error(fmt.Errorf("%s: %w", what, err))
	}
	return nil
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
	t := time.NewTicker(f.Poll)
	defer t.Stop()
	// Where the engine tells of other processes' commits, listen: they
	// are then read at once rather than at the next poll.
	lctx, stopListening := context.WithCancel(ctx)
	// After the listener lost its connection (the database restarted,
	// or the network between failed), the follower reads its whole state
	// again, as well as the changes since: belt and braces, since the
	// changes table alone misses nothing not pruned.
	var resync atomic.Bool
	listening := make(chan struct{})
	go func() {
		defer close(listening)
		s.d.listen(lctx, s.notify, func() { resync.Store(true) }, f.Error)
	}()
	defer func() {
		stopListening()
		<-listening
	}()
	for {
		woken := s.Changed() // before reading: a commit after the read wakes the next round
		if resync.Swap(false) {
			if err := f.resync(ctx); err != nil {
				resync.Store(true)
				if f.Error != nil {
					f.Error(err)
				}
			}
		}
		if err := s.followOnce(ctx, &from, f); err != nil && ctx.Err() == nil && f.Error != nil {
			f.Error(err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-woken:
		case <-t.C:
		}
	}
}

func (s *Store) followOnce(ctx context.Context, from *int64, f Follower) error {
	timeout := positive(f.ReadTimeout, DefaultFeedReadTimeout)
	for {
		began := time.Now()
		rctx, cancel := context.WithTimeout(ctx, timeout)
		changes, err := s.Changes(rctx, *from, followBatch)
		cancel()
		if err != nil {
			return err
		}
		if len(changes) > 0 && changes[0].Seq > *from+1 {
			// A gap: either changes were pruned unread, or sequence
			// numbers were skipped (a rolled-back insert). Only the
			// first is a loss; tell them apart by the oldest kept.
			rctx, cancel := context.WithTimeout(ctx, timeout)
			oldest, err := s.OldestChange(rctx)
			cancel()
			if err != nil {
				return err
			}
			if oldest > *from+1 && *from > 0 {
				// Tried again, gap and all, at the next poll when the
				// store does not answer it.
				if err := f.resync(ctx); err != nil {
					return err
				}
			}
		}
		for _, c := range changes {
			if ctx.Err() != nil {
				return nil
			}
			apply := func(actx context.Context) error { return f.Apply(actx, c) }
			if err := f.bounded(ctx, timeout, fmt.Sprintf("apply change %d (%s)", c.Seq, c.Kind), "applied again", apply); err != nil {
				return err
			}
			*from = c.Seq
		}
		if f.Read != nil {
			f.Read(began)
		}
		if len(changes) < followBatch {
			return nil
		}
	}
}
