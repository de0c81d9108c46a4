package admin

import (
	"context"
	"crypto/rand"
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/store"
)

// TestInitClusterStore: Init on a cluster's store that no relay started
// on makes the CA there, once: a second host's Init (a data directory of
// its own, the same store) finds it and changes nothing, admin commands
// accept the store, and a trust domain other than the CA's is refused
// only when asked for.
func TestInitClusterStore(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.Shared(t).CreateDatabase(t)
	kek := make([]byte, ca.KEKSize)
	rand.Read(kek)

	made, err := Init(ctx, Options{DataDir: t.TempDir(), Store: dsn, CAKEK: kek, TrustDomain: "tether.example"})
	if err != nil || !made.Created || made.TrustDomain != "tether.example" {
		t.Fatalf("init of an empty store: %+v, %v", made, err)
	}
	second, err := Init(ctx, Options{DataDir: t.TempDir(), Store: dsn, CAKEK: kek})
	if err != nil || second.Created || second.CAFingerprint != made.CAFingerprint || second.TrustDomain != "tether.example" {
		t.Fatalf("init on a second host: %+v, %v; want the CA the first made (%s)", second, err, made.CAFingerprint)
	}
	a, err := Open(ctx, Options{DataDir: t.TempDir(), Store: dsn, CAKEK: kek, Existing: true})
	if err != nil {
		t.Fatalf("admin command after init: %v", err)
	}
	a.Close()
	_, err = Init(ctx, Options{DataDir: t.TempDir(), Store: dsn, CAKEK: kek, TrustDomain: "other.example"})
	if mm, ok := errors.AsType[*TrustDomainMismatchError](err); !ok || mm.Have != "tether.example" || mm.Want != "other.example" ||
		!strings.HasPrefix(err.Error(), "the cluster's store is initialised already") {
		t.Fatalf("init asking for another trust domain: %v", err)
	}
	// Without the cluster's key the CA cannot be read: an error, not a
	// second CA.
	wrong := make([]byte, ca.KEKSize)
	rand.Read(wrong)
	if res, err := Init(ctx, Options{DataDir: t.TempDir(), Store: dsn, CAKEK: wrong}); err == nil || !strings.Contains(err.Error(), "another key-encryption key") {
		t.Fatalf("init with another key: %+v, %v; want the error that names the key", res, err)
	}
}

// TestInitRace: two hosts of a cluster run init on its store at the same
// moment, asking for different trust domains. One makes the CA; the
// other finds that CA once it gets the store's CA lock, and, having asked
// for another trust domain, is refused: it neither says that it
// initialised the store nor records relay.init. Both inits waited for
// the lock (held here, as by a relay starting) past the point where they
// find no CA: they used to both see none, both report Created and record
// relay.init, and the second exit 0 with a CA of another trust domain
// than it asked for.
func TestInitRace(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.Shared(t).CreateDatabase(t)
	kek := make([]byte, ca.KEKSize)
	rand.Read(kek)

	holder, err := store.OpenPostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	unlock, err := holder.Lock(ctx, "ca") // datadir's caLock
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		td  string
		res Initialised
		err error
	}
	results := make(chan result, 2)
	for _, td := range []string{"one.example", "two.example"} {
		go func() {
			res, err := Init(ctx, Options{DataDir: t.TempDir(), Store: dsn, CAKEK: kek, TrustDomain: td})
			results <- result{td, res, err}
		}()
	}
	// Both wait for the lock before either can make the CA.
	pg, err := pgx.Connect(ctx, dsn)
	if err != nil {
		unlock()
		t.Fatal(err)
	}
	defer pg.Close(ctx)
	for waiting := 0; waiting < 2; {
		if err := pg.QueryRow(ctx, `select count(*) from pg_locks l join pg_database d on d.oid = l.database
			where d.datname = current_database() and l.locktype = 'advisory' and not l.granted`).Scan(&waiting); err != nil {
			unlock()
			t.Fatal(err)
		}
		runtime.Gosched()
	}
	unlock()

	var made, refused []result
	for range 2 {
		r := <-results
		var mm *TrustDomainMismatchError
		switch {
		case r.err == nil && r.res.Created && r.res.TrustDomain == r.td:
			made = append(made, r)
		case errors.As(r.err, &mm) && mm.Want == r.td && !r.res.Created:
			refused = append(refused, r)
		default:
			t.Errorf("init asking for %s: %+v, %v", r.td, r.res, r.err)
		}
	}
	if len(made) != 1 || len(refused) != 1 {
		t.Fatalf("racing inits: %d made the CA (%+v), %d refused (%+v); want one of each", len(made), made, len(refused), refused)
	}
	a, err := Open(ctx, Options{DataDir: t.TempDir(), Store: dsn, CAKEK: kek, Existing: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	recs, err := a.Audit(ctx, AuditFilter{Kind: KindInit})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Detail["trust_domain"] != made[0].td {
		t.Fatalf("relay.init records: %+v; want one, of %s", recs, made[0].td)
	}
}
