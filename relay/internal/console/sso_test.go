package console

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/credential"
	"github.com/tetherhq/tether/relay/internal/store"
)

const goodSSO = `
public_url: https://relay.example:7444
issuers:
  - name: corp
    issuer: https://login.example.com
    client_id: tether
    client_secret: s3cret
    groups:
      ops: vendor
      acme-admins: admin@acme
  - name: acme
    display: Acme staff
    issuer: http://127.0.0.1:9000/realms/acme
    client_id: tether
    tenant: acme
    groups:
      it: admin
      audit: viewer@acme
`

func TestParseSSOConfig(t *testing.T) {
	c, err := ParseSSOConfig([]byte(goodSSO))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Issuers) != 2 || c.Issuers[1].Tenant != "acme" || c.Issuers[0].Groups["ops"] != "vendor" {
		t.Fatalf("parsed %+v", c)
	}
	if c, err := ParseSSOConfig(nil); err != nil || len(c.Issuers) != 0 {
		t.Fatalf("an empty file: %+v, %v; want single sign-on off", c, err)
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown key", "public_url: https://x\nissuers:\n  - name: a\n    issuer: https://i\n    client_id: c\n    clientid: typo\n", "clientid"},
		{"http public url", "public_url: http://relay.example\nissuers:\n  - {name: a, issuer: 'https://i', client_id: c}\n", "public_url"},
		{"public url with a path", "public_url: https://relay.example/console\nissuers:\n  - {name: a, issuer: 'https://i', client_id: c}\n", "public_url"},
		{"http issuer off loopback", "public_url: https://r\nissuers:\n  - {name: a, issuer: 'http://idp.example', client_id: c}\n", "loopback"},
		{"no client id", "public_url: https://r\nissuers:\n  - {name: a, issuer: 'https://i'}\n", "client_id"},
		{"two secrets", "public_url: https://r\nissuers:\n  - {name: a, issuer: 'https://i', client_id: c, client_secret: x, client_secret_file: /f}\n", "give one"},
		{"same name twice", "public_url: https://r\nissuers:\n  - {name: a, issuer: 'https://i', client_id: c}\n  - {name: a, issuer: 'https://j', client_id: c}\n", "taken"},
		{"reserved name", "public_url: https://r\nissuers:\n  - {name: callback, issuer: 'https://i', client_id: c}\n", "taken"},
		{"bad name", "public_url: https://r\nissuers:\n  - {name: 'A B', issuer: 'https://i', client_id: c}\n", "name"},
		{"bad group role", "public_url: https://r\nissuers:\n  - {name: a, issuer: 'https://i', client_id: c, groups: {g: owner@acme}}\n", "group"},
		{"vendor with a tenant", "public_url: https://r\nissuers:\n  - {name: a, issuer: 'https://i', client_id: c, groups: {g: vendor@acme}}\n", "vendor takes no tenant"},
		{"admin without a tenant", "public_url: https://r\nissuers:\n  - {name: a, issuer: 'https://i', client_id: c, groups: {g: admin}}\n", "needs a tenant"},
		{"tenant issuer grants vendor", "public_url: https://r\nissuers:\n  - {name: a, issuer: 'https://i', client_id: c, tenant: acme, groups: {g: vendor}}\n", "cannot grant vendor"},
		{"tenant issuer grants another tenant", "public_url: https://r\nissuers:\n  - {name: a, issuer: 'https://i', client_id: c, tenant: acme, groups: {g: admin@globex}}\n", "only its tenant"},
		{"public url without issuers", "public_url: https://r\n", "without issuers"},
		{"two documents of junk", "[1, 2", "single sign-on config"},
	} {
		_, err := ParseSSOConfig([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want an error about %q", tc.name, err, tc.want)
		}
	}
}

func FuzzParseSSOConfig(f *testing.F) {
	f.Add([]byte(goodSSO))
	f.Add([]byte("issuers: [{name: a, groups: {g: admin@x}}]"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseSSOConfig(data)
		if err != nil {
			return
		}
		// What parses is valid, and a tenant's issuer never maps a group
		// outside its tenant.
		if err := c.Validate(); err != nil {
			t.Fatalf("parsed a config that does not validate: %v", err)
		}
		for _, iss := range c.Issuers {
			for g, m := range iss.Groups {
				sc, err := iss.groupScope(m)
				if err != nil || (iss.Tenant != "" && (sc.Tenant != iss.Tenant || sc.Vendor())) {
					t.Fatalf("issuer %s group %s → %q: %+v, %v", iss.Name, g, m, sc, err)
				}
			}
		}
	})
}

