package identity

import (
	"crypto/x509"
	"net/url"
	"testing"
)

func TestParseRelay(t *testing.T) {
	r, err := ParseRelay("spiffe://tether.internal/relay/r-2")
	if err != nil || r != (Relay{TrustDomain: "tether.internal", ID: "r-2"}) {
		t.Fatalf("ParseRelay = %+v, %v", r, err)
	}
	if got := r.String(); got != "spiffe://tether.internal/relay/r-2" {
		t.Fatalf("round trip: got %s", got)
	}
	for _, bad := range []string{
		"spiffe://tether.internal/relay",  // what relays present to agents: no id
		"spiffe://tether.internal/relay/", // empty id
		"spiffe://tether.internal/relay/R2",
		"spiffe://tether.internal/relay/r2/x",
		"spiffe://tether.internal/relay/r%32",
		"spiffe://tether.internal/relay/a%2Fb",
		"spiffe://tether.internal/operator/r2",
		"spiffe://tether.internal/backend/r2",
		"spiffe://tether.internal/tenant/acme/agent/r2",
		"https://tether.internal/relay/r2",
		"spiffe://u@tether.internal/relay/r2",
		"spiffe://tether.internal:1/relay/r2",
		"spiffe://tether.internal/relay/r2?x",
		"spiffe://tether.internal/relay/r2#x",
		"spiffe:relay/r2",
		"spiffe://Tether/relay/r2",
	} {
		if r, err := ParseRelay(bad); err == nil {
			t.Errorf("ParseRelay(%q) = %+v, want an error", bad, r)
		}
	}
}

func TestRelayFromCertificate(t *testing.T) {
	u := func(s string) *url.URL { v, _ := url.Parse(s); return v }
	good := &x509.Certificate{URIs: []*url.URL{u("spiffe://td.example/relay/r1")}}
	if r, err := RelayFromCertificate(good, "td.example"); err != nil || r.ID != "r1" {
		t.Fatalf("good certificate: %+v, %v", r, err)
	}
	for name, c := range map[string]*x509.Certificate{
		"other trust domain":   good,
		"two URIs":             {URIs: []*url.URL{u("spiffe://tether.internal/relay/a"), u("spiffe://tether.internal/relay/b")}},
		"relay seen by agents": {URIs: []*url.URL{RelayURI("tether.internal")}},
		"agent identity":       {URIs: []*url.URL{u("spiffe://tether.internal/tenant/acme/agent/a1")}},
		"backend identity":     {URIs: []*url.URL{u("spiffe://tether.internal/backend/billing")}},
		"operator identity":    {URIs: []*url.URL{u("spiffe://tether.internal/operator/alice")}},
		"no URI":               {},
	} {
		if r, err := RelayFromCertificate(c, "tether.internal"); err == nil {
			t.Errorf("%s: accepted as %+v", name, r)
		}
	}
}
