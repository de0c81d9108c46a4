package admin

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/store"
)

// TestAdminCARotation runs rotate, status and retire against a data
// directory, as the tether-relay ca commands do.
func TestAdminCARotation(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, err := Open(ctx, Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	first := a.auth.CA().Signer()
	now := time.Now()
	// One agent from before rotation existed (no root recorded), one with
	// its root recorded.
	for _, x := range []store.Agent{
		{ID: "legacy", Tenant: "acme", Hostname: "db-1", CreatedAt: now, CertSerial: "1", CertNotAfter: now.Add(time.Hour)},
		{ID: "recorded", Tenant: "acme", Hostname: "db-2", CreatedAt: now, CertSerial: "2", CertNotAfter: now.Add(time.Hour), CertRoot: first.ID()},
	} {
		if err := a.store.AddAgent(ctx, x); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.RetireCA(ctx, false); !IsNotRotating(err) {
		t.Fatalf("retire without a rotation: %v", err)
	}
	_, before, err := a.CreateToken(ctx, "acme", time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}

	st, err := a.RotateCA(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Rotating || len(st.Roots) != 2 || st.Roots[0].Agents != 2 || st.Roots[1].Agents != 0 || st.Roots[0].Tokens != 1 {
		t.Fatalf("status after rotate: %+v", st)
	}
	if strings.Join(st.Roots[0].Roles, ",") != "serving" || strings.Join(st.Roots[1].Roles, ",") != "signing" {
		t.Fatalf("roles: %v, %v", st.Roots[0].Roles, st.Roots[1].Roles)
	}
	if _, err := a.RotateCA(ctx, false); err == nil {
		t.Fatal("a second rotation during the overlap was accepted")
	}
	// Tokens made during the overlap pin the old (serving) root too.
	tok, during, err := a.CreateToken(ctx, "acme", time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	pt, _ := protocol.ParseJoinToken(tok)
	if pt.CAFingerprint != first.Fingerprint() || during.CARoot != first.ID() || before.CARoot != first.ID() {
		t.Fatalf("tokens pin %s and %s, want the old root %s", before.CARoot, during.CARoot, first.ID())
	}

	// Both agents still depend on the old root: retire refuses and names them.
	_, err = a.RetireCA(ctx, false)
	if err == nil || !strings.Contains(err.Error(), "2 agent(s)") || !strings.Contains(err.Error(), "acme/legacy (db-1") || !strings.Contains(err.Error(), "acme/recorded") {
		t.Fatalf("retire with agents on the old root: %v", err)
	}
	// One renews onto the new root, the other is revoked.
	newRoot := a.auth.CA().Signer().ID()
	if err := a.store.SetAgentCert(ctx, "recorded", "3", now.Add(time.Hour), newRoot); err != nil {
		t.Fatal(err)
	}
	if _, err := a.RenewNowCA(ctx); err != nil {
		t.Fatal(err)
	}
	st, _ = a.CAStatus(ctx)
	if st.Roots[0].Agents != 1 || st.Roots[1].Agents != 1 || !st.RenewNow {
		t.Fatalf("status after one renewal: %+v", st)
	}
	if _, err := a.RevokeAgent(ctx, "legacy", "gone"); err != nil {
		t.Fatal(err)
	}
	res, err := a.RetireCA(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Retired.Fingerprint != first.ID() || len(res.Stranded) != 0 || len(res.Tokens) != 2 {
		t.Fatalf("retire result: %+v", res)
	}
	st, _ = a.CAStatus(ctx)
	if st.Rotating || len(st.Roots) != 1 || st.Roots[0].Fingerprint != newRoot || len(st.Retired) != 1 || st.RenewNow {
		t.Fatalf("status after retire: %+v", st)
	}
	// New tokens pin the new root.
	if _, info, _ := a.CreateToken(ctx, "acme", time.Hour, 1); info.CARoot != newRoot {
		t.Fatalf("token after retirement pins %s, want %s", info.CARoot, newRoot)
	}

	// --force strands an agent and says so.
	if _, err := a.RotateCA(ctx, false); err != nil {
		t.Fatal(err)
	}
	res, err = a.RetireCA(ctx, true)
	if err != nil || len(res.Stranded) != 1 || res.Stranded[0].ID != "recorded" {
		t.Fatalf("forced retire: %+v, %v", res, err)
	}
	recs, err := a.Audit(ctx, AuditFilter{Kind: "ca."})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, r := range recs {
		kinds = append(kinds, r.Kind)
	}
	if got := strings.Join(kinds, ","); got != "ca.rotate,ca.renew_now,ca.retire,ca.rotate,ca.retire" {
		t.Fatalf("audit kinds %s", got)
	}
	if d := recs[len(recs)-1].Detail; d["forced"] != true || d["agents_stranded"] != float64(1) {
		t.Fatalf("forced retire audit detail %v", d)
	}
}
