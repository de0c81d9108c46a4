package console

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// Every trick that sends a browser elsewhere after login is refused; paths
// on this site pass.
func TestSafeNext(t *testing.T) {
	for _, tc := range []struct {
		next string
		ok   bool
	}{
		{"/", true},
		{"/ui/agents", true},
		{"/ui/agents?tenant=acme&state=all", true},
		{"/ui/agents/a1b2?live=1#top", true},
		{"/ui/agents?q=%2F%2Fnot-a-path", true}, // "//" in the query is a value, not a host
		{"/ui/tenants/acme%20corp", true},
		{"", false},
		{"ui/agents", false},
		{"//evil.example/", false},
		{"///evil.example/", false},
		{"/\\evil.example/", false},
		{"\\\\evil.example/", false},
		{"/\t/evil.example/", false},
		{"/\n/evil.example/", false},
		{"/\r\n/evil.example/", false},
		{"/\x00/evil.example/", false},
		{"/\x7f/evil.example/", false},
		{"/\u0085/evil.example/", false},
		{"/%09/evil.example/", false},
		{"/%0a/evil.example/", false},
		{"/%5Cevil.example/", false},
		{"/%5cevil.example/", false},
		{"/%2F%2Fevil.example/", false},
		{"/%2f/evil.example/", false},
		{"%2F%2Fevil.example/", false},
		{"/%252F%252Fevil.example/", false},
		{"/%25252F%25252Fevil.example/", false},
		{"/%255Cevil.example/", false},
		{"/%2509/evil.example/", false},
		{"/ui//x", false},
		{"https://evil.example/", false},
		{"http://evil.example/", false},
		{"https:evil.example", false},
		{"javascript:alert(1)", false},
		{"/javascript:alert(1)", true}, // a path on this site
		{"//user@evil.example/", false},
		{"/%zz", false},
		{"/" + strings.Repeat("a", maxNext), false},
	} {
		if got := safeNext(tc.next); got != tc.ok {
			t.Errorf("safeNext(%q) = %v, want %v", tc.next, got, tc.ok)
		}
	}
}

// FuzzSafeNext: whatever safeNext accepts stays on this site when a
// browser resolves it against the page, even after decoding it again.
func FuzzSafeNext(f *testing.F) {
	for _, s := range []string{"/", "/ui/agents?tenant=a", "//x", "/\\x", "/%2F%2Fx", "/%5Cx", "/%09/x", "https://x/", "/%252F/x"} {
		f.Add(s)
	}
	base, _ := url.Parse("https://relay.example:7444/login")
	f.Fuzz(func(t *testing.T, s string) {
		if !safeNext(s) {
			return
		}
		u, err := url.Parse(s)
		if err != nil {
			t.Fatalf("safeNext(%q) accepted what does not parse: %v", s, err)
		}
		if got := base.ResolveReference(u); got.Host != base.Host || got.Scheme != base.Scheme {
			t.Fatalf("safeNext(%q) accepted a target on %s://%s", s, got.Scheme, got.Host)
		}
		for dec := s; ; {
			if strings.ContainsAny(dec, "\\\t\r\n") || strings.HasPrefix(dec, "//") {
				t.Fatalf("safeNext(%q) accepted what decodes to %q", s, dec)
			}
			next, err := url.PathUnescape(dec)
			if err != nil || next == dec {
				break
			}
			dec = next
		}
	})
}

// The login handler and the login page refuse every trick (the page
// keeps "/" as next, the handler sends the browser to "/"), and keep a
// path on this site.
func TestLoginRedirectOnlyToThisSite(t *testing.T) {
	d := startDashRelay(t)
	tricks := []string{"/\t/evil.example/x", "/\\evil.example/x", "//evil.example/x", "/%2F%2Fevil.example/x", "/%5Cevil.example",
		"/%09/evil.example", "https://evil.example/x", "http:evil.example", "\\/evil.example"}
	for _, next := range tricks {
		res := d.do(t, d.client(t), http.MethodGet, "/login?next="+url.QueryEscape(next), nil, nil)
		if res.status != http.StatusOK || !strings.Contains(res.body, `name="next" value="/"`) {
			t.Errorf("login page with next=%q: status %d, want the form with next /", next, res.status)
		}
		c := d.client(t)
		res = d.do(t, c, http.MethodPost, "/login", url.Values{"token": {d.tok}, "next": {next}}, map[string]string{"Origin": d.base})
		if res.status != http.StatusSeeOther || res.header.Get("Location") != "/" {
			t.Errorf("login with next=%q: status %d, Location %q; want 303 to /", next, res.status, res.header.Get("Location"))
		}
	}
	res := d.do(t, d.client(t), http.MethodPost, "/login", url.Values{"token": {d.tok}, "next": {"/ui/agents?tenant=acme"}}, map[string]string{"Origin": d.base})
	if res.header.Get("Location") != "/ui/agents?tenant=acme" {
		t.Errorf("login with a path on this site: Location %q", res.header.Get("Location"))
	}
}
