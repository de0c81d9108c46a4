package identity

import (
	"crypto/x509"
	"net/url"
	"testing"
)

func TestParseBackend(t *testing.T) {
	b, err := ParseBackend("spiffe://tether.internal/backend/billing")
	if err != nil || b != (Backend{TrustDomain: "tether.internal", Name: "billing"}) {
		t.Fatalf("ParseBackend = %+v, %v", b, err)
	}
	if got := b.String(); got != "spiffe://tether.internal/backend/billing" {
		t.Fatalf("round trip: %s", got)
	}
	for _, bad := range []string{
		"spiffe://tether.internal/backend/",
		"spiffe://tether.internal/backend/Billing",
		"spiffe://tether.internal/backend/billing/x",
		"spiffe://tether.internal/tenant/acme/agent/a1",
		"spiffe://tether.internal/backend/bil%6cing",
		"https://tether.internal/backend/billing",
		"spiffe://u@tether.internal/backend/billing",
		"spiffe://tether.internal:1/backend/billing",
		"spiffe://tether.internal/backend/billing?x",
		"spiffe:backend/billing",
	} {
		if _, err := ParseBackend(bad); err == nil {
			t.Errorf("ParseBackend(%q) accepted", bad)
		}
	}
}

func TestBackendFromCertificate(t *testing.T) {
	u := func(s string) *url.URL { v, _ := url.Parse(s); return v }
	good := &x509.Certificate{URIs: []*url.URL{u("spiffe://td.example/backend/billing")}}
	if b, err := BackendFromCertificate(good, "td.example"); err != nil || b.Name != "billing" {
		t.Fatalf("good certificate: %+v, %v", b, err)
	}
	for name, c := range map[string]*x509.Certificate{
		"other trust domain": good,
		"two URIs":           {URIs: []*url.URL{u("spiffe://tether.internal/backend/a"), u("spiffe://tether.internal/backend/b")}},
		"agent identity":     {URIs: []*url.URL{u("spiffe://tether.internal/tenant/acme/agent/a1")}},
		"no URI":             {},
	} {
		if _, err := BackendFromCertificate(c, "tether.internal"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
