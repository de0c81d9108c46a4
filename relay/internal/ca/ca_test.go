package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/store"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopShared()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

var (
	ctx = context.Background()
	t0  = time.Unix(1_800_000_000, 0).UTC()
)

// storageKind is a kind of Storage the CA's tests run on.
type storageKind struct {
	name string
	// open returns a new, empty storage of this kind.
	open func(t *testing.T) Storage
}

// testKEK is a key-encryption key of its own for each call.
func testKEK(t *testing.T) *KEK {
	t.Helper()
	b := make([]byte, KEKSize)
	rand.Read(b)
	k, err := NewKEK(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// openStore opens a new, empty store at dsn and closes it when the test
// ends.
func openStore(t *testing.T, dsn string) *store.Store {
	t.Helper()
	st, err := store.OpenDSN(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func sqliteDSN(t *testing.T) string   { return filepath.Join(t.TempDir(), "tether.db") }
func postgresDSN(t *testing.T) string { return pgtest.Shared(t).CreateDatabase(t) }

var storageKinds = []storageKind{
	{"dir", func(t *testing.T) Storage { return Dir(filepath.Join(t.TempDir(), "ca")) }},
	{"store-sqlite", func(t *testing.T) Storage { return InStore(openStore(t, sqliteDSN(t)), testKEK(t)) }},
	// One server for the whole package, a database of its own per test.
	{"store-postgres", func(t *testing.T) Storage { return InStore(openStore(t, postgresDSN(t)), testKEK(t)) }},
}

// eachStorage runs test on every kind of storage, as subtests named after
// them.
func eachStorage(t *testing.T, test func(t *testing.T, s Storage)) {
	for _, k := range storageKinds {
		t.Run(k.name, func(t *testing.T) { test(t, k.open(t)) })
	}
}

func agentCSR(t *testing.T) *x509.CertificateRequest {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := CheckCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func agentID(c *CA) identity.Agent {
	return identity.Agent{TrustDomain: c.TrustDomain(), Tenant: "acme", ID: "a1"}
}

// verifies reports whether cert chains to c's active roots as an agent
// certificate.
func verifies(c *CA, cert *x509.Certificate) bool {
	_, err := cert.Verify(x509.VerifyOptions{Roots: c.Pool(), CurrentTime: t0.Add(time.Minute), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err == nil
}

func signAgent(t *testing.T, c *CA, root *Root) *x509.Certificate {
	t.Helper()
	cert, err := c.SignAgent(root, agentCSR(t), agentID(c), time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// absent reports whether s has no file name.
func absent(t *testing.T, s Storage, name string) bool {
	t.Helper()
	_, err := s.ReadFile(ctx, name)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read %s: %v", name, err)
	}
	return errors.Is(err, fs.ErrNotExist)
}

func mustReadFile(t *testing.T, s Storage, name string) []byte {
	t.Helper()
	b, err := s.ReadFile(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCreateAndLoad(t *testing.T) {
	eachStorage(t, func(t *testing.T, s Storage) {
		if _, err := Load(ctx, s); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("Load of an empty storage: %v, want fs.ErrNotExist", err)
		}
		c, created, err := LoadOrCreate(ctx, s, "tether.example", t0)
		if err != nil || !created {
			t.Fatalf("LoadOrCreate = %v, created %v", err, created)
		}
		if c.Rotating() || len(c.Roots()) != 1 || c.Signer() != c.Serving() || c.Signer().Generation != 1 {
			t.Fatalf("new CA: rotating %v, %d roots, signer %d", c.Rotating(), len(c.Roots()), c.Signer().Generation)
		}
		// A new CA is laid out as before rotation existed: no roots.json.
		if !absent(t, s, ManifestFile) || absent(t, s, CertFile) || absent(t, s, KeyFile) {
			t.Fatalf("a new CA holds other files than %s and %s", CertFile, KeyFile)
		}
		again, created, err := LoadOrCreate(ctx, s, "other.example", t0)
		if err != nil || created || again.Fingerprint() != c.Fingerprint() || again.TrustDomain() != "tether.example" {
			t.Fatalf("reload: %v, created %v, td %q", err, created, again.TrustDomain())
		}
		if _, _, err := LoadOrCreate(ctx, Dir(t.TempDir()), "Bad Domain", t0); err == nil {
			t.Fatal("a CA for an invalid trust domain")
		}
	})
}

// TestDirLayout: a CA directory is what it was before storages existed:
// the directory and keys owner-only, the certificates readable.
func TestDirLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if _, err := Rotate(ctx, Dir(dir), t0, false); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("rotate without a CA: %v", err)
	}
	if _, _, err := LoadOrCreate(ctx, Dir(dir), "tether.example", t0); err != nil {
		t.Fatal(err)
	}
	if _, err := Rotate(ctx, Dir(dir), t0, false); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{".": 0o700, KeyFile: 0o600, KeyFileOf(2): 0o600, CertFile: 0o644, CertFileOf(2): 0o644, ManifestFile: 0o644} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v, %v; want mode %v", name, fi, err, want)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 5 {
		t.Errorf("the CA directory holds %d files, want 5 (no temporary files)", len(ents))
	}
}

// TestLoadWithoutManifest is a CA made before rotation existed: ca.crt
// and ca.key alone. It loads as root generation 1 with nothing rewritten,
// and its first rotation keeps those files.
func TestLoadWithoutManifest(t *testing.T) {
	eachStorage(t, func(t *testing.T, s Storage) {
		if _, err := createRoot(ctx, s, "tether.internal", 1, t0); err != nil {
			t.Fatal(err)
		}
		before := mustReadFile(t, s, CertFile)
		c, err := Load(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		if c.Manifest() != nil || c.Signer().Generation != 1 || !c.Signer().AddedAt.Equal(t0) {
			t.Fatalf("old layout: manifest %q, generation %d, added %v", c.Manifest(), c.Signer().Generation, c.Signer().AddedAt)
		}
		old := signAgent(t, c, c.Signer())

		r, err := Rotate(ctx, s, t0.Add(time.Hour), false)
		if err != nil {
			t.Fatal(err)
		}
		after := mustReadFile(t, s, CertFile)
		if string(before) != string(after) || r.Serving().Generation != 1 || r.Signer().Generation != 2 {
			t.Fatalf("rotation changed ca.crt (%v) or roots: serving %d, signing %d", string(before) != string(after), r.Serving().Generation, r.Signer().Generation)
		}
		if iss := r.IssuerOf(old); !verifies(r, old) || iss == nil || iss.Generation != 1 {
			t.Fatal("a certificate from the first root is not accepted after the rotation")
		}
	})
}

func TestRotateAndRetire(t *testing.T) {
	eachStorage(t, func(t *testing.T, s Storage) {
		c, _, err := LoadOrCreate(ctx, s, "tether.internal", t0)
		if err != nil {
			t.Fatal(err)
		}
		fromOld := signAgent(t, c, c.Signer())

		r, err := Rotate(ctx, s, t0.Add(time.Minute), true)
		if err != nil {
			t.Fatal(err)
		}
		if !r.Rotating() || !r.RenewNow() || len(r.Roots()) != 2 {
			t.Fatalf("after rotate: rotating %v, renew now %v, %d roots", r.Rotating(), r.RenewNow(), len(r.Roots()))
		}
		oldRoot, newRoot := r.Serving(), r.Signer()
		if oldRoot.Fingerprint() != c.Fingerprint() || newRoot.Generation != 2 || r.Fingerprint() != c.Fingerprint() {
			t.Fatal("the old root must keep serving (and be what tokens pin) during the overlap")
		}
		if oldRoot.Cert.Subject.CommonName == newRoot.Cert.Subject.CommonName {
			t.Fatalf("both roots are named %q", newRoot.Cert.Subject.CommonName)
		}
		fromNew := signAgent(t, r, r.Signer())
		for name, cert := range map[string]*x509.Certificate{"old": fromOld, "new": fromNew} {
			if !verifies(r, cert) {
				t.Errorf("during the overlap a certificate from the %s root is refused", name)
			}
		}
		if got := r.IssuerOf(fromNew); got == nil || got.Generation != 2 {
			t.Fatalf("IssuerOf(new certificate) = %v", got)
		}
		if got := r.IssuerOf(fromOld); got == nil || got.Generation != 1 {
			t.Fatalf("IssuerOf(old certificate) = %v", got)
		}
		// The relay's certificate still chains to the old root.
		relay, err := r.IssueRelay(time.Hour, t0)
		if err != nil {
			t.Fatal(err)
		}
		if err := relay.Leaf.CheckSignatureFrom(oldRoot.Cert); err != nil {
			t.Fatalf("relay certificate during the overlap: %v", err)
		}
		if got := strings.Count(string(r.BundlePEM()), "BEGIN CERTIFICATE"); got != 2 {
			t.Fatalf("bundle holds %d certificates, want 2", got)
		}
		if _, err := Rotate(ctx, s, t0.Add(2*time.Minute), false); !errors.Is(err, ErrRotating) {
			t.Fatalf("second rotation during the overlap: %v, want ErrRotating", err)
		}

		done, retired, err := Retire(ctx, s, t0.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if retired.Generation != 1 || retired.Fingerprint() != oldRoot.Fingerprint() || !retired.RetiredAt.Equal(t0.Add(time.Hour)) {
			t.Fatalf("retired %d at %v", retired.Generation, retired.RetiredAt)
		}
		if done.Rotating() || done.RenewNow() || done.Signer().Fingerprint() != newRoot.Fingerprint() || done.Serving() != done.Signer() {
			t.Fatal("after retirement the new root must sign and serve alone")
		}
		if verifies(done, fromOld) || !verifies(done, fromNew) {
			t.Fatal("after retirement: the old root's certificate must be refused and the new one's accepted")
		}
		if got := done.RetiredIssuerOf(fromOld); got == nil || got.Generation != 1 {
			t.Fatalf("RetiredIssuerOf(old certificate) = %v", got)
		}
		if done.Root(oldRoot.ID()) == nil || done.Root(oldRoot.ID()).RetiredAt.IsZero() {
			t.Fatal("the retired root is not listed as retired")
		}
		relay, err = done.IssueRelay(time.Hour, t0)
		if err != nil {
			t.Fatal(err)
		}
		if err := relay.Leaf.CheckSignatureFrom(newRoot.Cert); err != nil {
			t.Fatalf("relay certificate after retirement: %v", err)
		}
		for _, f := range []string{KeyFile, CertFile} {
			if !absent(t, s, f) {
				t.Errorf("retired root's %s still exists", f)
			}
		}
		if _, _, err := Retire(ctx, s, t0.Add(2*time.Hour)); !errors.Is(err, ErrNotRotating) {
			t.Fatalf("retire without a rotation: %v, want ErrNotRotating", err)
		}
		// A storage whose first root was retired is not mistaken for an
		// empty one.
		if again, created, err := LoadOrCreate(ctx, s, "tether.internal", t0); err != nil || created || again.Signer().Generation != 2 {
			t.Fatalf("reload after retirement: %v, created %v", err, created)
		}

		// The next rotation numbers on past the retired root.
		r3, err := Rotate(ctx, s, t0.Add(3*time.Hour), false)
		if err != nil {
			t.Fatal(err)
		}
		if r3.Signer().Generation != 3 || r3.Serving().Generation != 2 || len(r3.Retired()) != 1 || r3.RenewNow() {
			t.Fatalf("second rotation: signing %d, serving %d, %d retired", r3.Signer().Generation, r3.Serving().Generation, len(r3.Retired()))
		}
		if r3, err = SetRenewNow(ctx, s, true); err != nil || !r3.RenewNow() {
			t.Fatalf("SetRenewNow: %v", err)
		}
		if got, err := ReadManifest(ctx, s); err != nil || string(got) != string(r3.Manifest()) {
			t.Fatalf("ReadManifest = %q, %v; want the CA's %q", got, err, r3.Manifest())
		}
	})
}

func TestLoadRefusesDamagedRoots(t *testing.T) {
	type damage struct {
		name   string
		damage func(t *testing.T, s Storage)
		want   string
	}
	tests := []damage{
		{"new root's key missing", func(t *testing.T, s Storage) { s.Remove(ctx, KeyFileOf(2)) }, "read CA key"},
		{"old root's certificate missing", func(t *testing.T, s Storage) { s.Remove(ctx, CertFile) }, "read CA certificate"},
		{"keys swapped", func(t *testing.T, s Storage) {
			k1, k2 := mustReadFile(t, s, KeyFileOf(1)), mustReadFile(t, s, KeyFileOf(2))
			s.WriteFile(ctx, KeyFileOf(1), k2)
			s.WriteFile(ctx, KeyFileOf(2), k1)
		}, "does not belong"},
		{"certificate replaced", func(t *testing.T, s Storage) {
			other := Dir(t.TempDir())
			r, _ := createRoot(ctx, other, "tether.internal", 2, t0)
			s.WriteFile(ctx, CertFileOf(2), r.PEM())
			s.WriteFile(ctx, KeyFileOf(2), mustReadFile(t, other, KeyFileOf(2)))
		}, "says"},
		{"key not PEM", func(t *testing.T, s Storage) { s.WriteFile(ctx, KeyFileOf(2), []byte("not a key")) }, "no PEM PKCS#8 private key"},
		{"three active roots", func(t *testing.T, s Storage) {
			editManifest(t, s, func(m *manifest) { m.Roots = append(m.Roots, m.Roots[1]) })
		}, "3 active roots"},
		{"generations out of order", func(t *testing.T, s Storage) {
			editManifest(t, s, func(m *manifest) { m.Roots[0], m.Roots[1] = m.Roots[1], m.Roots[0] })
		}, "out of order"},
		{"not JSON", func(t *testing.T, s Storage) { s.WriteFile(ctx, ManifestFile, []byte("{")) }, "parse"},
	}
	check := func(t *testing.T, s Storage, tc damage) {
		if _, _, err := LoadOrCreate(ctx, s, "tether.internal", t0); err != nil {
			t.Fatal(err)
		}
		if _, err := Rotate(ctx, s, t0, false); err != nil {
			t.Fatal(err)
		}
		tc.damage(t, s)
		_, err := Load(ctx, s)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("Load = %v, want an error containing %q", err, tc.want)
		}
		if errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("Load of a damaged CA: %v, which says there is no CA", err)
		}
		// Never a reason to make a new CA over the damaged one.
		if _, created, err := LoadOrCreate(ctx, s, "tether.internal", t0); err == nil || created {
			t.Fatalf("LoadOrCreate over a damaged CA: created %v, %v", created, err)
		}
	}
	for _, k := range storageKinds {
		for _, tc := range tests {
			t.Run(k.name+"/"+tc.name, func(t *testing.T) { check(t, k.open(t), tc) })
		}
	}
	t.Run("dir/key readable by others", func(t *testing.T) {
		s := Dir(t.TempDir())
		check(t, s, damage{"key readable by others", func(t *testing.T, s Storage) {
			os.Chmod(filepath.Join(string(s.(Dir)), KeyFileOf(2)), 0o644)
		}, "permissions"})
	})
}

// TestInterruptedRotation: a rotation that stopped after writing the new
// root's files but before roots.json leaves the CA as it was; the next
// rotation replaces the stray files.
func TestInterruptedRotation(t *testing.T) {
	eachStorage(t, func(t *testing.T, s Storage) {
		c, _, err := LoadOrCreate(ctx, s, "tether.internal", t0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := createRoot(ctx, s, "tether.internal", 2, t0); err != nil {
			t.Fatal(err)
		}
		got, err := Load(ctx, s)
		if err != nil || got.Rotating() || got.Signer().Fingerprint() != c.Fingerprint() {
			t.Fatalf("after an interrupted rotation: %v, rotating %v", err, got != nil && got.Rotating())
		}
		stray := mustReadFile(t, s, CertFileOf(2))
		r, err := Rotate(ctx, s, t0, false)
		if err != nil {
			t.Fatal(err)
		}
		if string(r.Signer().PEM()) == string(stray) {
			t.Fatal("rotation reused a root it did not make")
		}
	})
}

func TestSignAgentRefusesRetiredRoot(t *testing.T) {
	eachStorage(t, func(t *testing.T, s Storage) {
		if _, _, err := LoadOrCreate(ctx, s, "tether.internal", t0); err != nil {
			t.Fatal(err)
		}
		if _, err := Rotate(ctx, s, t0, false); err != nil {
			t.Fatal(err)
		}
		c, retired, err := Retire(ctx, s, t0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.SignAgent(retired, agentCSR(t), agentID(c), time.Hour, t0); err == nil {
			t.Fatal("a retired root signed a certificate")
		}
	})
}

func editManifest(t *testing.T, s Storage, edit func(*manifest)) {
	t.Helper()
	var m manifest
	if err := json.Unmarshal(mustReadFile(t, s, ManifestFile), &m); err != nil {
		t.Fatal(err)
	}
	edit(&m)
	if err := writeManifest(ctx, s, m); err != nil {
		t.Fatal(err)
	}
}

// endorsementOf returns the endorsement of root generation gen in roots.json
// of s ("" when there is none).
func endorsementOf(t *testing.T, s Storage, gen int) string {
	t.Helper()
	var m manifest
	if err := json.Unmarshal(mustReadFile(t, s, ManifestFile), &m); err != nil {
		t.Fatal(err)
	}
	for _, r := range append(m.Roots, m.Retired...) {
		if r.Generation == gen {
			return r.Endorsement
		}
	}
	t.Fatalf("roots.json has no root %d", gen)
	return ""
}

// A rotation's new root is endorsed by the root before it, kept with it in
// roots.json through renew-now, retirement and the next rotation, and
// carried in EndorsementsPEM; the endorsement widens no chain.
func TestRotationEndorsesNewRoot(t *testing.T) {
	eachStorage(t, func(t *testing.T, s Storage) {
		c, _, err := LoadOrCreate(ctx, s, "tether.internal", t0)
		if err != nil {
			t.Fatal(err)
		}
		if c.Signer().Endorsement != nil || len(c.EndorsementsPEM()) != 0 {
			t.Fatal("a CA never rotated has an endorsement")
		}
		r, err := Rotate(ctx, s, t0.Add(time.Minute), false)
		if err != nil {
			t.Fatal(err)
		}
		old, nw := r.Serving(), r.Signer()
		e := nw.Endorsement
		if e == nil || !Endorses(old.Cert, nw.Cert, e) {
			t.Fatalf("the new root is not endorsed by the old one: %v", e)
		}
		if Endorses(nw.Cert, nw.Cert, e) || Endorses(old.Cert, old.Cert, e) {
			t.Fatal("Endorses accepts the endorsement for the wrong roots")
		}
		stored := endorsementOf(t, s, 2)
		if stored != string(pemCert(e)) || string(r.EndorsementsPEM()) != stored {
			t.Fatalf("roots.json keeps %q, EndorsementsPEM %q; want the endorsement", stored, r.EndorsementsPEM())
		}
		// Not an intermediate: the old root's path length 0 forbids it.
		leaf := signAgent(t, r, nw)
		old1 := x509.NewCertPool()
		old1.AddCert(old.Cert)
		inter := x509.NewCertPool()
		inter.AddCert(e)
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: old1, Intermediates: inter, CurrentTime: t0.Add(2 * time.Minute),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
			t.Fatal("a certificate from the new root chains to the old root through the endorsement")
		}
		if _, err := SetRenewNow(ctx, s, true); err != nil {
			t.Fatal(err)
		}
		if got := endorsementOf(t, s, 2); got != stored {
			t.Fatal("renew-now dropped or changed the endorsement")
		}
		done, _, err := Retire(ctx, s, t0.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if got := endorsementOf(t, s, 2); got != stored || string(done.EndorsementsPEM()) != stored {
			t.Fatal("retirement dropped or changed the endorsement")
		}
		r3, err := Rotate(ctx, s, t0.Add(2*time.Hour), false)
		if err != nil {
			t.Fatal(err)
		}
		if !Endorses(r3.Serving().Cert, r3.Signer().Cert, r3.Signer().Endorsement) || r3.Serving().Endorsement == nil {
			t.Fatal("the second rotation's root is not endorsed by the first's, or the first's endorsement is gone")
		}
		if got := strings.Count(string(r3.EndorsementsPEM()), "BEGIN CERTIFICATE"); got != 2 {
			t.Fatalf("EndorsementsPEM holds %d certificates, want 2 (a chain from root 1)", got)
		}
	})
}

// An overlap begun before endorsements existed gets one from the old root
// as the CA is read, and the next change to the CA stores it; an
// endorsement that is not from the root before is refused.
func TestEndorsementOfEarlierOverlap(t *testing.T) {
	s := Dir(filepath.Join(t.TempDir(), "ca"))
	if _, _, err := LoadOrCreate(ctx, s, "tether.internal", t0); err != nil {
		t.Fatal(err)
	}
	if _, err := Rotate(ctx, s, t0.Add(time.Minute), false); err != nil {
		t.Fatal(err)
	}
	var m manifest
	if err := json.Unmarshal(mustReadFile(t, s, ManifestFile), &m); err != nil {
		t.Fatal(err)
	}
	good := m.Roots[1].Endorsement
	m.Roots[1].Endorsement = "" // as a rotation before endorsements wrote it
	if err := writeManifest(ctx, s, m); err != nil {
		t.Fatal(err)
	}
	c, err := Load(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if !Endorses(c.Serving().Cert, c.Signer().Cert, c.Signer().Endorsement) {
		t.Fatal("no endorsement made for an overlap begun before endorsements")
	}
	if endorsementOf(t, s, 2) != "" {
		t.Fatal("reading the CA wrote to it")
	}
	if _, err := SetRenewNow(ctx, s, true); err != nil {
		t.Fatal(err)
	}
	if endorsementOf(t, s, 2) == "" {
		t.Fatal("the next change to the CA did not store the endorsement")
	}

	// An endorsement by another key (a root of another CA) is damage.
	other := Dir(filepath.Join(t.TempDir(), "other"))
	if _, _, err := LoadOrCreate(ctx, other, "tether.internal", t0); err != nil {
		t.Fatal(err)
	}
	oc, err := Rotate(ctx, other, t0.Add(time.Minute), false)
	if err != nil {
		t.Fatal(err)
	}
	for name, pemText := range map[string]string{"foreign": string(pemCert(oc.Signer().Endorsement)), "garbage": "not pem", "self": string(c.Signer().PEM())} {
		m.Roots[1].Endorsement = pemText
		if err := writeManifest(ctx, s, m); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(ctx, s); err == nil || !strings.Contains(err.Error(), "endorsement") {
			t.Errorf("%s endorsement: Load = %v, want a refusal naming the endorsement", name, err)
		}
	}
	m.Roots[1].Endorsement = good
	if err := writeManifest(ctx, s, m); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(ctx, s); err != nil {
		t.Fatal(err)
	}
}

// stopAt is a Storage whose process stops (every write fails from then
// on) as it is about to write the file stop.
type stopAt struct {
	Storage
	stop    string
	stopped bool
}

func (s *stopAt) WriteFile(ctx context.Context, name string, data []byte) error {
	if name == s.stop || s.stopped {
		s.stopped = true
		return errors.New("the process stopped")
	}
	return s.Storage.WriteFile(ctx, name, data)
}

// TestInterruptedCreation: a first start stopped between writing the
// CA's key and its certificate leaves a CA the next start finishes (the
// key and certificate it made, not new ones); one stopped before the key
// leaves none, and the next start makes one. A key whose certificate was
// lost otherwise is refused, saying what an operator may do, never
// replaced.
func TestInterruptedCreation(t *testing.T) {
	t.Run("stopped before the certificate", func(t *testing.T) {
		eachStorage(t, func(t *testing.T, s Storage) {
			if _, _, err := LoadOrCreate(ctx, &stopAt{Storage: s, stop: CertFile}, "tether.internal", t0); err == nil {
				t.Fatal("LoadOrCreate succeeded while the process stopped")
			}
			key := mustReadFile(t, s, KeyFile)
			c, _, err := LoadOrCreate(ctx, s, "tether.internal", t0)
			if err != nil {
				t.Fatalf("start after a creation stopped before the certificate: %v", err)
			}
			if got := mustReadFile(t, s, KeyFile); string(got) != string(key) {
				t.Fatal("the CA's key was replaced")
			}
			if _, err := s.ReadFile(ctx, CertFile+pendingSuffix); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("pending certificate left behind: %v", err)
			}
			if again, err := Load(ctx, s); err != nil || again.Fingerprint() != c.Fingerprint() {
				t.Fatalf("Load after the creation was finished: %v", err)
			}
		})
	})
	t.Run("stopped before the key", func(t *testing.T) {
		eachStorage(t, func(t *testing.T, s Storage) {
			if _, _, err := LoadOrCreate(ctx, &stopAt{Storage: s, stop: KeyFile}, "tether.internal", t0); err == nil {
				t.Fatal("LoadOrCreate succeeded while the process stopped")
			}
			if _, created, err := LoadOrCreate(ctx, s, "tether.internal", t0); err != nil || !created {
				t.Fatalf("start after a creation stopped before the key: created %v, %v", created, err)
			}
		})
	})
	t.Run("certificate lost", func(t *testing.T) {
		eachStorage(t, func(t *testing.T, s Storage) {
			if _, _, err := LoadOrCreate(ctx, s, "tether.internal", t0); err != nil {
				t.Fatal(err)
			}
			key := mustReadFile(t, s, KeyFile)
			if err := s.Remove(ctx, CertFile); err != nil {
				t.Fatal(err)
			}
			_, created, err := LoadOrCreate(ctx, s, "tether.internal", t0)
			if err == nil || created || errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("LoadOrCreate with the certificate lost: created %v, %v", created, err)
			}
			for _, want := range []string{"exists without its certificate", "no agent was ever enrolled", "remove"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if got := mustReadFile(t, s, KeyFile); string(got) != string(key) {
				t.Fatal("the CA's key was replaced")
			}
		})
	})
}
