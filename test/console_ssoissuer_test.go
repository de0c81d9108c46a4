package test

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// ssoSignIn signs person in to the console at base through issuer (a name
// in the relay's single sign-on file), the way a browser does, with a
// client of its own that keeps cookies: the start redirects to the
// identity provider, whose login form sends the browser back to the
// callback with a code, which opens a console session. It returns the
// client, holding the session cookie.
func ssoSignIn(t *testing.T, a *adminRelay, issuer, person string) *http.Client {
	t.Helper()
	c, callback := ssoAnswer(t, a, issuer, person)
	r, err := c.Get(callback.String())
	ssoStep(t, "the callback for "+person, r, err, http.StatusOK)
	return c
}

// ssoAnswer goes through ssoSignIn up to the identity provider's answer:
// the client, and the callback URL the provider sent the browser to.
func ssoAnswer(t *testing.T, a *adminRelay, issuer, person string) (*http.Client, *url.URL) {
	t.Helper()
	c := a.httpClient(nil)
	c.Jar, _ = cookiejar.New(nil)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	r, err := c.Get(a.url + "/login/sso/" + issuer)
	r = ssoStep(t, "start "+issuer, r, err, http.StatusSeeOther)
	to, err := url.Parse(r.Header.Get("Location"))
	if err != nil {
		t.Fatalf("start %s: redirected to %q: %v", issuer, r.Header.Get("Location"), err)
	}
	form := to.Query()
	form.Set("username", person)
	to.RawQuery = ""
	r, err = c.PostForm(to.String(), form)
	r = ssoStep(t, "the identity provider's form for "+person, r, err, http.StatusSeeOther)
	callback, err := url.Parse(r.Header.Get("Location"))
	if err != nil {
		t.Fatalf("the identity provider's answer for %s: %q: %v", person, r.Header.Get("Location"), err)
	}
	return c, callback
}

// ssoStep checks one step of a sign-in: no error, and the status want.
func ssoStep(t *testing.T, what string, resp *http.Response, err error, want int) *http.Response {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		t.Fatalf("%s: %s, want %d\n%s", what, resp.Status, want, body)
	}
	return resp
}

// ssoWhoAmI asks the admin API who c's session is: the status, and the
// tenant and role when it is 200.
func ssoWhoAmI(t *testing.T, a *adminRelay, c *http.Client) (status int, tenant, role string) {
	t.Helper()
	resp, err := c.Get(a.url + "/api/v1/whoami")
	if err != nil {
		t.Fatalf("whoami: %v", err)
	}
	defer resp.Body.Close()
	var who struct{ Tenant, Role, Via string }
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&who); err != nil {
			t.Fatalf("whoami: %v", err)
		}
		if who.Via != "sso" {
			t.Errorf("whoami: via %q, want sso", who.Via)
		}
	}
	return resp.StatusCode, who.Tenant, who.Role
}

