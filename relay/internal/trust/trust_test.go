package trust_test

import (
	"context"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// TestServerCertificateOutlivesSessions: at any time over three months,
// the certificate the relay serves is valid for more than the 7 days a
// TLS session it hands out may be resumed (crypto/tls's bound), so a
// backend that verifies a resumed session's certificate never finds it
// expired.
func TestServerCertificateOutlivesSessions(t *testing.T) {
	start := time.Now()
	dir, authority, err := datadir.Open(context.Background(), t.TempDir(), datadir.Options{TrustDomain: "trust.test"}, start)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dir.Close() })
	now := start
	s, err := trust.NewServer(trust.NewAuthority(dir.CAStorage(), authority), nil, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	const session = 7 * 24 * time.Hour
	renewals := 0
	var last []byte
	for ; now.Before(start.Add(90 * 24 * time.Hour)); now = now.Add(6 * time.Hour) {
		c, err := s.Certificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		if left := c.Leaf.NotAfter.Sub(now); left <= session {
			t.Fatalf("at %v the relay serves a certificate with %v left, no more than a session's %v", now.Sub(start), left, session)
		}
		if string(c.Certificate[0]) != string(last) {
			renewals++
			last = c.Certificate[0]
		}
	}
	if renewals < 3 {
		t.Fatalf("%d certificates over 90 days: the clock did not reach the renewals", renewals)
	}
}
