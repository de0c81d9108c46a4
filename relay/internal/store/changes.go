package store

import (
	"context"
	"database/sql"
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
		return s.appendChanges(ctx, tx, changes)
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
