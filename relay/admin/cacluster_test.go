package admin

import (
	"context"
	"crypto/rand"
	"errors"
	"sync"
	"testing"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/store"
)

// TestCARotationAcrossCluster: relays of a cluster (here, admin commands
// on two hosts, each with a data directory of its own) share one CA in
// their PostgreSQL store. A rotation, renew-now and retirement through
// either is seen by the other's Reload and announced on the change feed;
// two operators rotating at the same moment get one rotation, not two.
func TestCARotationAcrossCluster(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.Shared(t).CreateDatabase(t)
	kek := make([]byte, ca.KEKSize)
	rand.Read(kek)

	// No relay has started on the store: admin commands refuse it.
	if _, err := Open(ctx, Options{DataDir: t.TempDir(), Store: dsn, CAKEK: kek, Existing: true}); !errors.Is(err, ErrNoDataDir) {
		t.Fatalf("admin command on an empty store: %v, want ErrNoDataDir", err)
	}
	first, err := Open(ctx, Options{DataDir: t.TempDir(), Store: dsn, CAKEK: kek, TrustDomain: "tether.example"})
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	admins := make([]*Admin, 2)
	for i := range admins {
		a, err := Open(ctx, Options{DataDir: t.TempDir(), Store: dsn, CAKEK: kek, Existing: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		admins[i] = a
	}
	if admins[0].CAFingerprint() != admins[1].CAFingerprint() || admins[0].TrustDomain() != "tether.example" {
		t.Fatalf("two admins see CAs %s and %s", admins[0].CAFingerprint(), admins[1].CAFingerprint())
	}
	var seen int64
	caChanges := func() int {
		changes, err := admins[1].store.Changes(ctx, seen, 100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, c := range changes {
			seen = c.Seq
			if c.Kind == store.ChangeCA {
				n++
			}
		}
		return n
	}

	for round := range 3 {
		// Both operators rotate at once: one rotation happens; the other
		// is told a rotation is already in progress.
		var wg sync.WaitGroup
		errs := make([]error, len(admins))
		for i, a := range admins {
			wg.Go(func() { _, errs[i] = a.RotateCA(ctx, false) })
		}
		wg.Wait()
		var ok, rotating int
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ca.ErrRotating):
				rotating++
			default:
				t.Fatalf("round %d: rotate: %v", round, err)
			}
		}
		if ok != 1 || rotating != 1 {
			t.Fatalf("round %d: two rotations at once: %d done, %d refused as in progress (%v); want one each", round, ok, rotating, errs)
		}
		if n := caChanges(); n != 1 {
			t.Fatalf("round %d: %d CA changes on the feed after a rotation, want 1", round, n)
		}
		for i, a := range admins {
			if _, _, err := a.auth.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			if c := a.auth.CA(); !c.Rotating() || c.Signer().Generation != round+2 {
				t.Fatalf("round %d: admin %d sees rotating %v, signer %d", round, i, c.Rotating(), c.Signer().Generation)
			}
		}
		// Renew-now through one, retire through the other.
		if _, err := admins[round%2].RenewNowCA(ctx); err != nil {
			t.Fatal(err)
		}
		if _, _, err := admins[(round+1)%2].auth.Reload(ctx); err != nil || !admins[(round+1)%2].auth.CA().RenewNow() {
			t.Fatalf("round %d: renew-now not seen by the other: %v", round, err)
		}
		if _, err := admins[(round+1)%2].RetireCA(ctx, true); err != nil {
			t.Fatal(err)
		}
		if n := caChanges(); n != 2 {
			t.Fatalf("round %d: %d CA changes on the feed after renew-now and retire, want 2", round, n)
		}
		prev, next, err := admins[round%2].auth.Reload(ctx)
		if err != nil || prev == nil || next.Rotating() || next.Signer().Generation != round+2 || len(next.Retired()) != round+1 {
			t.Fatalf("round %d: retirement not seen by the other: %v", round, err)
		}
		st, err := admins[round%2].CAStatus(ctx)
		if err != nil || st.Rotating || len(st.Roots) != 1 || st.Roots[0].Generation != round+2 {
			t.Fatalf("round %d: status %+v, %v", round, st, err)
		}
	}
}
