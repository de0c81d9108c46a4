package test

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Operators scoped to a tenant, with real agents and tetherctl: acme's
// administrator sees and manages acme only (creates a join token that
// enrols an agent, revokes acme's agent, whose sessions close), gets
// not_found for every object of globex and forbidden for what is not a
// tenant's; acme's viewer sees acme and changes nothing. Every refusal is
// audited, and acme's audit shows its people's refusals but nothing of
// globex.
func TestTenantScopedOperators(t *testing.T) {
	a := startAdminRelay(t)
	a.addTenant(t, "acme")
	a.addTenant(t, "globex")
	svc := tcpService(t, echo)
	acme1 := startAgent(t, a.relayProc, "acme", agentOpts{services: map[string]string{"echo": svc}})
	acme2 := startAgent(t, a.relayProc, "acme", agentOpts{services: map[string]string{"echo": svc}})
	globex1 := startAgent(t, a.relayProc, "globex", agentOpts{services: map[string]string{"echo": svc}})
	for _, x := range []*agentProc{acme1, acme2, globex1} {
		a.waitAgent(t, x.id, "connected", func(c ctlAgent, ok bool) bool { return ok && c.Sessions >= 1 })
	}
	annTok := a.admin(t, "operator", "token", "create", "--name", "ann", "--tenant", "acme", "--role", "admin")
	vicTok := a.admin(t, "operator", "token", "create", "--name", "vic", "--tenant", "acme")
	if out := a.admin(t, "operator", "token", "list"); !strings.Contains(out, "admin of tenant acme") || !strings.Contains(out, "viewer of tenant acme") {
		t.Errorf("operator token list does not show the scopes:\n%s", out)
	}
	as := func(tok string) []string { return []string{"TETHER_ADMIN_TOKEN=" + tok} }
	// refused runs tetherctl as tok and wants the API's code.
	refused := func(tok, code string, args ...string) {
		t.Helper()
		_, errOut, err := a.ctl(t, as(tok), args...)
		if err == nil || !strings.Contains(errOut, "("+code+", HTTP") {
			t.Errorf("tetherctl %s: %v %q; want %s", strings.Join(args, " "), err, errOut, code)
		}
	}
	ctlOut := func(tok string, args ...string) string {
		t.Helper()
		out, errOut, err := a.ctl(t, as(tok), args...)
		if err != nil {
			t.Fatalf("tetherctl %s: %v\n%s", strings.Join(args, " "), err, errOut)
		}
		return out
	}

	for _, tok := range []string{annTok, vicTok} {
		if out := ctlOut(tok, "agent", "list", "-o", "json"); !strings.Contains(out, acme1.id) || !strings.Contains(out, acme2.id) || strings.Contains(out, globex1.id) || strings.Contains(out, "globex") {
			t.Errorf("agents: want acme's only:\n%s", out)
		}
		if out := ctlOut(tok, "tenant", "list"); !strings.Contains(out, "acme") || strings.Contains(out, "globex") {
			t.Errorf("tenants: want acme only:\n%s", out)
		}
		refused(tok, "not_found", "agent", "show", globex1.id)
		refused(tok, "not_found", "tenant", "show", "globex")
		refused(tok, "not_found", "agent", "list", "--tenant", "globex")
		refused(tok, "not_found", "audit", "--tenant", "globex")
		refused(tok, "forbidden", "backend", "list")
		refused(tok, "forbidden", "backend", "add", "spy", "--allow", "acme")
		refused(tok, "forbidden", "release", "list")
		refused(tok, "forbidden", "release", "status")
		refused(tok, "forbidden", "tenant", "add", "initech")
		refused(tok, "forbidden", "operator", "certificate", "list")
	}
	if out := ctlOut(annTok, "whoami"); !strings.Contains(out, "ann (by token), admin of tenant acme") {
		t.Errorf("whoami: %q", out)
	}

	// The viewer changes nothing.
	refused(vicTok, "forbidden", "token", "create", "--tenant", "acme")
	refused(vicTok, "forbidden", "token", "list")
	refused(vicTok, "forbidden", "agent", "revoke", acme1.id)
	refused(vicTok, "forbidden", "agent", "drain", acme1.id)
	refused(vicTok, "forbidden", "tenant", "limits", "acme", "--max-agents", "1")

	// The administrator cannot touch globex...
	refused(annTok, "not_found", "agent", "revoke", globex1.id)
	refused(annTok, "not_found", "agent", "drain", globex1.id)
	refused(annTok, "not_found", "token", "create", "--tenant", "globex")
	refused(annTok, "not_found", "token", "list", "--tenant", "globex")
	refused(annTok, "not_found", "tenant", "limits", "globex", "--max-agents", "1")
	// ...and manages acme.
	tok := strings.TrimSpace(ctlOut(annTok, "token", "create", "--tenant", "acme"))
	_, enrolled := enroll(t, a.agentAddr, tok)
	if out := ctlOut(annTok, "token", "list", "-o", "json"); strings.Contains(out, "globex") || !strings.Contains(out, `"tenant": "acme"`) {
		t.Errorf("token list: want acme's only:\n%s", out)
	}
	ctlOut(annTok, "agent", "revoke", acme2.id, "--reason", "decommissioned")
	a.waitAgent(t, acme2.id, "revocation", func(c ctlAgent, ok bool) bool { return ok && c.State == "revoked" && c.Sessions == 0 })
	if x := a.agents(t)[globex1.id]; x.State == "revoked" || x.Sessions == 0 {
		t.Errorf("globex's agent after acme's administrator worked: %+v", x)
	}
	if _, ok := a.agents(t)[enrolled]; !ok {
		t.Errorf("the agent enrolled with acme's administrator's token is not listed")
	}

	// Audited: the vendor sees every refusal by the operator's name...
	recs := a.audit(t, "--kind", "operator.refused", "--limit", "1000")
	byAnn, byVic := 0, 0
	for _, r := range recs {
		switch r.Actor {
		case "operator:ann":
			byAnn++
		case "operator:vic":
			byVic++
		}
	}
	if byAnn != 15 || byVic != 15 {
		t.Errorf("operator.refused records: %d by ann, %d by vic; want 15 each", byAnn, byVic)
	}
	// ...and acme's viewer sees acme's trail, refusals included, and
	// nothing of globex.
	// (A refusal's record holds the path its operator sent, which may
	// name globex's objects: what they asked, not what exists.)
	var trail struct {
		Records []struct{ Kind, Tenant, Agent string }
	}
	if err := json.Unmarshal([]byte(ctlOut(vicTok, "audit", "--limit", "1000", "-o", "json")), &trail); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, r := range trail.Records {
		kinds[r.Kind]++
		if r.Tenant != "acme" || r.Agent == globex1.id {
			t.Errorf("acme's audit as its viewer holds %+v", r)
		}
	}
	if kinds["operator.refused"] != 30 || kinds["agent.revoke"] != 1 || kinds["agent.enrol"] < 3 {
		t.Errorf("acme's audit as its viewer: %v", kinds)
	}

	// ...without the trail's seqs, which globex's records fill the gaps
	// of: tetherctl pages it by opaque cursors, and refuses a seq.
	page := func(args ...string) ([]string, string) {
		t.Helper()
		out, errOut, err := a.ctl(t, as(vicTok), append([]string{"audit", "-o", "json"}, args...)...)
		var p struct {
			Records []map[string]any
		}
		if err != nil || json.Unmarshal([]byte(out), &p) != nil {
			t.Fatalf("tetherctl audit %s as acme's viewer: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
		var cursors []string
		for _, r := range p.Records {
			if _, ok := r["seq"]; ok {
				t.Errorf("tetherctl audit %s as acme's viewer shows a seq: %v", strings.Join(args, " "), r)
			}
			c, _ := r["cursor"].(string)
			cursors = append(cursors, c)
		}
		next := ""
		if _, rest, ok := strings.Cut(errOut, "--cursor "); ok {
			next = strings.Fields(rest)[0]
		}
		return cursors, next
	}
	// acme's agents may still add records (a second connection, say): the
	// two pages are compared with the 4 newest read before and after
	// them, and read again when a record came in between.
	for try := 1; ; try++ {
		four, _ := page("--limit", "4")
		first, next := page("--limit", "2")
		if _, err := strconv.ParseUint(next, 10, 64); next == "" || err == nil {
			t.Errorf("tetherctl audit --limit 2 as acme's viewer: next cursor %q; want an opaque one", next)
		}
		second, _ := page("--limit", "2", "--cursor", next)
		after, _ := page("--limit", "4")
		if !slices.Equal(four, after) && try < 5 {
			continue // a record came in while the pages were read
		}
		if got := strings.Join(append(first, second...), " "); len(four) != 4 || got != strings.Join(four, " ") || slices.Contains(four, "") {
			t.Errorf("acme's viewer paged by cursor through %q; the 4 newest are %q", got, four)
		}
		break
	}
	refused(vicTok, "bad_request", "audit", "--cursor", "1")
}
