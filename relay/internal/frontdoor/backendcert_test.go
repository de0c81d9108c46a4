package frontdoor

import (
	"crypto/x509"
	"math/big"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// A backend's certificate is accepted when its serial is recorded with
// the backend; an unrecorded one only for a backend added before
// certificates were recorded, and only if it was issued after that
// backend was added (not to a removed backend of the same name).
func TestCertIssuedTo(t *testing.T) {
	added := time.Unix(1_800_000_000, 0).UTC()
	cert := func(serial int64, issued time.Time) *x509.Certificate {
		// As the CA signs them: backdated, to the second.
		return &x509.Certificate{SerialNumber: big.NewInt(serial), NotBefore: issued.Add(-certBackdate).Truncate(time.Second)}
	}
	recorded := store.Backend{Name: "billing", CreatedAt: added, CertSerials: []string{"1a", "ff"}}
	unrecorded := store.Backend{Name: "billing", CreatedAt: added, CertsUnrecorded: true, CertSerials: []string{"ff"}}
	for _, tc := range []struct {
		name string
		b    store.Backend
		cert *x509.Certificate
		want bool
	}{
		{"recorded", recorded, cert(0xff, added.Add(time.Hour)), true},
		{"not recorded", recorded, cert(0x1b, added.Add(time.Hour)), false},
		{"not recorded, issued before the backend was added", recorded, cert(0x1b, added.Add(-time.Hour)), false},
		{"older backend: recorded", unrecorded, cert(0xff, added.Add(time.Hour)), true},
		{"older backend: unrecorded, issued after it was added", unrecorded, cert(0x1b, added.Add(time.Hour)), true},
		{"older backend: unrecorded, issued as it was added", unrecorded, cert(0x1b, added.Add(300*time.Millisecond)), true},
		{"older backend: unrecorded, issued before it was added", unrecorded, cert(0x1b, added.Add(-time.Second)), false},
	} {
		if got := certIssuedTo(tc.b, tc.cert); got != tc.want {
			t.Errorf("%s: certIssuedTo = %v, want %v", tc.name, got, tc.want)
		}
	}
}
