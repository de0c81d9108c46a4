package admin

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// One tenant's operator cannot keep anyone else out of the console by
// opening sessions: before, a viewer's token signing in 10 000 times (a
// loop of POST /login) filled the relay's session table, and every other
// operator, vendor operators included, was refused a session ("too many
// open sessions") until those expired. Now a credential keeps its newest
// sessions (signing in again ends its oldest), a tenant's people hold a
// bounded number, and vendor operators are never refused for the others'
// sessions. The bounds are made small here; the defaults are
// maxCredentialSessions and the others.
func TestConsoleSessionsBoundedPerCredentialAndTenant(t *testing.T) {
	root, ctx := scopeFixture(t)
	bounds := sessionBounds{perCredential: 4, perTenant: 10, scoped: 15}
	root.sessionBounds = bounds
	token := func(name string, scope Scope) Credential {
		t.Helper()
		tok, _, err := root.CreateOperatorToken(ctx, name, scope, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c, err := root.CheckOperatorToken(ctx, tok)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	open := func(c Credential) (string, error) {
		t.Helper()
		id, _, err := root.OpenConsoleSession(ctx, c, time.Hour)
		return id, err
	}

	viewer := token("vic", Scope{Tenant: "acme", Role: RoleViewer})
	var ids []string
	for i := range bounds.scoped + 5 {
		id, err := open(viewer)
		if err != nil {
			t.Fatalf("viewer's session %d: %v", i+1, err)
		}
		ids = append(ids, id)
	}
	live := 0
	for _, id := range ids {
		if _, err := root.ConsoleSession(ctx, id); err == nil {
			live++
		} else if !errors.Is(err, ErrNoSession) {
			t.Fatal(err)
		}
	}
	if live != bounds.perCredential {
		t.Errorf("the viewer's token holds %d sessions after %d sign-ins, want its newest %d", live, len(ids), bounds.perCredential)
	}
	if _, err := root.ConsoleSession(ctx, ids[len(ids)-1]); err != nil {
		t.Errorf("the viewer's newest session: %v", err)
	}
	vendor := token("vera", Unscoped)
	if _, err := open(vendor); err != nil {
		t.Fatalf("vendor operator after a viewer's %d sign-ins: %v", len(ids), err)
	}

	// A tenant's own identity provider can make any number of people.
	person := func(tenant string, i int) Credential {
		return Credential{Name: fmt.Sprintf("p%d", i), Scope: Scope{Tenant: tenant, Role: RoleViewer},
			Subject: fmt.Sprintf("https://idp.%s.example#%d", tenant, i), Issuer: tenant}
	}
	for i := range bounds.perTenant - live {
		if _, err := open(person("acme", i)); err != nil {
			t.Fatalf("acme's person %d: %v", i, err)
		}
	}
	if _, err := open(person("acme", bounds.perTenant)); err == nil {
		t.Errorf("acme's people opened more than %d sessions", bounds.perTenant)
	}
	for i := range bounds.scoped - bounds.perTenant {
		if _, err := open(person("globex", i)); err != nil {
			t.Fatalf("globex's person %d after acme's people filled acme's share: %v", i, err)
		}
	}
	if _, err := open(person("globex", bounds.scoped)); err == nil {
		t.Errorf("tenants' people opened more than %d sessions", bounds.scoped)
	}
	if _, err := open(vendor); err != nil {
		t.Errorf("vendor operator after tenants' people filled their share: %v", err)
	}
	if _, err := open(token("walt", Unscoped)); err != nil {
		t.Errorf("another vendor operator after tenants' people filled their share: %v", err)
	}
}
