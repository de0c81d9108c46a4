package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherhq/tether/protocol/identity"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Unix(1_800_000_000, 0).UTC()

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

func TestCreateAndLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	c, created, err := LoadOrCreate(dir, "tether.example", t0)
	if err != nil || !created {
		t.Fatalf("LoadOrCreate = %v, created %v", err, created)
	}
	if c.Rotating() || len(c.Roots()) != 1 || c.Signer() != c.Serving() || c.Signer().Generation != 1 {
		t.Fatalf("new CA: rotating %v, %d roots, signer %d", c.Rotating(), len(c.Roots()), c.Signer().Generation)
	}
	// A new CA is laid out as before rotation existed: no roots.json.
	if _, err := os.Stat(filepath.Join(dir, ManifestFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a new CA has %s (%v)", ManifestFile, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, KeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v", fi, err)
	}
	again, created, err := LoadOrCreate(dir, "other.example", t0)
	if err != nil || created || again.Fingerprint() != c.Fingerprint() || again.TrustDomain() != "tether.example" {
		t.Fatalf("reload: %v, created %v, td %q", err, created, again.TrustDomain())
	}
}

// TestLoadWithoutManifest is a data directory made before rotation
// existed: ca.crt and ca.key alone. It loads as root generation 1 with
// nothing rewritten, and its first rotation keeps those files.
func TestLoadWithoutManifest(t *testing.T) {
	dir := t.TempDir()
	if _, err := createRoot(dir, "tether.internal", 1, t0); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, CertFile))
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c.Manifest() != nil || c.Signer().Generation != 1 || !c.Signer().AddedAt.Equal(t0) {
		t.Fatalf("old layout: manifest %q, generation %d, added %v", c.Manifest(), c.Signer().Generation, c.Signer().AddedAt)
	}
	old := signAgent(t, c, c.Signer())

	r, err := Rotate(dir, t0.Add(time.Hour), false)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, CertFile))
	if string(before) != string(after) || r.Serving().Generation != 1 || r.Signer().Generation != 2 {
		t.Fatalf("rotation changed ca.crt (%v) or roots: serving %d, signing %d", string(before) != string(after), r.Serving().Generation, r.Signer().Generation)
	}
	if iss := r.IssuerOf(old); !verifies(r, old) || iss == nil || iss.Generation != 1 {
		t.Fatal("a certificate from the first root is not accepted after the rotation")
	}
}

func TestRotateAndRetire(t *testing.T) {
	dir := t.TempDir()
	c, _, err := LoadOrCreate(dir, "tether.internal", t0)
	if err != nil {
		t.Fatal(err)
	}
	fromOld := signAgent(t, c, c.Signer())

	r, err := Rotate(dir, t0.Add(time.Minute), true)
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
	if _, err := Rotate(dir, t0.Add(2*time.Minute), false); !errors.Is(err, ErrRotating) {
		t.Fatalf("second rotation during the overlap: %v, want ErrRotating", err)
	}

	done, retired, err := Retire(dir, t0.Add(time.Hour))
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
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("retired root's %s still exists (%v)", f, err)
		}
	}
	if _, _, err := Retire(dir, t0.Add(2*time.Hour)); !errors.Is(err, ErrNotRotating) {
		t.Fatalf("retire without a rotation: %v, want ErrNotRotating", err)
	}
	// A directory whose first root was retired is not mistaken for an
	// empty one.
	if again, created, err := LoadOrCreate(dir, "tether.internal", t0); err != nil || created || again.Signer().Generation != 2 {
		t.Fatalf("reload after retirement: %v, created %v", err, created)
	}

	// The next rotation numbers on past the retired root.
	r3, err := Rotate(dir, t0.Add(3*time.Hour), false)
	if err != nil {
		t.Fatal(err)
	}
	if r3.Signer().Generation != 3 || r3.Serving().Generation != 2 || len(r3.Retired()) != 1 || r3.RenewNow() {
		t.Fatalf("second rotation: signing %d, serving %d, %d retired", r3.Signer().Generation, r3.Serving().Generation, len(r3.Retired()))
	}
	if r3, err = SetRenewNow(dir, true); err != nil || !r3.RenewNow() {
		t.Fatalf("SetRenewNow: %v", err)
	}
}

