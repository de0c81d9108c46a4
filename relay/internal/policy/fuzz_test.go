package policy

import "testing"

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