func FuzzParseSSOState(f *testing.F) {
	f.Add("eyJpIjoiYSIsInMiOiJ4IiwibiI6InkiLCJ2IjoieiIsImUiOjk5OTk5OTk5OTl9")
	f.Add("")
	f.Add("!!!")
	now := time.Unix(1_800_000_000, 0)
	f.Fuzz(func(t *testing.T, v string) {
		st, err := parseSSOState(v, now)
		if err == nil && (st.State == "" || st.Nonce == "" || st.Verifier == "" || st.Issuer == "" || st.Expires < now.Unix()) {
			t.Fatalf("accepted an incomplete or expired state: %+v", st)
		}
	})
}

// How claims map to scopes, failing closed.
func TestSSOScopeOf(t *testing.T) {
	c, err := ParseSSOConfig([]byte(goodSSO))
	if err != nil {
		t.Fatal(err)
	}
	flow, err := newSSOFlow(c, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	corp, acmeIdP := flow.issuer("corp"), flow.issuer("acme")
	exists := func(tn string) (bool, error) { return tn == "acme" || tn == "globex", nil }
	type claims = map[string]any
	for _, tc := range []struct {
		name   string
		iss    *ssoIssuer
		claims claims
		want   admin.Scope // zero: refused
	}{
		{"vendor by role claim", corp, claims{"tether_role": "vendor"}, admin.Unscoped},
		{"vendor by group", corp, claims{"groups": []any{"ops", "other"}}, admin.Unscoped},
		{"admin by role and tenant claims", corp, claims{"tether_role": "admin", "tether_tenant": "globex"}, admin.Scope{Tenant: "globex", Role: admin.RoleAdmin}},
		{"viewer by role and tenant claims", corp, claims{"tether_role": "viewer", "tether_tenant": "acme"}, admin.Scope{Tenant: "acme", Role: admin.RoleViewer}},
		{"admin by group", corp, claims{"groups": "acme-admins"}, admin.Scope{Tenant: "acme", Role: admin.RoleAdmin}},
		{"admin and viewer of one tenant: admin", corp, claims{"tether_role": "viewer", "tether_tenant": "acme", "groups": []any{"acme-admins"}}, admin.Scope{Tenant: "acme", Role: admin.RoleAdmin}},
		{"nothing", corp, claims{"email": "x@example.com"}, admin.Scope{}},
		{"an unknown group", corp, claims{"groups": []any{"sales"}}, admin.Scope{}},
		{"an unknown role", corp, claims{"tether_role": "owner", "tether_tenant": "acme"}, admin.Scope{}},
		{"role without tenant", corp, claims{"tether_role": "admin"}, admin.Scope{}},
		{"a tenant that does not exist", corp, claims{"tether_role": "admin", "tether_tenant": "ghost"}, admin.Scope{}},
		{"two tenants", corp, claims{"tether_role": "admin", "tether_tenant": "globex", "groups": []any{"acme-admins"}}, admin.Scope{}},
		{"a tenant claim naming two", corp, claims{"tether_role": "admin", "tether_tenant": []any{"acme", "globex"}}, admin.Scope{}},
		{"vendor with a tenant claim", corp, claims{"tether_role": "vendor", "tether_tenant": "acme"}, admin.Scope{}},
		{"a claim of the wrong type", corp, claims{"tether_role": 7.0, "groups": map[string]any{"ops": true}}, admin.Scope{}},
		// A tenant's own issuer: only ever its tenant.
		{"tenant issuer: admin by role", acmeIdP, claims{"tether_role": "admin"}, admin.Scope{Tenant: "acme", Role: admin.RoleAdmin}},
		{"tenant issuer: admin by group", acmeIdP, claims{"groups": []any{"it"}}, admin.Scope{Tenant: "acme", Role: admin.RoleAdmin}},
		{"tenant issuer: viewer naming its tenant", acmeIdP, claims{"tether_role": "viewer", "tether_tenant": "acme"}, admin.Scope{Tenant: "acme", Role: admin.RoleViewer}},
		{"tenant issuer: vendor by role", acmeIdP, claims{"tether_role": "vendor"}, admin.Scope{}},
		{"tenant issuer: another tenant by claim", acmeIdP, claims{"tether_role": "admin", "tether_tenant": "globex"}, admin.Scope{}},
		{"tenant issuer: the vendor's group names", acmeIdP, claims{"groups": []any{"ops", "acme-admins"}}, admin.Scope{}},
	} {
		got, why, err := tc.iss.scopeOf(tc.claims, exists)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got != tc.want || (tc.want == admin.Scope{}) != (why != "") {
			t.Errorf("%s: %+v (%q), want %+v", tc.name, got, why, tc.want)
		}
	}
	// A failing store stops the mapping.
	boom := errors.New("store down")
	if _, _, err := corp.scopeOf(claims{"tether_role": "admin", "tether_tenant": "acme"}, func(string) (bool, error) { return false, boom }); !errors.Is(err, boom) {
		t.Errorf("store error: %v", err)
	}
}

// A tenant's issuer with a group mapping that names another tenant,
// slipped past validation (a config changed in memory): it still grants
// nothing of the other tenant.
func TestSSOTenantIssuerFailsClosed(t *testing.T) {
	iss := &ssoIssuer{SSOIssuer: SSOIssuer{Name: "acme", Tenant: "acme", RoleClaim: defaultRoleClaim, TenantClaim: defaultTenantClaim, GroupsClaim: defaultGroupsClaim,
		Groups: map[string]string{"x": "admin@globex", "y": "vendor"}}}
	got, why, err := iss.scopeOf(map[string]any{"groups": []any{"x", "y"}}, func(string) (bool, error) { return true, nil })
	if err != nil || (got != admin.Scope{}) || why == "" {
		t.Fatalf("got %+v (%q), %v; want nothing", got, why, err)
	}
}

// A session opened by single sign-on ends when the issuer that granted it
// is no longer configured, no longer at the session's issuer URL, or no
// longer a tenant's issuer for the session's tenant; a session that does
// not record its issuer (opened before sessions recorded it) ends too.
func TestSSOSessionNeedsItsIssuer(t *testing.T) {
	c, err := ParseSSOConfig([]byte(goodSSO))
	if err != nil {
		t.Fatal(err)
	}
	d := startDashRelay(t, func(cfg *Config) { cfg.SSO = c })
	ctx := context.Background()
	for _, tn := range []string{"acme", "globex"} {
		if err := d.adm.AddTenant(ctx, tn); err != nil {
			t.Fatal(err)
		}
	}
	acmeAdmin := admin.Scope{Tenant: "acme", Role: admin.RoleAdmin}
	for _, tc := range []struct {
		name string
		cred admin.Credential
		ok   bool
	}{
		{"vendor of the vendor's issuer", admin.Credential{Name: "o", Scope: admin.Unscoped, Subject: "https://login.example.com#olivia", Issuer: "corp"}, true},
		{"admin of acme from acme's issuer", admin.Credential{Name: "a", Scope: acmeAdmin, Subject: "http://127.0.0.1:9000/realms/acme#alan", Issuer: "acme"}, true},
		{"admin of acme from the vendor's issuer", admin.Credential{Name: "t", Scope: acmeAdmin, Subject: "https://login.example.com#tara", Issuer: "corp"}, true},
		{"an issuer no longer configured", admin.Credential{Name: "g", Scope: admin.Unscoped, Subject: "https://gone.example#gus", Issuer: "gone"}, false},
		{"an issuer no longer configured, its URL another's", admin.Credential{Name: "g", Scope: admin.Unscoped, Subject: "https://login.example.com#gus", Issuer: "gone"}, false},
		{"an issuer's name now at another URL", admin.Credential{Name: "m", Scope: acmeAdmin, Subject: "https://login.example.com#mo", Issuer: "acme"}, false},
		{"globex from acme's issuer", admin.Credential{Name: "m", Scope: admin.Scope{Tenant: "globex", Role: admin.RoleAdmin}, Subject: "http://127.0.0.1:9000/realms/acme#mallory", Issuer: "acme"}, false},
		{"vendor from acme's issuer", admin.Credential{Name: "v", Scope: admin.Unscoped, Subject: "http://127.0.0.1:9000/realms/acme#vic", Issuer: "acme"}, false},
	} {
		id, _, err := d.adm.OpenConsoleSession(ctx, tc.cred, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		res := d.doBody(t, d.client(t), http.MethodGet, "/api/v1/whoami", "", map[string]string{"Cookie": SessionCookie + "=" + id})
		if got := res.status == http.StatusOK; got != tc.ok || (tc.ok && !strings.Contains(res.body, `"via": "sso"`)) {
			t.Errorf("%s: %d %s; want ok %v", tc.name, res.status, res.body, tc.ok)
		}
	}

	// A session stored without its issuer, as every sign-on session
	// was before the relay recorded it: it ends, and is deleted.
	if _, _, err := d.adm.OpenConsoleSession(ctx, admin.Credential{Name: "o", Scope: admin.Unscoped, Subject: "https://login.example.com#olivia"}, time.Hour); err == nil {
		t.Error("a sign-on session without its issuer was opened")
	}
	const old = "tcs1_an-old-session-from-before-the-upgrade"
	if err := d.dir.Store.AddConsoleSession(ctx, store.ConsoleSession{IDHash: credential.Hash(old), Operator: "o", Subject: "https://login.example.com#olivia",
		CSRF: "c", CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	res := d.doBody(t, d.client(t), http.MethodGet, "/api/v1/whoami", "", map[string]string{"Cookie": SessionCookie + "=" + old})
	if res.status != http.StatusUnauthorized || !strings.Contains(res.body, "does not record which issuer granted it") {
		t.Errorf("a session from before the upgrade: %d %s; want 401 saying why", res.status, res.body)
	}
	if _, err := d.dir.Store.ConsoleSession(ctx, credential.Hash(old), time.Now()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the session from before the upgrade is still stored: %v", err)
	}
}

// Two issuers at one issuer URL, the vendor's and acme's (one provider
// for both): once acme's is removed from the file, a session it granted
// ends although the vendor's, at the same URL, stays; a session the
// vendor's granted goes on.
func TestSSOSessionEndsWithItsIssuerBesideOneOfTheSameURL(t *testing.T) {
	const both = `
public_url: https://relay.example:7444
issuers:
  - name: corp
    issuer: https://accounts.example.com
    client_id: tether
  - name: acme
    issuer: https://accounts.example.com
    client_id: tether
    tenant: acme
`
	const vendorOnly = `
public_url: https://relay.example:7444
issuers:
  - name: corp
    issuer: https://accounts.example.com
    client_id: tether
`
	acmeAdmin := admin.Scope{Tenant: "acme", Role: admin.RoleAdmin}
	byAcme := admin.Credential{Name: "a", Scope: acmeAdmin, Subject: "https://accounts.example.com#alan", Issuer: "acme"}
	byCorp := admin.Credential{Name: "t", Scope: acmeAdmin, Subject: "https://accounts.example.com#tara", Issuer: "corp"}
	for _, tc := range []struct {
		file           string
		acmeOK, corpOK bool
	}{{both, true, true}, {vendorOnly, false, true}} {
		c, err := ParseSSOConfig([]byte(tc.file))
		if err != nil {
			t.Fatal(err)
		}
		d := startDashRelay(t, func(cfg *Config) { cfg.SSO = c })
		if err := d.adm.AddTenant(context.Background(), "acme"); err != nil {
			t.Fatal(err)
		}
		for _, x := range []struct {
			cred admin.Credential
			ok   bool
		}{{byAcme, tc.acmeOK}, {byCorp, tc.corpOK}} {
			id, _, err := d.adm.OpenConsoleSession(context.Background(), x.cred, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			res := d.doBody(t, d.client(t), http.MethodGet, "/api/v1/whoami", "", map[string]string{"Cookie": SessionCookie + "=" + id})
			if got := res.status == http.StatusOK; got != x.ok {
				t.Errorf("issuers %v, a session granted by %s: %d %s; want ok %v", len(c.Issuers), x.cred.Issuer, res.status, res.body, x.ok)
			}
		}
	}
}
