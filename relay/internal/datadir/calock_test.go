package datadir

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/store"
)

// holdCALock takes the store's CA lock through a store handle of its own
// (another process: an admin command mid-rotation that hung, or one whose
// host vanished), until the test ends.
func holdCALock(t *testing.T, dsn string) {
	t.Helper()
	holder, err := store.OpenPostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Close() })
	unlock, err := holder.Lock(ctx, caLock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
}

// TestStartWhileCALockHeld: the CA exists in the store and another
// process holds the store's CA lock; a relay starting (a restart, or a
// new relay of the cluster) only loads the CA, and does so without
// waiting for the lock. It waited for as long as the lock was held, and
// one stuck holder kept every relay of the cluster from restarting.
func TestStartWhileCALockHeld(t *testing.T) {
	dsn := pgtest.Shared(t).CreateDatabase(t)
	kek := newKEK()
	_, made := open(t, t.TempDir(), Options{TrustDomain: "tether.example", Store: dsn, CAKEK: kek}) // the first relay made the CA
	holdCALock(t, dsn)
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second) // relay.New allows 30 s
	defer cancel()
	began := time.Now()
	d, c, err := Open(sctx, t.TempDir(), Options{TrustDomain: "tether.example", Store: dsn, CAKEK: kek}, time.Now())
	if err != nil {
		t.Fatalf("a relay start (the CA exists, only loaded) while another process holds the store's CA lock failed after %v: %v", time.Since(began).Round(time.Millisecond), err)
	}
	defer d.Close()
	if c.Fingerprint() != made.Fingerprint() {
		t.Fatal("the relay loaded another CA than the one in the store")
	}
	// Admin commands on an existing store likewise.
	d2, _, err := Open(sctx, t.TempDir(), Options{Store: dsn, CAKEK: kek, Existing: true}, time.Now())
	if err != nil {
		t.Fatalf("an admin command's open while the CA lock is held: %v", err)
	}
	d2.Close()
	// A relay given another KEK cannot read the CA, and waits for the
	// lock in case the CA was changing; when it gives up, it says why it
	// could not read the CA, not only that the lock was held. It gives up
	// once it is waiting for the lock (it logs the wait), not after a
	// fixed time: one that ended while it was still opening the store
	// never reached the CA, and failed for that instead.
	defer func(d time.Duration) { lockWaitLog = d }(lockWaitLog)
	lockWaitLog = 20 * time.Millisecond
	var logs syncBuffer
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	waiting := make(chan struct{})
	go func() {
		defer close(waiting)
		for !strings.Contains(logs.String(), "waiting for the store's CA lock") {
			select {
			case <-wctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
		cancel()
	}()
	d3, _, err := Open(wctx, t.TempDir(), Options{Store: dsn, CAKEK: newKEK(), Logger: slog.New(slog.NewTextHandler(&logs, nil))}, time.Now())
	cancel()
	<-waiting
	if d3 != nil {
		d3.Close()
	}
	if !errors.Is(err, ca.ErrWrongKEK) || !strings.Contains(logs.String(), "waiting for the store's CA lock") {
		t.Fatalf("a start with another KEK while the lock is held: %v, want it to wait for the lock and ca.ErrWrongKEK among its causes; logs: %q", err, logs.String())
	}
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestCreateWaitsForCALock: with no CA in the store yet, a relay that
// would create it waits for the store's CA lock (a relay starting at the
// same moment may be creating one), says so in its log while it waits,
// and creates the CA once the lock is free.
func TestCreateWaitsForCALock(t *testing.T) {
	defer func(d time.Duration) { lockWaitLog = d }(lockWaitLog)
	lockWaitLog = 20 * time.Millisecond
	dsn := pgtest.Shared(t).CreateDatabase(t)
	kek := newKEK()
	holder, err := store.OpenPostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	unlock, err := holder.Lock(ctx, caLock)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	type result struct {
		d   *Dir
		err error
	}
	opened := make(chan result, 1)
	go func() {
		d, _, err := Open(ctx, t.TempDir(), Options{TrustDomain: "tether.example", Store: dsn, CAKEK: kek, Logger: log}, time.Now())
		opened <- result{d, err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "waiting for the store's CA lock") {
		if time.Now().After(deadline) {
			unlock()
			t.Fatalf("no wait for the CA lock logged within 10 s; logs: %q", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case r := <-opened:
		t.Fatalf("a relay created a CA while another process held the store's CA lock: %v", errors.Join(r.err))
	default:
	}
	unlock()
	select {
	case r := <-opened:
		if r.err != nil {
			t.Fatal(r.err)
		}
		r.d.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("no CA 10 s after the lock was freed")
	}
}

// TestChangeWaitsForCALockSaysSo: a change to a shared CA (ca rotate,
// ca retire: Dir.Locked) waits for the store's CA lock another process
// holds, and says so while it waits, as a start that creates the CA does
// (it waited without a word).
func TestChangeWaitsForCALockSaysSo(t *testing.T) {
	defer func(d time.Duration) { lockWaitLog = d }(lockWaitLog)
	lockWaitLog = 20 * time.Millisecond
	dsn := pgtest.Shared(t).CreateDatabase(t)
	kek := newKEK()
	var logs syncBuffer
	d, _ := open(t, t.TempDir(), Options{TrustDomain: "tether.example", Store: dsn, CAKEK: kek, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	holder, err := store.OpenPostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	unlock, err := holder.Lock(ctx, caLock)
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- d.Locked(ctx, func() error { return nil }) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "waiting for the store's CA lock") {
		if time.Now().After(deadline) {
			unlock()
			<-ran
			t.Fatalf("no wait for the CA lock logged within 10 s by a change to the CA; logs: %q", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case err := <-ran:
		t.Fatalf("a change to the CA ran while another process held the store's CA lock: %v", err)
	default:
	}
	unlock()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
}
