package identity_test

import (
	"testing"

	"github.com/tetherhq/tether/protocol/identity"
)

// FuzzParseAgent checks that ParseAgent never panics, that what it accepts
// is a valid Agent, and that the Agent's canonical string parses back to the
// same Agent. Seeds are added here and kept in testdata/fuzz/FuzzParseAgent.
func FuzzParseAgent(f *testing.F) {
	for _, s := range []string{
		"spiffe://tether.example/tenant/acme/agent/a1",
		"spiffe://prod_eu-1.tether.example/tenant/0-acme-9/agent/01hzx-3k8q",
		"spiffe://td/tenant/a%2Fb/agent/c",
		"spiffe://td/tenant/%61/agent/b",
		"spiffe://td/tenant/a/agent/b?",
		"spiffe://td/tenant/a/agent/b#",
		"SPIFFE://td/tenant/a/agent/b",
		"spiffe://user@td/tenant/a/agent/b",
		"spiffe://td:443/tenant/a/agent/b",
		"spiffe://[::1]/tenant/a/agent/b",
		"spiffe:td/tenant/a/agent/b",
		"spiffe://td/relay",
		"spiffe://td//tenant/a/agent/b",
		"spiffe://td/tenant/a/agent/b/",
		"spiffe://td/tenant/-a/agent/b",
		"",
		"%",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := identity.ParseAgent(s)
		if err != nil {
			if a != (identity.Agent{}) {
				t.Fatalf("got %+v with error %v, want the zero Agent", a, err)
			}
			return
		}
		if err := a.Validate(); err != nil {
			t.Fatalf("ParseAgent(%q) accepted %+v, which does not validate: %v", s, a, err)
		}
		canonical := a.String()
		if s != canonical {
			t.Fatalf("ParseAgent accepted %q, another spelling of %q", s, canonical)
		}
		got, err := identity.ParseAgent(canonical)
		if err != nil {
			t.Fatalf("cannot parse %q, the canonical form of %+v: %v", canonical, a, err)
		}
		if got != a {
			t.Fatalf("got %+v after a round trip through %q, want %+v", got, canonical, a)
		}
		if again := got.String(); again != canonical {
			t.Fatalf("got %q formatting a second time, want %q", again, canonical)
		}
		if u := a.URI(); u.Scheme != "spiffe" || u.Host != a.TrustDomain {
			t.Fatalf("got URI %v for %+v, want scheme spiffe and host %q", u, a, a.TrustDomain)
		}
	})
}

// FuzzParseBackend: a backend identity comes from a client certificate;
// parsing never panics, and what parses is valid and round-trips.
func FuzzParseBackend(f *testing.F) {
	for _, s := range []string{
		"spiffe://tether.internal/backend/billing", "spiffe://td/backend/", "spiffe://td/backend/a/b",
		"spiffe://td/tenant/acme/agent/x", "spiffe://td/backend/B%41D", "spiffe://u@td/backend/x", "spiffe://td:1/backend/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := identity.ParseBackend(s)
		if err != nil {
			return
		}
		if err := b.Validate(); err != nil {
			t.Fatalf("ParseBackend(%q) = %+v, invalid: %v", s, b, err)
		}
		if s != b.String() {
			t.Fatalf("ParseBackend accepted %q, another spelling of %q", s, b.String())
		}
		again, err := identity.ParseBackend(b.String())
		if err != nil || again != b {
			t.Fatalf("round trip of %+v: %+v, %v", b, again, err)
		}
	})
}
