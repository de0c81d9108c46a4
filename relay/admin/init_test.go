package admin

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/internal/ca"
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

	made, err := Init(ctx, Options{DataDir: t.TempDir(), Store: dsn, CAKEK: kek, TrustDomain: "tether.example"}, true)
	if err != nil || !made.Created || made.TrustDomain != "tether.example" {
		t.Fatalf("init of an empty store: %+v, %v", made, err)
	}
	second, err := Init(ctx, Options{DataDir: t.TempDir(), Store: dsn, CAKEK: kek}, false)
	if err != nil || second.Created || second.CAFingerprint != made.CAFingerprint || second.TrustDomain != "tether.example" {
		t.Fatalf("init on a second host: %+v, %v; want the CA the first made (%s)", second, err, made.CAFingerprint)
	}
	a, err := Open(ctx, Options{DataDir: t.TempDir(), Store: dsn, CAKEK: kek, Existing: true})
	if err != nil {
		t.Fatalf("admin command after init: %v", err)
	}
	a.Close()
	_, err = Init(ctx, Options{DataDir: t.TempDir(), Store: dsn, CAKEK: kek, TrustDomain: "other.example"}, true)
	if mm, ok := errors.AsType[*TrustDomainMismatchError](err); !ok || mm.Have != "tether.example" || mm.Want != "other.example" {
		t.Fatalf("init asking for another trust domain: %v", err)
	}
	// Without the cluster's key the CA cannot be read: an error, not a
	// second CA.
	wrong := make([]byte, ca.KEKSize)
	rand.Read(wrong)
	if res, err := Init(ctx, Options{DataDir: t.TempDir(), Store: dsn, CAKEK: wrong}, false); err == nil || !strings.Contains(err.Error(), "another key-encryption key") {
		t.Fatalf("init with another key: %+v, %v; want the error that names the key", res, err)
	}
}
