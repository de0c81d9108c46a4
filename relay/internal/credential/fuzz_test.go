package credential

import (
	"strings"
	"testing"
)

// FuzzParseOperatorToken checks that splitting an operator token (what a
// client sends as a bearer token or at /login) never panics and accepts
// only the exact shape CreateOperatorToken makes.
func FuzzParseOperatorToken(f *testing.F) {
	for _, s := range []string{
		"top1_abcdefghijklmnop.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"top1_abcdefghijklmnop.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB",
		"top1_ABCDEFGHIJKLMNOP.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"top1_abcdefghijklmnop_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"top1_", "", "tbk1_x", "top1_abcdefghijklmnop.",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, secret, ok := SplitOperatorToken(s)
		if !ok {
			if id != "" || secret != "" {
				t.Fatalf("SplitOperatorToken(%q) refused but returned %q, %q", s, id, secret)
			}
			return
		}
		if len(id) != operatorIDLen || len(secret) != operatorSecretLen || OperatorTokenPrefix+id+"."+secret != s {
			t.Fatalf("SplitOperatorToken(%q) = %q, %q: not the parts of the token", s, id, secret)
		}
		if strings.ContainsAny(id, ".=/+") {
			t.Fatalf("id %q has characters outside base32", id)
		}
	})
}
