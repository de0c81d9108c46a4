package store

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"hash/fnv"
)

// Lock takes the lock called name, which every process using this store
// shares, waiting until it is free or ctx ends, and returns the function
// that releases it. It is for critical sections that span several
// transactions and must not run in two relays at once, such as creating
// or rotating a CA kept in the store. The lock lives with a database
// connection: a process that dies holding it releases it.
//
// Only PostgreSQL has such a lock (a session advisory lock). A SQLite
// store belongs to one data directory, whose file lock serialises such
// sections (relay/internal/datadir); there Lock returns an error wrapping
// errors.ErrUnsupported.
func (s *Store) Lock(ctx context.Context, name string) (unlock func(), err error) {
	lockSQL, unlockSQL := s.d.lockStatements()
	if lockSQL == "" {
		return nil, fmt.Errorf("store lock %q: %w", name, errors.ErrUnsupported)
	}
	key := lockKey(name)
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("store lock %q: %w", name, err)
	}
	// discard closes the connection rather than returning it to the pool:
	// the lock, if the server granted it after all, goes with it.
	discard := func() {
		conn.Raw(func(any) error { return driver.ErrBadConn })
		conn.Close()
	}
	if _, err := conn.ExecContext(ctx, lockSQL, key); err != nil {
		discard()
		return nil, fmt.Errorf("store lock %q: %w", name, err)
	}
	return func() {
		// Released even when the caller's ctx has ended.
		if _, err := conn.ExecContext(context.WithoutCancel(ctx), unlockSQL, key); err != nil {
			discard()
			return
		}
		conn.Close()
	}, nil
}

// TryLock takes the lock called name, as Lock does, only if no process
// holds it: ok reports whether it did, and unlock (set only then)
// releases it. For work that one process of a cluster at a time should
// do, and that the others may leave to it (pruning). On SQLite it
// returns an error wrapping errors.ErrUnsupported, as Lock does.
func (s *Store) TryLock(ctx context.Context, name string) (unlock func(), ok bool, err error) {
	tryLockSQL := s.d.tryLockStatement()
	_, unlockSQL := s.d.lockStatements()
	if tryLockSQL == "" {
		return nil, false, fmt.Errorf("store lock %q: %w", name, errors.ErrUnsupported)
	}
	key := lockKey(name)
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("store lock %q: %w", name, err)
	}
	discard := func() {
		conn.Raw(func(any) error { return driver.ErrBadConn })
		conn.Close()
	}
	if err := conn.QueryRowContext(ctx, tryLockSQL, key).Scan(&ok); err != nil {
		discard()
		return nil, false, fmt.Errorf("store lock %q: %w", name, err)
	}
	if !ok {
		conn.Close()
		return nil, false, nil
	}
	return func() {
		if _, err := conn.ExecContext(context.WithoutCancel(ctx), unlockSQL, key); err != nil {
			discard()
			return
		}
		conn.Close()
	}, true, nil
}

// lockKey is the advisory lock key of name: a hash, in a namespace of its
// own so that it does not meet changesLockKey.
func lockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("tether store lock\x00" + name))
	return int64(h.Sum64())
}
