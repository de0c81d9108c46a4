package client_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/client"
)

// TestTLSDoorResumesSessions: a Dialer with LoadCertificate's
// configuration resumes its TLS session with the relay from its second
// connection on; a Dialer whose configuration is a copy of it with
// another client identity (here none: an API key) never resumes a session
// of the first's, which would present the first's certificate; and a
// resumed connection is checked as a full one is: once the backend is
// removed, a dial that resumes is refused.
func TestTLSDoorResumesSessions(t *testing.T) {
	w := newWorld(t, worldOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conf, err := client.LoadCertificate(w.certDir)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var resumed []bool // of each handshake, in order
	verify := conf.VerifyConnection
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		mu.Lock()
		resumed = append(resumed, cs.DidResume)
		mu.Unlock()
		return verify(cs)
	}
	last := func() (n int, didResume bool) {
		mu.Lock()
		defer mu.Unlock()
		return len(resumed), len(resumed) > 0 && resumed[len(resumed)-1]
	}
	d := &client.Dialer{Relay: w.relay.ConnectTLSAddr().String(), TLSConfig: conf, Timeout: 20 * time.Second}
	for i := range 3 {
		c, err := d.DialContext(ctx, "tcp", w.target)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "ping"); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
			t.Fatalf("dial %d: echo %q, %v", i, got, err)
		}
		c.Close()
		if n, didResume := last(); n != i+1 || didResume != (i > 0) {
			t.Fatalf("after dial %d: %d handshakes, the last resumed: %v; want %d, %v", i, n, didResume, i+1, i > 0)
		}
	}

	// Another identity on a copy of the configuration: its first
	// handshake is a full one (a resumed one would be billing's
	// certificate's), its second resumes its own session.
	keyConf := conf.Clone()
	keyConf.Certificates = nil
	byKey := &client.Dialer{Relay: d.Relay, TLSConfig: keyConf, Backend: w.plain.Backend, APIKey: w.plain.APIKey, Timeout: 20 * time.Second}
	for i := range 2 {
		c, err := byKey.DialContext(ctx, "tcp", w.target)
		if err != nil {
			t.Fatalf("dial %d with the API key: %v", i, err)
		}
		c.Close()
		if _, didResume := last(); didResume != (i > 0) {
			t.Fatalf("dial %d with the API key: resumed %v, want %v", i, didResume, i > 0)
		}
	}

	// Removed, the backend is refused at its next dials, resumed ones
	// included (the change reaches the front door within seconds).
	a, err := admin.Open(ctx, admin.Options{DataDir: filepath.Join(filepath.Dir(w.certDir), "relay")})
	if err != nil {
		t.Fatal(err)
	}
	err = a.RemoveBackend(ctx, "billing")
	a.Close()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := d.DialContext(ctx, "tcp", w.target)
		if err == nil {
			c.Close()
			if time.Now().After(deadline) {
				t.Fatal("the removed backend still dials after 10 s")
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if !errors.Is(err, client.ErrUnauthenticated) {
			t.Fatalf("dial of the removed backend: %v, want unauthenticated", err)
		}
		if _, didResume := last(); !didResume {
			t.Fatal("the refused dial's handshake was not a resumed one: the test shows nothing")
		}
		break
	}
}
