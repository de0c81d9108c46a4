package identity_test

import (
	"testing"

	"github.com/tetherhq/tether/protocol/identity"
)

// FuzzParseRelay checks that ParseRelay never panics, that what it accepts
// is a valid Relay that round-trips through its canonical form, and that
// no other kind of identity (agent, backend, operator, the relay as agents
// see it) is ever taken for a relay-to-relay one. Seeds are added here and
// kept in testdata/fuzz/FuzzParseRelay.
func FuzzParseRelay(f *testing.F) {
	for _, s := range []string{
		"spiffe://tether.example/relay/r1",
		"spiffe://prod_eu-1.tether.example/relay/0-relay-9",
		"spiffe://td/relay",
		"spiffe://td/relay/",
		"spiffe://td/relay/a/b",
		"spiffe://td/relay/a%2Fb",
		"spiffe://td/relay/%61",
		"spiffe://td//relay/a",
		"spiffe://td/relay/a?",
		"spiffe://td/relay/a#",
		"SPIFFE://td/relay/a",
		"spiffe://user@td/relay/a",
		"spiffe://td:443/relay/a",
		"spiffe://[::1]/relay/a",
		"spiffe:td/relay/a",
		"spiffe://td/relay/-a",
		"spiffe://td/operator/a",
		"spiffe://td/tenant/a/agent/b",
		"",
		"%",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := identity.ParseRelay(s)
		if err != nil {
			if r != (identity.Relay{}) {
				t.Fatalf("got %+v with error %v, want the zero Relay", r, err)
			}
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("ParseRelay(%q) accepted %+v, which does not validate: %v", s, r, err)
		}
		if _, err := identity.ParseAgent(s); err == nil {
			t.Fatalf("%q parses as both a relay and an agent", s)
		}
		if _, err := identity.ParseBackend(s); err == nil {
			t.Fatalf("%q parses as both a relay and a backend", s)
		}
		if _, err := identity.ParseOperator(s); err == nil {
			t.Fatalf("%q parses as both a relay and an operator", s)
		}
		if s == identity.RelayURI(r.TrustDomain).String() {
			t.Fatalf("%q, the identity relays present to agents, parses as a relay-to-relay identity", s)
		}
		canonical := r.String()
		if s != canonical {
			t.Fatalf("ParseRelay accepted %q, another spelling of %q", s, canonical)
		}
		got, err := identity.ParseRelay(canonical)
		if err != nil {
			t.Fatalf("cannot parse %q, the canonical form of %+v: %v", canonical, r, err)
		}
		if got != r {
			t.Fatalf("got %+v after a round trip through %q, want %+v", got, canonical, r)
		}
		if again := got.String(); again != canonical {
			t.Fatalf("got %q formatting a second time, want %q", again, canonical)
		}
		if u := r.URI(); u.Scheme != "spiffe" || u.Host != r.TrustDomain {
			t.Fatalf("got URI %v for %+v, want scheme spiffe and host %q", u, r, r.TrustDomain)
		}
	})
}
