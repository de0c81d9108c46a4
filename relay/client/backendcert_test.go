package client_test

import (
	"context"
	"errors"
	"path/filepath"
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
