package credential

import (
	"strings"
	"testing"
)

func TestOperatorTokenRoundTrip(t *testing.T) {
	tok, id, secret := NewOperatorToken()
	gotID, gotSecret, ok := SplitOperatorToken(tok)
	if !ok || gotID != id || gotSecret != secret {
		t.Fatalf("SplitOperatorToken(%q) = %q, %q, %v; want %q, %q", tok, gotID, gotSecret, ok, id, secret)
	}
	if !Matches(secret, Hash(secret)) || Matches(secret+"x", Hash(secret)) {
		t.Fatal("Matches disagrees with Hash")
	}
	for _, bad := range []string{"", tok[:len(tok)-1], strings.Replace(tok, ".", "_", 1), "top2_" + tok[5:], strings.ToUpper(tok), tok + "A"} {
		if _, _, ok := SplitOperatorToken(bad); ok {
			t.Errorf("SplitOperatorToken(%q) accepted a malformed token", bad)
		}
	}
}

func TestFormats(t *testing.T) {
	if k := NewAPIKey(); !strings.HasPrefix(k, APIKeyPrefix) || len(k) != len(APIKeyPrefix)+43 {
		t.Errorf("NewAPIKey() = %q", k)
	}
	if id := NewID(); len(id) != 16 || strings.ToLower(id) != id {
		t.Errorf("NewID() = %q", id)
	}
	if a, b := NewRequestID(), NewRequestID(); len(a) != 16 || a == b {
		t.Errorf("NewRequestID() = %q, %q", a, b)
	}
}
