package relay

import (
	"encoding/json"
	"testing"

	"github.com/tetherhq/tether/protocol/identity"
)

// FuzzTenantClaim: the tenant claim of a bearer token is hostile input
// (signed, but by an issuer that may be misconfigured). It parses into a
// non-empty list of valid tenant names and "*", or is refused; it never
// panics.
func FuzzTenantClaim(f *testing.F) {
	for _, s := range []string{`"acme"`, `["acme","globex"]`, `"*"`, `[]`, `7`, `null`, `["Acme"]`, `[1]`, `{"a":1}`, `"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) {
			return // the token's JSON was parsed before the claim is looked at
		}
		ts, err := tenantClaim(raw)
		if err != nil {
			return
		}
		if len(ts) == 0 {
			t.Fatalf("tenantClaim(%s) accepted an empty list", raw)
		}
		for _, tn := range ts {
			if tn != "*" && identity.ValidateName("tenant", tn) != nil {
				t.Fatalf("tenantClaim(%s) accepted %q", raw, tn)
			}
		}
	})
}

// FuzzParseGrant: grants come from operators, but a grant that parses must
// be valid patterns that format back to themselves.
func FuzzParseGrant(f *testing.F) {
	for _, s := range []string{"acme/db", "acme", "*", "*/metrics", "eu-*/db-*", "a**/b", "/x", "acme/[a]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		g, err := ParseGrant(s)
		if err != nil {
			return
		}
		again, err := ParseGrant(g.String())
		if err != nil || again != g {
			t.Fatalf("round trip of %q: %v, %v", s, again, err)
		}
		if validatePattern("tenant", g.Tenant) != nil || validatePattern("service", g.Service) != nil {
			t.Fatalf("ParseGrant(%q) = %v with an invalid pattern", s, g)
		}
	})
}
