package admin

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/store"
)

func TestParseScope(t *testing.T) {
	for _, tc := range []struct {
		tenant, role string
		want         Scope
		ok           bool
	}{
		{"", "", Unscoped, true},
		{"", "vendor", Unscoped, true},
		{"acme", "", Scope{"acme", RoleViewer}, true},
		{"acme", "viewer", Scope{"acme", RoleViewer}, true},
		{"acme", "admin", Scope{"acme", RoleAdmin}, true},
		{"acme", "vendor", Scope{}, false},
		{"", "admin", Scope{}, false},
		{"", "viewer", Scope{}, false},
		{"acme", "owner", Scope{}, false},
		{"../x", "admin", Scope{}, false},
	} {
		got, err := ParseScope(tc.tenant, tc.role)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("ParseScope(%q, %q) = %+v, %v; want %+v, ok %v", tc.tenant, tc.role, got, err, tc.want, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseScope(%q, %q): error %v is not ErrInvalid", tc.tenant, tc.role, err)
		}
	}
	if s, err := storedScope("", ""); err != nil || s != Unscoped {
		t.Errorf("a row from before scopes: %+v, %v; want vendor", s, err)
	}
	if _, err := storedScope("acme", ""); err == nil {
		t.Error("a stored tenant without a role was accepted")
	}
}

