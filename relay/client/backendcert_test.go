package client_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/client"
)

// Removing a backend ends its certificates for good: once a backend of
// the same name is added again, the TLS door still refuses the
// certificates issued to the one removed, and takes those issued since.
func TestBackendCertificateOfRemovedBackend(t *testing.T) {
	w := newWorld(t, worldOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dial := func(d *client.Dialer) error {
		c, err := d.DialContext(ctx, "tcp", w.target)
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(w.tls); err != nil {
		t.Fatalf("dial with the backend's certificate: %v", err)
	}
	a, err := admin.Open(ctx, admin.Options{DataDir: w.dataDir})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()

	if err := a.RemoveBackend(ctx, "billing"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Second); ; {
		err := dial(w.tls)
		if errors.Is(err, client.ErrUnauthenticated) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("2 s after the backend's removal its certificate still gets %v; want unauthenticated", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	if _, err := a.AddBackend(ctx, "billing", []string{"acme/echo"}); err != nil {
		t.Fatal(err)
	}
	// A few tries over more than the relay's change poll (500 ms): few
	// enough to stay under the failures a source may make before it is
	// throttled.
	for range 3 {
		if err := dial(w.tls); !errors.Is(err, client.ErrUnauthenticated) {
			t.Fatalf("the certificate of the backend removed, after one of the same name was added: got %v, want unauthenticated", err)
		}
		time.Sleep(300 * time.Millisecond)
	}

	cert, err := a.IssueBackendCertificate(ctx, "billing", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "new")
	if err := cert.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	conf, err := client.LoadCertificate(dir)
	if err != nil {
		t.Fatal(err)
	}
	fresh := &client.Dialer{Relay: w.tls.Relay, TLSConfig: conf, Timeout: 20 * time.Second}
	if err := dial(fresh); err != nil {
		t.Fatalf("dial with a certificate issued to the backend added again: %v", err)
	}
	if err := dial(w.tls); !errors.Is(err, client.ErrUnauthenticated) {
		t.Fatalf("the old certificate, once a new one was issued: got %v, want unauthenticated", err)
	}
}

// Revoking one of a backend's certificates ends it on every connection
// made once the change feed told the front door (within 2 s), resumed TLS
// sessions included, while the backend's other certificate and its API
// key keep working; the revocation is audited.
func TestBackendCertificateRevoked(t *testing.T) {
	w := newWorld(t, worldOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dial := func(d *client.Dialer, target string) error {
		c, err := d.DialContext(ctx, "tcp", target)
		if err == nil {
			c.Close()
		}
		return err
	}
	a, err := admin.Open(ctx, admin.Options{DataDir: w.dataDir})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()

	// A second certificate of the same backend, beside the world's.
	second, err := a.IssueBackendCertificate(ctx, "billing", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "second")
	if err := second.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	conf, err := client.LoadCertificate(dir)
	if err != nil {
		t.Fatal(err)
	}
	other := &client.Dialer{Relay: w.tls.Relay, TLSConfig: conf, Timeout: 20 * time.Second}
	// The relay is to forget its cached copy of the backend for the
	// revocation's own change: let it apply those written until now
	// first (the issue's), which it has once it refuses a grant removed
	// after them.
	if err := a.Ungrant(ctx, "billing", []string{"acme/greet"}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Second); ; {
		err := dial(w.plain, w.greeter)
		if errors.Is(err, client.ErrNotAllowed) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("2 s after a grant was removed, a dial it allowed gets %v; want not allowed", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for name, d := range map[string]*client.Dialer{"the first certificate": w.tls, "the second certificate": other, "the API key": w.plain} {
		// Twice: the second connection resumes the TLS session.
		for range 2 {
			if err := dial(d, w.target); err != nil {
				t.Fatalf("dial with %s before the revocation: %v", name, err)
			}
		}
	}

	first := certSerial(t, filepath.Join(w.certDir, "backend.crt"))
	l, err := a.BackendCertificates(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, c := range l.Certificates {
		if c.Expired || !c.NotAfter.After(c.CreatedAt) {
			t.Errorf("BackendCertificates(billing) lists %+v", c)
		}
		listed = append(listed, c.Serial)
	}
	slices.Sort(listed)
	want := []string{first, second.Serial}
	slices.Sort(want)
	if !slices.Equal(listed, want) || l.AcceptsUnrecorded {
		t.Fatalf("BackendCertificates(billing) = %+v; want %v, no unrecorded ones", l, want)
	}

	// Revoked by the serial as an operator may copy it: upper case.
	rc, err := a.RevokeBackendCertificate(ctx, "billing", strings.ToUpper(first))
	if err != nil || rc.Serial != first {
		t.Fatalf("RevokeBackendCertificate(billing, %s) = %+v, %v", strings.ToUpper(first), rc, err)
	}
	for deadline := time.Now().Add(2 * time.Second); ; {
		err := dial(w.tls, w.target)
		if errors.Is(err, client.ErrUnauthenticated) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("2 s after its revocation the certificate still gets %v; want unauthenticated", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := dial(other, w.target); err != nil {
		t.Fatalf("the backend's other certificate after the revocation: %v", err)
	}
	if err := dial(w.plain, w.target); err != nil {
		t.Fatalf("the backend's API key after the revocation: %v", err)
	}
	if l, err := a.BackendCertificates(ctx, "billing"); err != nil || len(l.Certificates) != 1 || l.Certificates[0].Serial != second.Serial {
		t.Fatalf("BackendCertificates(billing) after the revocation = %+v, %v; want %s only", l, err, second.Serial)
	}
	if _, err := a.RevokeBackendCertificate(ctx, "billing", first); !errors.Is(err, admin.ErrNotFound) || !strings.Contains(err.Error(), "no certificate "+first) {
		t.Fatalf("revoking it again: got %v, want not found naming the serial", err)
	}
	recs, err := a.Audit(ctx, admin.AuditFilter{Kind: admin.KindBackendCertRevoke})
	if err != nil || len(recs) != 1 || recs[0].Backend != "billing" || recs[0].Detail["serial"] != first {
		t.Fatalf("audit of the revocation = %+v, %v; want one record of billing's %s", recs, err, first)
	}
}

// certSerial is the serial of the certificate in file, as the relay
// writes it.
func certSerial(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s holds no PEM block", file)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.Text(16)
}

// TestCertificateRefusedAtTLSHandshake: a client certificate the TLS
// door refuses in the handshake (here one from another CA; an expired
// one goes the same way) is an unauthenticated refusal for the Dialer,
// not a relay it could not reach, and Forward closes the local
// connection at once and logs the refusal instead of retrying for
// RelayWait and logging the relay as unreachable.
func TestCertificateRefusedAtTLSHandshake(t *testing.T) {
	w := newWorld(t, worldOpts{})
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := url.Parse("spiffe://elsewhere.example/backend/billing")
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{id}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	conf := w.tls.TLSConfig.Clone() // trusts the relay
	conf.Certificates = []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}
	d := &client.Dialer{Relay: w.tls.Relay, TLSConfig: conf, Timeout: 20 * time.Second}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", w.target)
	if err == nil {
		c.Close()
		t.Fatal("dial with a certificate from another CA succeeded")
	}
	var r *client.Refusal
	if !errors.Is(err, client.ErrUnauthenticated) || !errors.As(err, &r) {
		t.Fatalf("dial with a certificate from another CA: got %v (%T), want a *client.Refusal matching client.ErrUnauthenticated", err, err)
	}

	logs, log := newLogBuffer(t)
	addr, _ := serveForward(t, &client.Forward{Dialer: d, Target: w.target, RelayWait: time.Minute, Logger: log})
	local, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	local.SetDeadline(time.Now().Add(20 * time.Second))
	if b, err := io.ReadAll(local); err != nil || len(b) > 0 {
		t.Fatalf("the forward's local connection: read %q, %v; want it closed without a byte", b, err)
	}
	logs.waitFor(t, 10*time.Second, `"msg":"relay refused the connection; closed it"`, `"code":"unauthenticated"`)
	if strings.Contains(logs.String(), "relay unreachable") {
		t.Fatalf("the forward logged a refused certificate as the relay unreachable:\n%s", logs.String())
	}
}
