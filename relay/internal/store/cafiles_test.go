package store

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestCAFiles(t *testing.T) { eachEngine(t, testCAFiles) }

func testCAFiles(t *testing.T, e engine) {
	s, dsn := e.open(t)
	if _, err := s.CAFile(ctx, "ca.crt"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("no file yet: got %v, want ErrNotFound", err)
	}
	before := time.Now().Add(-time.Second)
	if err := s.PutCAFile(ctx, CAFile{Name: "ca.key", Data: []byte{0, 1, 2, 0xff}, KEKID: "k1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutCAFile(ctx, CAFile{Name: "ca.crt", Data: []byte("cert")}); err != nil {
		t.Fatal(err)
	}
	// Read by another process.
	other, err := OpenDSN(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	got, err := other.CAFile(ctx, "ca.key")
	if err != nil || string(got.Data) != "\x00\x01\x02\xff" || got.KEKID != "k1" || got.UpdatedAt.Before(before.Truncate(time.Second)) {
		t.Fatalf("CAFile(ca.key) = %+v, %v", got, err)
	}
	// Replaced whole: data and key id.
	if err := s.PutCAFile(ctx, CAFile{Name: "ca.key", Data: []byte("other"), KEKID: "k2"}); err != nil {
		t.Fatal(err)
	}
	if got, err := other.CAFile(ctx, "ca.key"); err != nil || string(got.Data) != "other" || got.KEKID != "k2" {
		t.Fatalf("after replacing: %+v, %v", got, err)
	}
	if got, err := other.CAFile(ctx, "ca.crt"); err != nil || string(got.Data) != "cert" || got.KEKID != "" {
		t.Fatalf("CAFile(ca.crt) = %+v, %v", got, err)
	}
	if err := s.PutCAFile(ctx, CAFile{Name: "empty"}); err != nil {
		t.Fatal(err)
	}
	if got, err := other.CAFile(ctx, "empty"); err != nil || len(got.Data) != 0 {
		t.Fatalf("empty file: %+v, %v", got, err)
	}
	for range 2 { // removing what is gone is not an error
		if err := s.RemoveCAFile(ctx, "ca.key"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := other.CAFile(ctx, "ca.key"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removed file: got %v, want ErrNotFound", err)
	}
}

func TestLockSQLite(t *testing.T) {
	s, _ := engines[0].open(t)
	if _, err := s.Lock(ctx, "ca"); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Lock on SQLite: got %v, want ErrUnsupported", err)
	}
}

// TestLockPostgres: the lock is held by one process at a time; a waiter
// that gives up leaves it free; a holder that dies releases it.
func TestLockPostgres(t *testing.T) {
	a, dsn := engines[1].open(t)
	open := func() *Store {
		s, err := OpenDSN(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	b := open()

	unlockA, err := a.Lock(ctx, "ca")
	if err != nil {
		t.Fatal(err)
	}
	// Another name is another lock.
	unlockOther, err := b.Lock(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	unlockOther()

	// b waits while a holds it, until b gives up.
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if unlock, err := b.Lock(short, "ca"); err == nil {
		unlock()
		t.Fatal("two processes held the lock at once")
	}

	// Released by a: b takes it as soon as it is free.
	got := make(chan error, 1)
	var unlockB func()
	go func() {
		var err error
		unlockB, err = b.Lock(ctx, "ca")
		got <- err
	}()
	unlockA()
	if err := <-got; err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	// b's connection ends (its process died, say) while it holds the
	// lock: the lock goes with it.
	var killed int
	err = a.db.QueryRowContext(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&killed)
	if err != nil || killed != 1 {
		t.Fatalf("ending the holder's connection: %d ended, %v", killed, err)
	}
	deadline, cancel2 := context.WithTimeout(ctx, 10*time.Second)
	defer cancel2()
	unlockC, err := open().Lock(deadline, "ca")
	if err != nil {
		t.Fatalf("lock after its holder's connection ended: %v", err)
	}
	unlockC()
	unlockB() // on a connection that is gone: it is discarded
	// The pools still work.
	if _, err := b.CAFile(ctx, "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("store after a lost lock connection: %v", err)
	}
}
