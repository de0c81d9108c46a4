package datadir

import (
	"context"
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/trust"
)

var ctx = context.Background()

func newKEK() []byte {
	b := make([]byte, ca.KEKSize)
	rand.Read(b)
	return b
}

func open(t *testing.T, path string, o Options) (*Dir, *ca.CA) {
	t.Helper()
	d, c, err := Open(ctx, path, o, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, c
}

// TestOpenSQLite: without a store address the relay is on its own, as
// before clusters: SQLite and the CA's files in the data directory.
func TestOpenSQLite(t *testing.T) {
	path := t.TempDir()
	d, c := open(t, path, Options{TrustDomain: "tether.example"})
	if d.CAShared() || c.TrustDomain() != "tether.example" {
		t.Fatalf("shared %v, trust domain %q", d.CAShared(), c.TrustDomain())
	}
	for name, mode := range map[string]os.FileMode{"ca/ca.key": 0o600, "ca/ca.crt": 0o644, "tether.db": 0} {
		fi, err := os.Stat(filepath.Join(path, name))
		if err != nil || (mode != 0 && fi.Mode().Perm() != mode) {
			t.Errorf("%s: %v, %v", name, fi, err)
		}
	}
	if _, err := d.Store.CAFile(ctx, ca.CertFile); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the CA of a relay on its own is in its store too: %v", err)
	}
	// A KEK given to a relay on its own changes nothing.
	d2, c2, err := Open(ctx, path, Options{CAKEK: newKEK()}, time.Now())
	if err != nil || c2.Fingerprint() != c.Fingerprint() {
		t.Fatalf("reopen: %v", err)
	}
	d2.Close()
	// The keys kept in the store are made once.
	if d2.AuditCursorKey != d.AuditCursorKey || d2.ResetKey != d.ResetKey || d.AuditCursorKey == ([32]byte{}) || d.AuditCursorKey == d.ResetKey {
		t.Fatal("reopened, the data directory holds other keys, or keys not made")
	}
}

// TestOpenPostgresAtOnce: three relays, each with a data directory of its
// own, start at once against one empty PostgreSQL database: one creates
// the CA, the others load it, and none makes a CA of its own; all hold
// the QUIC reset key and audit cursor key the first stored.
func TestOpenPostgresAtOnce(t *testing.T) {
	for round := range 5 {
		dsn := pgtest.Shared(t).CreateDatabase(t)
		kek := newKEK()
		var wg sync.WaitGroup
		const relays = 3
		dirs, cas, errs := make([]*Dir, relays), make([]*ca.CA, relays), make([]error, relays)
		paths := make([]string, relays)
		for i := range relays {
			paths[i] = t.TempDir()
			wg.Go(func() {
				dirs[i], cas[i], errs[i] = Open(ctx, paths[i], Options{TrustDomain: "tether.example", Store: dsn, CAKEK: kek}, time.Now())
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: relay %d: %v", round, i, err)
			}
			t.Cleanup(func() { dirs[i].Close() })
		}
		for i := range relays {
			if !dirs[i].CAShared() || cas[i].Fingerprint() != cas[0].Fingerprint() {
				t.Fatalf("round %d: relay %d has CA %s, relay 0 %s", round, i, cas[i].Serving().ID(), cas[0].Serving().ID())
			}
			if _, err := os.Stat(filepath.Join(paths[i], caDir)); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("round %d: relay %d made a CA directory (%v)", round, i, err)
			}
			// Each holds the keys the first stored: a cursor one gives,
			// another reads.
			if dirs[i].AuditCursorKey != dirs[0].AuditCursorKey || dirs[i].ResetKey != dirs[0].ResetKey || dirs[i].AuditCursorKey == ([32]byte{}) {
				t.Fatalf("round %d: relay %d holds other keys than relay 0", round, i)
			}
			// Each reads what is in the store now: the same CA.
			now, err := ca.Load(ctx, dirs[i].CAStorage())
			if err != nil || now.Fingerprint() != cas[0].Fingerprint() {
				t.Fatalf("round %d: relay %d reads %v, %v", round, i, now, err)
			}
		}
	}
}

func TestOpenPostgresRefusals(t *testing.T) {
	dsn := pgtest.Shared(t).CreateDatabase(t)
	for _, tc := range []struct {
		name string
		o    Options
		want error
	}{
		{"no KEK", Options{Store: dsn}, ca.ErrNoKEK},
		{"a short KEK", Options{Store: dsn, CAKEK: make([]byte, 16)}, ca.ErrKEKSize},
		{"no CA yet, with Existing", Options{Store: dsn, CAKEK: newKEK(), Existing: true}, fs.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if d, _, err := Open(ctx, t.TempDir(), tc.o, time.Now()); !errors.Is(err, tc.want) {
				if d != nil {
					d.Close()
				}
				t.Fatalf("Open: %v, want %v", err, tc.want)
			}
		})
	}
	if _, _, err := Open(ctx, t.TempDir(), Options{Store: "/var/lib/other.db", CAKEK: newKEK()}, time.Now()); err == nil {
		t.Fatal("a store that is not PostgreSQL was accepted")
	}
	// Once a relay has made the CA, one with another KEK is refused.
	open(t, t.TempDir(), Options{TrustDomain: "tether.example", Store: dsn, CAKEK: newKEK()})
	if d, _, err := Open(ctx, t.TempDir(), Options{Store: dsn, CAKEK: newKEK()}, time.Now()); !errors.Is(err, ca.ErrWrongKEK) {
		if d != nil {
			d.Close()
		}
		t.Fatalf("Open with another KEK: %v, want ca.ErrWrongKEK", err)
	}
}

// TestRotationSeenByAnotherRelay: a rotation and a retirement made through
// one relay's data directory are what another relay's Authority reads at
// its next Reload, when the CA is in the store they share.
func TestRotationSeenByAnotherRelay(t *testing.T) {
	dsn := pgtest.Shared(t).CreateDatabase(t)
	kek := newKEK()
	d1, c1 := open(t, t.TempDir(), Options{TrustDomain: "tether.example", Store: dsn, CAKEK: kek})
	d2, c2 := open(t, t.TempDir(), Options{Store: dsn, CAKEK: kek})
	auth := trust.NewAuthority(d2.CAStorage(), c2)
	if prev, _, err := auth.Reload(ctx); err != nil || prev != nil {
		t.Fatalf("Reload with nothing changed: prev %v, %v", prev, err)
	}
	var rotated *ca.CA
	err := d1.Locked(ctx, func() error {
		var err error
		rotated, err = ca.Rotate(ctx, d1.CAStorage(), time.Now(), true)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	prev, next, err := auth.Reload(ctx)
	if err != nil || prev == nil || prev.Fingerprint() != c1.Fingerprint() {
		t.Fatalf("Reload after a rotation elsewhere: prev %v, %v", prev, err)
	}
	if !next.Rotating() || !next.RenewNow() || next.Signer().Fingerprint() != rotated.Signer().Fingerprint() || auth.CA() != next {
		t.Fatal("the other relay does not see the new root")
	}
	// The new root's key opens on the other relay: it can sign with it.
	if _, err := next.IssuePeer("r2", time.Hour, time.Now()); err != nil {
		t.Fatal(err)
	}
	err = d1.Locked(ctx, func() error {
		_, _, err := ca.Retire(ctx, d1.CAStorage(), time.Now())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if prev, next, err = auth.Reload(ctx); err != nil || prev == nil || next.Rotating() || next.Serving().Fingerprint() != rotated.Signer().Fingerprint() {
		t.Fatalf("Reload after a retirement elsewhere: %v", err)
	}
}