// TestSSOSessionEndsWithItsIssuer: the vendor's issuer and acme's own are
// at one identity provider (the same issuer URL, as two entries for
// Google would be). A session acme's issuer granted ends once acme's
// issuer is removed from the file and the relay runs with it, although
// the vendor's issuer, at the same URL, stays; a session the vendor's
// issuer granted, for acme too, goes on.
func TestSSOSessionEndsWithItsIssuer(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // the identity provider must know the callback before the relay starts
	base := "https://" + addr
	idp := startIdP(t, "tether-console", "one-secret", base+"/login/sso/callback", map[string]map[string]any{
		// Acme's administrator by acme's issuer (a tenant's issuer gives
		// its tenant); by the vendor's, nothing.
		"alan": {"email": "alan@acme.example", "tether_role": "admin"},
		// Acme's administrator by the vendor's issuer.
		"tara": {"email": "tara@vendor.example", "tether_role": "admin", "tether_tenant": "acme"},
	})
	ssoFile := filepath.Join(t.TempDir(), "sso.yaml")
	writeSSO := func(withAcme bool) {
		t.Helper()
		sso := fmt.Sprintf(`public_url: %s
issuers:
  - name: corp
    issuer: %s
    client_id: tether-console
    client_secret: one-secret
`, base, idp.issuer())
		if withAcme {
			sso += fmt.Sprintf(`  - name: acme
    issuer: %s
    client_id: tether-console
    client_secret: one-secret
    tenant: acme
`, idp.issuer())
		}
		if err := os.WriteFile(ssoFile, []byte(sso), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeSSO(true)
	r := startRelay(t, relayOpts{extra: []string{"--admin-listen", addr, "--admin-sso", ssoFile}})
	a := &adminRelay{relayProc: r, url: base, caFile: filepath.Join(t.TempDir(), "ca.crt")}
	r.admin(t, "ca", "export", "--out", a.caFile)
	pem, err := os.ReadFile(a.caFile)
	if err != nil {
		t.Fatal(err)
	}
	a.roots = x509.NewCertPool()
	if !a.roots.AppendCertsFromPEM(pem) {
		t.Fatal("ca export wrote no certificate")
	}
	r.addTenant(t, "acme")

	alan := ssoSignIn(t, a, "acme", "alan")
	tara := ssoSignIn(t, a, "corp", "tara")
	for name, c := range map[string]*http.Client{"alan": alan, "tara": tara} {
		if status, tenant, role := ssoWhoAmI(t, a, c); status != http.StatusOK || tenant != "acme" || role != "admin" {
			t.Fatalf("%s signed in: whoami %d, %s of %q; want 200, admin of acme", name, status, role, tenant)
		}
	}

	// Acme's issuer leaves the file; the relay runs with the new one.
	writeSSO(false)
	if err := r.stop(20 * time.Second); err != nil {
		t.Fatalf("stop the relay: %v", err)
	}
	r.restart()
	waitCount(t, r.proc, `"msg":"relay serving"`, 2, 20*time.Second)

	if status, _, _ := ssoWhoAmI(t, a, alan); status != http.StatusUnauthorized {
		t.Errorf("alan's session, granted by acme's issuer, after acme's issuer was removed: whoami %d, want 401", status)
	}
	if status, tenant, role := ssoWhoAmI(t, a, tara); status != http.StatusOK || tenant != "acme" || role != "admin" {
		t.Errorf("tara's session, granted by the vendor's issuer, which stays: whoami %d, %s of %q; want 200, admin of acme", status, role, tenant)
	}
}

// TestSSOAnswerFromAnotherIssuerRefused: an identity provider's answer
// that names another issuer (RFC 9207's iss: a mix-up, where an issuer of
// an attacker's sends the browser on to another one) is refused before
// its code goes to the token endpoint of the issuer the sign-in began
// with; so is one that does not name its issuer when the issuer's
// discovery document says its answers do. The provider's own answer opens
// a session. The callback used to ignore iss and redeem the code.
func TestSSOAnswerFromAnotherIssuerRefused(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	base := "https://" + addr
	idp := startIdP(t, "tether-console", "one-secret", base+"/login/sso/callback", map[string]map[string]any{
		"tara": {"email": "tara@vendor.example", "tether_role": "admin", "tether_tenant": "acme"},
	})
	idp.nameItself()
	ssoFile := filepath.Join(t.TempDir(), "sso.yaml")
	if err := os.WriteFile(ssoFile, fmt.Appendf(nil, "public_url: %s\nissuers:\n  - name: corp\n    issuer: %s\n    client_id: tether-console\n    client_secret: one-secret\n", base, idp.issuer()), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startRelay(t, relayOpts{extra: []string{"--admin-listen", addr, "--admin-sso", ssoFile}})
	a := &adminRelay{relayProc: r, url: base, caFile: filepath.Join(t.TempDir(), "ca.crt")}
	r.admin(t, "ca", "export", "--out", a.caFile)
	pem, err := os.ReadFile(a.caFile)
	if err != nil {
		t.Fatal(err)
	}
	a.roots = x509.NewCertPool()
	if !a.roots.AppendCertsFromPEM(pem) {
		t.Fatal("ca export wrote no certificate")
	}
	r.addTenant(t, "acme")

	for _, tc := range []struct {
		name string
		iss  []string // nil: none
	}{
		{"another issuer", []string{"https://issuer.attacker.example"}},
		{"the issuer twice, once another", []string{idp.issuer(), "https://issuer.attacker.example"}},
		{"no issuer from a provider that names itself", nil},
	} {
		c, callback := ssoAnswer(t, a, "corp", "tara")
		q := callback.Query()
		if q.Get("iss") != idp.issuer() {
			t.Fatalf("the provider's answer names %q, want %q", q.Get("iss"), idp.issuer())
		}
		q.Del("iss")
		for _, v := range tc.iss {
			q.Add("iss", v)
		}
		callback.RawQuery = q.Encode()
		redeemed, _ := idp.pkce()
		resp, err := c.Get(callback.String())
		ssoStep(t, "the callback with "+tc.name, resp, err, http.StatusBadRequest)
		if now, _ := idp.pkce(); now != redeemed {
			t.Errorf("%s: the code was redeemed at the token endpoint (%d → %d)", tc.name, redeemed, now)
		}
		if status, _, _ := ssoWhoAmI(t, a, c); status != http.StatusUnauthorized {
			t.Errorf("%s: whoami after the refused answer: %d, want 401", tc.name, status)
		}
	}
	if status, tenant, role := ssoWhoAmI(t, a, ssoSignIn(t, a, "corp", "tara")); status != http.StatusOK || tenant != "acme" || role != "admin" {
		t.Fatalf("the provider's own answer: whoami %d %q %q, want acme's admin", status, tenant, role)
	}
}