func TestLoadRefusesDamagedRoots(t *testing.T) {
	setup := func(t *testing.T) string {
		dir := t.TempDir()
		if _, _, err := LoadOrCreate(dir, "tether.internal", t0); err != nil {
			t.Fatal(err)
		}
		if _, err := Rotate(dir, t0, false); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	tests := []struct {
		name   string
		damage func(t *testing.T, dir string)
		want   string
	}{
		{"new root's key missing", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, KeyFileOf(2))) }, "read CA key"},
		{"old root's certificate missing", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, CertFile)) }, "read CA certificate"},
		{"keys swapped", func(t *testing.T, dir string) {
			k1, _ := os.ReadFile(filepath.Join(dir, KeyFileOf(1)))
			k2, _ := os.ReadFile(filepath.Join(dir, KeyFileOf(2)))
			os.WriteFile(filepath.Join(dir, KeyFileOf(1)), k2, 0o600)
			os.WriteFile(filepath.Join(dir, KeyFileOf(2)), k1, 0o600)
		}, "does not belong"},
		{"key readable by others", func(t *testing.T, dir string) { os.Chmod(filepath.Join(dir, KeyFileOf(2)), 0o644) }, "permissions"},
		{"certificate replaced", func(t *testing.T, dir string) {
			other := t.TempDir()
			r, _ := createRoot(other, "tether.internal", 2, t0)
			os.WriteFile(filepath.Join(dir, CertFileOf(2)), r.PEM(), 0o644)
			os.WriteFile(filepath.Join(dir, KeyFileOf(2)), mustRead(t, filepath.Join(other, KeyFileOf(2))), 0o600)
		}, "says"},
		{"three active roots", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m *manifest) { m.Roots = append(m.Roots, m.Roots[1]) })
		}, "3 active roots"},
		{"generations out of order", func(t *testing.T, dir string) {
			editManifest(t, dir, func(m *manifest) { m.Roots[0], m.Roots[1] = m.Roots[1], m.Roots[0] })
		}, "out of order"},
		{"not JSON", func(t *testing.T, dir string) { os.WriteFile(filepath.Join(dir, ManifestFile), []byte("{"), 0o644) }, "parse"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := setup(t)
			tc.damage(t, dir)
			_, err := Load(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load = %v, want an error containing %q", err, tc.want)
			}
			// Never a reason to make a new CA over the damaged one.
			if _, created, err := LoadOrCreate(dir, "tether.internal", t0); err == nil || created {
				t.Fatalf("LoadOrCreate over a damaged CA: created %v, %v", created, err)
			}
		})
	}
}

// TestInterruptedRotation: a rotation that stopped after writing the new
// root's files but before roots.json leaves the CA as it was; the next
// rotation replaces the stray files.
func TestInterruptedRotation(t *testing.T) {
	dir := t.TempDir()
	c, _, err := LoadOrCreate(dir, "tether.internal", t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := createRoot(dir, "tether.internal", 2, t0); err != nil {
		t.Fatal(err)
	}
	got, err := Load(dir)
	if err != nil || got.Rotating() || got.Signer().Fingerprint() != c.Fingerprint() {
		t.Fatalf("after an interrupted rotation: %v, rotating %v", err, got != nil && got.Rotating())
	}
	stray := mustRead(t, filepath.Join(dir, CertFileOf(2)))
	r, err := Rotate(dir, t0, false)
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Signer().PEM()) == string(stray) {
		t.Fatal("rotation reused a root it did not make")
	}
}

func TestSignAgentRefusesRetiredRoot(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := LoadOrCreate(dir, "tether.internal", t0); err != nil {
		t.Fatal(err)
	}
	if _, err := Rotate(dir, t0, false); err != nil {
		t.Fatal(err)
	}
	c, retired, err := Retire(dir, t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SignAgent(retired, agentCSR(t), agentID(c), time.Hour, t0); err == nil {
		t.Fatal("a retired root signed a certificate")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func editManifest(t *testing.T, dir string, edit func(*manifest)) {
	t.Helper()
	var m manifest
	if err := json.Unmarshal(mustRead(t, filepath.Join(dir, ManifestFile)), &m); err != nil {
		t.Fatal(err)
	}
	edit(&m)
	if err := writeManifest(dir, m); err != nil {
		t.Fatal(err)
	}
}