// scopeFixture is a data directory with tenants acme and globex, an
// agent and a join token in each.
func scopeFixture(t *testing.T) (*Admin, context.Context) {
	t.Helper()
	ctx := context.Background()
	a, err := Open(ctx, Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	now := time.Now()
	for _, tn := range []string{"acme", "globex"} {
		if err := a.AddTenant(ctx, tn); err != nil {
			t.Fatal(err)
		}
		if err := a.store.AddAgent(ctx, store.Agent{ID: tn + "-agent", Tenant: tn, CreatedAt: now, CertSerial: "1", CertNotAfter: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := a.CreateToken(ctx, tn, time.Hour, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.SetLimits(ctx, Limits{Tenant: "acme", MaxAgents: 10, MaxStreams: 100, CIDRs: []string{"10.0.0.0/8"}}); err != nil {
		t.Fatal(err)
	}
	if err := a.SetLimits(ctx, Limits{Tenant: "globex", MaxAgents: 5}); err != nil {
		t.Fatal(err)
	}
	return a, ctx
}

// wantRefused checks that err is a ScopeError of class.
func wantRefused(t *testing.T, what string, err, class error) {
	t.Helper()
	var se *ScopeError
	if !errors.As(err, &se) || !errors.Is(err, class) {
		t.Errorf("%s: %v; want a scope refusal of class %v", what, err, class)
	}
}

// A tenant-scoped operator sees and changes only its tenant; another
// tenant's objects are not found, with the very message of objects that
// do not exist.
func TestScopedAdmin(t *testing.T) {
	root, ctx := scopeFixture(t)
	viewer := root.For("operator:vic", Scope{Tenant: "acme", Role: RoleViewer})
	adm := root.For("operator:ann", Scope{Tenant: "acme", Role: RoleAdmin})

	for name, a := range map[string]*Admin{"viewer": viewer, "admin": adm} {
		ts, err := a.Tenants(ctx)
		if err != nil || len(ts) != 1 || ts[0].Name != "acme" {
			t.Errorf("%s: Tenants = %+v, %v; want acme only", name, ts, err)
		}
		fl, err := a.Fleet(ctx, FleetFilter{})
		if err != nil || len(fl.Agents) != 1 || fl.Agents[0].Tenant != "acme" || len(fl.Tenants) != 1 || fl.Totals.Total() != 1 {
			t.Errorf("%s: Fleet = %+v, %v; want acme's agent and tenant only", name, fl, err)
		}
		_, err = a.Fleet(ctx, FleetFilter{Tenant: "globex"})
		wantRefused(t, name+": Fleet of globex", err, ErrNotFound)
		as, err := a.Agents(ctx, "")
		if err != nil || len(as) != 1 || as[0].ID != "acme-agent" {
			t.Errorf("%s: Agents = %+v, %v", name, as, err)
		}
		_, err = a.Agents(ctx, "globex")
		wantRefused(t, name+": Agents of globex", err, ErrNotFound)
		_, err = a.Agent(ctx, "globex-agent")
		_, unknown := a.Agent(ctx, "no-such-agent")
		wantRefused(t, name+": Agent of globex", err, ErrNotFound)
		if err == nil || unknown == nil || err.Error() != "no agent \"globex-agent\"" || unknown.Error() != "no agent \"no-such-agent\"" {
			t.Errorf("%s: messages %q and %q; want the same form for another tenant's agent and a missing one", name, err, unknown)
		}
		if _, err := a.FleetAgent(ctx, "acme-agent"); err != nil {
			t.Errorf("%s: FleetAgent of its own agent: %v", name, err)
		}
		_, err = a.FleetAgent(ctx, "globex-agent")
		wantRefused(t, name+": FleetAgent of globex", err, ErrNotFound)
		_, err = a.Tenant(ctx, "globex")
		wantRefused(t, name+": Tenant globex", err, ErrNotFound)
		lim, err := a.AllLimits(ctx)
		if err != nil || len(lim) != 1 || lim[0].Tenant != "acme" {
			t.Errorf("%s: AllLimits = %+v, %v", name, lim, err)
		}
		_, err = a.Audit(ctx, AuditFilter{Tenant: "globex"})
		wantRefused(t, name+": Audit of globex", err, ErrNotFound)
		recs, err := a.Audit(ctx, AuditFilter{Limit: 1000})
		if err != nil || len(recs) == 0 {
			t.Errorf("%s: Audit = %d records, %v", name, len(recs), err)
		}
		for _, r := range recs {
			if r.Tenant != "acme" {
				t.Errorf("%s: Audit shows a record of tenant %q: %+v", name, r.Tenant, r)
			}
		}
		_, err = a.RevokeAgent(ctx, "globex-agent", "x")
		wantRefused(t, name+": RevokeAgent of globex", err, ErrNotFound)
		_, err = a.DrainAgent(ctx, "globex-agent", "")
		wantRefused(t, name+": DrainAgent of globex", err, ErrNotFound)
		_, _, err = a.CreateToken(ctx, "globex", time.Hour, 1)
		_, _, missing := a.CreateToken(ctx, "nosuch", time.Hour, 1)
		wantRefused(t, name+": CreateToken for globex", err, ErrNotFound)
		if missing == nil || err.Error() != `tenant "globex" does not exist (create it with: tether-relay tenant add globex)` {
			t.Errorf("%s: CreateToken for globex says %q", name, err)
		}
		globexTok, _ := root.Tokens(ctx, "globex")
		_, err = a.RevokeToken(ctx, globexTok[0].ID)
		wantRefused(t, name+": RevokeToken of globex", err, ErrNotFound)
		err = a.SetLimits(ctx, Limits{Tenant: "globex", MaxAgents: 1})
		wantRefused(t, name+": SetLimits of globex", err, ErrNotFound)
		// Nothing that is not a tenant's.
		for what, err := range map[string]error{
			"AddTenant":                func() error { return a.AddTenant(ctx, "initech") }(),
			"Backends":                 func() error { _, err := a.Backends(ctx); return err }(),
			"AddBackend":               func() error { _, err := a.AddBackend(ctx, "b", []string{"acme"}); return err }(),
			"Grant":                    a.Grant(ctx, "b", []string{"acme"}),
			"Ungrant":                  a.Ungrant(ctx, "b", []string{"acme"}),
			"RemoveBackend":            a.RemoveBackend(ctx, "b"),
			"IssueBackendCertificate":  func() error { _, err := a.IssueBackendCertificate(ctx, "b", time.Hour); return err }(),
			"Releases":                 func() error { _, err := a.Releases(ctx); return err }(),
			"StartRollout":             func() error { _, _, err := a.StartRollout(ctx, Rollout{Version: "1.0.0", Percent: 5}); return err }(),
			"UpdateStatus":             func() error { _, err := a.UpdateStatus(ctx, UpdateQuery{}); return err }(),
			"CAStatus":                 func() error { _, err := a.CAStatus(ctx); return err }(),
			"RotateCA":                 func() error { _, err := a.RotateCA(ctx, false); return err }(),
			"RenewNowCA":               func() error { _, err := a.RenewNowCA(ctx); return err }(),
			"RetireCA":                 func() error { _, err := a.RetireCA(ctx, true); return err }(),
			"OperatorTokens":           func() error { _, err := a.OperatorTokens(ctx); return err }(),
			"CreateOperatorToken":      func() error { _, _, err := a.CreateOperatorToken(ctx, "eve", Unscoped, 0); return err }(),
			"RevokeOperatorToken":      func() error { _, err := a.RevokeOperatorToken(ctx, "x"); return err }(),
			"IssueOperatorCertificate": func() error { _, err := a.IssueOperatorCertificate(ctx, "eve", Unscoped, time.Hour); return err }(),
			"OperatorCertificates":     func() error { _, err := a.OperatorCertificates(ctx); return err }(),
			"RevokeOperatorCertificate": func() error {
				_, err := a.RevokeOperatorCertificate(ctx, "1f")
				return err
			}(),
		} {
			wantRefused(t, name+": "+what, err, ErrForbidden)
		}
	}

	// The viewer changes nothing, even of its own tenant.
	_, err := viewer.RevokeAgent(ctx, "acme-agent", "x")
	wantRefused(t, "viewer: RevokeAgent", err, ErrForbidden)
	_, err = viewer.DrainAgent(ctx, "acme-agent", "")
	wantRefused(t, "viewer: DrainAgent", err, ErrForbidden)
	_, _, err = viewer.CreateToken(ctx, "acme", time.Hour, 1)
	wantRefused(t, "viewer: CreateToken", err, ErrForbidden)
	_, err = viewer.Tokens(ctx, "")
	wantRefused(t, "viewer: Tokens", err, ErrForbidden)
	err = viewer.SetLimits(ctx, Limits{Tenant: "acme", MaxAgents: 1})
	wantRefused(t, "viewer: SetLimits", err, ErrForbidden)
	if a, _ := root.Agent(ctx, "acme-agent"); a.RevokedAt != nil {
		t.Fatal("the viewer revoked an agent")
	}

	// The administrator manages its own tenant.
	toks, err := adm.Tokens(ctx, "")
	if err != nil || len(toks) != 1 || toks[0].Tenant != "acme" {
		t.Fatalf("admin: Tokens = %+v, %v", toks, err)
	}
	if _, _, err := adm.CreateToken(ctx, "acme", time.Hour, 1); err != nil {
		t.Fatalf("admin: CreateToken for acme: %v", err)
	}
	if _, err := adm.RevokeToken(ctx, toks[0].ID); err != nil {
		t.Fatalf("admin: RevokeToken of acme's: %v", err)
	}
	if _, err := adm.DrainAgent(ctx, "acme-agent", ""); err != nil {
		t.Fatalf("admin: DrainAgent: %v", err)
	}
	if info, err := adm.RevokeAgent(ctx, "acme-agent", "lost"); err != nil || info.RevokedAt == nil {
		t.Fatalf("admin: RevokeAgent of acme's: %+v, %v", info, err)
	}
	recs, err := root.Audit(ctx, AuditFilter{Agent: "acme-agent", Kind: "agent.revoke"})
	if err != nil || len(recs) != 1 || recs[0].Actor != "operator:ann" {
		t.Fatalf("audit of the revocation: %+v, %v; want one by operator:ann", recs, err)
	}
	if a, _ := root.Agent(ctx, "globex-agent"); a.RevokedAt != nil {
		t.Fatal("globex's agent was revoked")
	}

	// An Admin for an invalid scope may do nothing at all.
	none := root.For("operator:x", Scope{Tenant: "acme", Role: "owner"})
	if ts, err := none.Tenants(ctx); err != nil || len(ts) != 0 {
		t.Errorf("invalid scope: Tenants = %+v, %v; want none", ts, err)
	}
	_, err = none.Agent(ctx, "acme-agent")
	wantRefused(t, "invalid scope: Agent", err, ErrNotFound)
	// Its lists, which a scope's tenant filters, are refused rather than
	// left unfiltered.
	recs, err = none.Audit(ctx, AuditFilter{Limit: 1000})
	wantRefused(t, "invalid scope: Audit", err, ErrForbidden)
	if len(recs) != 0 {
		t.Errorf("invalid scope: Audit listed %d records", len(recs))
	}
	as, err := none.Agents(ctx, "")
	wantRefused(t, "invalid scope: Agents", err, ErrForbidden)
	if len(as) != 0 {
		t.Errorf("invalid scope: Agents listed %+v", as)
	}
	_, err = none.Fleet(ctx, FleetFilter{})
	wantRefused(t, "invalid scope: Fleet", err, ErrForbidden)
}

// A tenant administrator may only lower its tenant's limits.
func TestScopedLimits(t *testing.T) {
	root, ctx := scopeFixture(t)
	adm := root.For("operator:ann", Scope{Tenant: "acme", Role: RoleAdmin})
	// acme: max_agents 10, max_streams 100, cidrs 10.0.0.0/8; the rest unset.
	for _, tc := range []struct {
		name string
		l    Limits
		ok   bool
	}{
		{"raise max_agents", Limits{MaxAgents: 11, MaxStreams: 100, CIDRs: []string{"10.0.0.0/8"}}, false},
		{"lift max_streams", Limits{MaxAgents: 10, CIDRs: []string{"10.0.0.0/8"}}, false},
		{"lift cidrs", Limits{MaxAgents: 10, MaxStreams: 100}, false},
		{"widen cidrs", Limits{MaxAgents: 10, MaxStreams: 100, CIDRs: []string{"10.0.0.0/7"}}, false},
		{"other network", Limits{MaxAgents: 10, MaxStreams: 100, CIDRs: []string{"192.168.0.0/16"}}, false},
		{"lower and narrow", Limits{MaxAgents: 3, MaxStreams: 50, CIDRs: []string{"10.1.0.0/16", "10.2.3.4/32"}}, true},
		{"set an unset one", Limits{MaxAgents: 3, MaxStreams: 50, OpenRate: 5, OpenBurst: 10, CIDRs: []string{"10.1.0.0/16"}}, true},
		{"raise back", Limits{MaxAgents: 10, MaxStreams: 50, OpenRate: 5, OpenBurst: 10, CIDRs: []string{"10.1.0.0/16"}}, false},
		{"set a bandwidth", Limits{MaxAgents: 3, MaxStreams: 50, OpenRate: 5, OpenBurst: 10, CIDRs: []string{"10.1.0.0/16"}, Bandwidth: 8 << 20}, true},
		{"raise the bandwidth", Limits{MaxAgents: 3, MaxStreams: 50, OpenRate: 5, OpenBurst: 10, CIDRs: []string{"10.1.0.0/16"}, Bandwidth: 9 << 20}, false},
		{"lift the bandwidth", Limits{MaxAgents: 3, MaxStreams: 50, OpenRate: 5, OpenBurst: 10, CIDRs: []string{"10.1.0.0/16"}}, false},
		{"lower the bandwidth", Limits{MaxAgents: 3, MaxStreams: 50, OpenRate: 5, OpenBurst: 10, CIDRs: []string{"10.1.0.0/16"}, Bandwidth: 1 << 20}, true},
		{"raise the burst", Limits{MaxAgents: 3, MaxStreams: 50, OpenRate: 5, OpenBurst: 11, CIDRs: []string{"10.1.0.0/16"}, Bandwidth: 1 << 20}, false},
		{"burst of the rate, lower", Limits{MaxAgents: 3, MaxStreams: 50, OpenRate: 5, CIDRs: []string{"10.1.0.0/16"}, Bandwidth: 1 << 20}, true},
		{"raise a burst of the rate", Limits{MaxAgents: 3, MaxStreams: 50, OpenRate: 5, OpenBurst: 1000000, CIDRs: []string{"10.1.0.0/16"}, Bandwidth: 1 << 20}, false},
		{"lower the rate, then its burst", Limits{MaxAgents: 3, MaxStreams: 50, OpenRate: 2, CIDRs: []string{"10.1.0.0/16"}, Bandwidth: 1 << 20}, true},
		{"burst back to the old rate", Limits{MaxAgents: 3, MaxStreams: 50, OpenRate: 2, OpenBurst: 5, CIDRs: []string{"10.1.0.0/16"}, Bandwidth: 1 << 20}, false},
		{"lower the burst below the rate", Limits{MaxAgents: 3, MaxStreams: 50, OpenRate: 2, OpenBurst: 1, CIDRs: []string{"10.1.0.0/16"}, Bandwidth: 1 << 20}, true},
	} {
		tc.l.Tenant = "acme"
		err := adm.SetLimits(ctx, tc.l)
		if tc.ok && err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if !tc.ok {
			wantRefused(t, tc.name, err, ErrForbidden)
		}
	}
	got, err := root.Limits(ctx, "acme")
	if err != nil || got.MaxAgents != 3 || got.OpenRate != 2 || got.OpenBurst != 1 || len(got.CIDRs) != 1 || got.Bandwidth != 1<<20 {
		t.Fatalf("limits after the changes: %+v, %v", got, err)
	}
	// The vendor raises them again.
	if err := root.SetLimits(ctx, Limits{Tenant: "acme", MaxAgents: 20}); err != nil {
		t.Fatal(err)
	}
}

// Operator credentials carry their scope; certificates are recorded at
// issue, refused when revoked or unrecorded, and their sessions end with
// them.
func TestOperatorCredentials(t *testing.T) {
	root, ctx := scopeFixture(t)
	if _, _, err := root.CreateOperatorToken(ctx, "bob", Scope{Tenant: "nosuch", Role: RoleAdmin}, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("token for a missing tenant: %v, want ErrNotFound", err)
	}
	tok, info, err := root.CreateOperatorToken(ctx, "bob", Scope{Tenant: "acme", Role: RoleAdmin}, time.Hour)
	if err != nil || info.Tenant != "acme" || info.Role != RoleAdmin {
		t.Fatalf("CreateOperatorToken = %+v, %v", info, err)
	}
	c, err := root.CheckOperatorToken(ctx, tok)
	if err != nil || c.Name != "bob" || c.Scope != (Scope{Tenant: "acme", Role: RoleAdmin}) || c.TokenID != info.ID || OperatorTokenID(tok) != info.ID {
		t.Fatalf("CheckOperatorToken = %+v, %v", c, err)
	}

	cert, err := root.IssueOperatorCertificate(ctx, "carol", Scope{Tenant: "globex", Role: RoleViewer}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(cert.CertPEM)
	x, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	chain := []*x509.Certificate{x}
	got, err := root.VerifyOperatorCertificate(ctx, chain)
	if err != nil || got.Name != "carol" || got.Scope != (Scope{Tenant: "globex", Role: RoleViewer}) || got.CertSerial != cert.Serial {
		t.Fatalf("VerifyOperatorCertificate = %+v, %v", got, err)
	}
	list, err := root.OperatorCertificates(ctx)
	if err != nil || len(list) != 1 || list[0].Serial != cert.Serial || list[0].Tenant != "globex" || list[0].Role != RoleViewer {
		t.Fatalf("OperatorCertificates = %+v, %v", list, err)
	}
	id, _, err := root.OpenConsoleSession(ctx, got, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if cs, err := root.ConsoleSession(ctx, id); err != nil || cs.Operator.CertSerial != cert.Serial || cs.Operator.Scope != got.Scope {
		t.Fatalf("session opened with the certificate: %+v, %v", cs, err)
	}
	// Revoke it by its serial as an operator may write it.
	if _, err := root.RevokeOperatorCertificate(ctx, "0x00"+cert.Serial); err != nil {
		t.Fatal(err)
	}
	if _, err := root.VerifyOperatorCertificate(ctx, chain); !errors.Is(err, ErrOperatorCertificate) {
		t.Fatalf("revoked certificate: %v, want ErrOperatorCertificate", err)
	}
	if _, err := root.ConsoleSession(ctx, id); !errors.Is(err, ErrNoSession) {
		t.Fatalf("session of the revoked certificate: %v, want ErrNoSession", err)
	}
	recs, _ := root.Audit(ctx, AuditFilter{Kind: KindOperatorCertRevoke})
	if len(recs) != 1 || recs[0].Tenant != "globex" || recs[0].Detail["serial"] != cert.Serial {
		t.Fatalf("audit of the revocation: %+v", recs)
	}
	if _, err := root.RevokeOperatorCertificate(ctx, "abc"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke an unknown serial: %v, want ErrNotFound", err)
	}
	if _, err := root.RevokeOperatorCertificate(ctx, "not hex"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("revoke a malformed serial: %v, want ErrInvalid", err)
	}

	// A certificate the CA signed but the relay did not record (as before
	// it recorded them) is refused.
	authority := root.auth.CA()
	c2, err := root.issueClientCertificate(authority, "operator", "", func(pub *ecdsa.PublicKey) (*x509.Certificate, error) {
		return authority.SignOperator(authority.Signer(), pub, identity.Operator{TrustDomain: authority.TrustDomain(), Name: "dave"}, time.Hour, time.Now())
	})
	if err != nil {
		t.Fatal(err)
	}
	block, _ = pem.Decode(c2.CertPEM)
	x2, _ := x509.ParseCertificate(block.Bytes)
	if _, err := root.VerifyOperatorCertificate(ctx, []*x509.Certificate{x2}); !errors.Is(err, ErrOperatorCertificate) {
		t.Fatalf("unrecorded certificate: %v, want ErrOperatorCertificate", err)
	}
}
