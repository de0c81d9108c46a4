package frontdoor

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
