package relay

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/trust"
)

// writePair writes a self-signed certificate with serial and its key to
// dir/name.crt and dir/name.key and returns the paths.
func writePair(t *testing.T, dir, name string, serial int64, notAfter time.Time) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "admin.test"}, DNSNames: []string{"admin.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	crt, k := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return crt, k
}

// The admin listener's certificate files are read again when they change:
// a pair renamed over the old one is served from the next handshake on
// while an open connection stays up; a broken, mismatched or expired pair
// is refused and the previous one kept.
func TestAdminCertificateReload(t *testing.T) {
	dir := t.TempDir()
	crt, key := writePair(t, dir, "admin", 1, time.Now().Add(24*time.Hour))
	r := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off,
		AdminListen: "127.0.0.1:0", AdminCertFile: crt, AdminKeyFile: key, DrainTimeout: time.Millisecond})
	addr := r.AdminAddr().String()
	dial := func() *tls.Conn {
		t.Helper()
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	serial := func() int64 {
		c := dial()
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	waitSerial := func(want int64) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if got := serial(); got == want {
				return
			} else if time.Now().After(deadline) {
				t.Fatalf("admin listener serves serial %d, want %d", got, want)
			}
		}
	}
	if got := serial(); got != 1 {
		t.Fatalf("serial %d at start, want 1", got)
	}
	open := dial() // a connection made before the change stays usable
	defer open.Close()

	// Renamed over the old files, as certificate tools do.
	n2c, n2k := writePair(t, dir, "next", 2, time.Now().Add(48*time.Hour))
	if err := os.Rename(n2k, key); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(n2c, crt); err != nil {
		t.Fatal(err)
	}
	waitSerial(2)
	if r.console.CertReloads() != 1 {
		t.Fatalf("%d reloads, want 1", r.console.CertReloads())
	}
	if err := open.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := open.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatalf("the connection made before the reload broke: %v", err)
	}
	if _, err := open.Read(make([]byte, 64)); err != nil {
		t.Fatalf("the connection made before the reload broke: %v", err)
	}

	// Refused, each in turn; the pair of serial 2 stays.
	bad := map[string]func(){
		"garbage": func() { os.WriteFile(crt, []byte("not PEM"), 0o644) },
		"mismatched key": func() {
			_, k := writePair(t, dir, "other", 3, time.Now().Add(time.Hour))
			c4, _ := writePair(t, dir, "mine", 4, time.Now().Add(time.Hour))
			b, _ := os.ReadFile(c4)
			os.WriteFile(crt, b, 0o644)
			kb, _ := os.ReadFile(k)
			os.WriteFile(key, kb, 0o600)
		},
		"expired": func() {
			c5, k5 := writePair(t, dir, "old", 5, time.Now().Add(-time.Minute))
			kb, _ := os.ReadFile(k5)
			os.WriteFile(key, kb, 0o600)
			b, _ := os.ReadFile(c5)
			os.WriteFile(crt, b, 0o644)
		},
	}
	for name, breakIt := range bad {
		breakIt()
		time.Sleep(4 * trust.ReloadSettle) // time to (wrongly) pick it up
		if got := serial(); got != 2 {
			t.Fatalf("%s: admin listener serves serial %d, want 2 kept", name, got)
		}
	}
	// A good pair after the bad ones is taken.
	n6c, n6k := writePair(t, dir, "fixed", 6, time.Now().Add(72*time.Hour))
	os.Rename(n6k, key)
	os.Rename(n6c, crt)
	waitSerial(6)
}

// The admin certificate's files may be symbolic links into another
// directory, and the pair is read again when the files there change: the
// directories the links lead through are watched too.
func TestAdminCertificateReloadThroughLinks(t *testing.T) {
	real, links := t.TempDir(), t.TempDir()
	crt, key := writePair(t, real, "admin", 1, time.Now().Add(24*time.Hour))
	lcrt, lkey := filepath.Join(links, "admin.crt"), filepath.Join(links, "admin.key")
	for link, target := range map[string]string{lcrt: crt, lkey: key} {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	r := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off,
		AdminListen: "127.0.0.1:0", AdminCertFile: lcrt, AdminKeyFile: lkey, DrainTimeout: time.Millisecond})
	serial := func() int64 {
		t.Helper()
		c, err := tls.Dial("tcp", r.AdminAddr().String(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	if got := serial(); got != 1 {
		t.Fatalf("serial %d at start, want 1", got)
	}
	// Renewed where the links point, renamed over the old files there.
	n2c, n2k := writePair(t, real, "next", 2, time.Now().Add(48*time.Hour))
	if err := os.Rename(n2k, key); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(n2c, crt); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); serial() != 2; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the pair renewed where its links point was not served within 20 s")
		}
	}
}
