package identity_test

import (
	"testing"

	"github.com/tetherhq/tether/protocol/identity"
)

// FuzzParseOperator checks that ParseOperator never panics, that what it
// accepts validates and round-trips through its canonical form, and that
// agent and backend identities are never taken for operators.
func FuzzParseOperator(f *testing.F) {
	for _, s := range []string{
		"spiffe://tether.example/operator/alice",
		"spiffe://td/operator/a%2Fb",
		"spiffe://td/operator/alice/",
		"spiffe://td/operator/",
		"spiffe://td/backend/billing",
		"spiffe://td/tenant/acme/agent/a1",
		"spiffe://user@td/operator/alice",
		"spiffe://td:443/operator/alice",
		"spiffe://td/operator/alice?x",
		"SPIFFE://td/operator/alice",
		"",
		"%",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		o, err := identity.ParseOperator(s)
		if err != nil {
			if o != (identity.Operator{}) {
				t.Fatalf("got %+v with error %v, want the zero Operator", o, err)
			}
			return
		}
		if err := o.Validate(); err != nil {
			t.Fatalf("ParseOperator(%q) accepted %+v, which does not validate: %v", s, o, err)
		}
		if s != o.String() {
			t.Fatalf("ParseOperator accepted %q, another spelling of %q", s, o.String())
		}
		if _, err := identity.ParseBackend(s); err == nil {
			t.Fatalf("%q parses as both an operator and a backend", s)
		}
		if _, err := identity.ParseAgent(s); err == nil {
			t.Fatalf("%q parses as both an operator and an agent", s)
		}
		got, err := identity.ParseOperator(o.String())
		if err != nil || got != o {
			t.Fatalf("round trip of %+v through %q: got %+v, %v", o, o.String(), got, err)
		}
	})
}
