package test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// adminRelay is a relay with its admin API on, an operator token and the
// CA to verify it with.
type adminRelay struct {
	*relayProc
	url, token, caFile string
	roots              *x509.CertPool
}

func startAdminRelay(t *testing.T) *adminRelay {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r := startRelay(t, relayOpts{extra: []string{"--admin-listen", addr}})
	a := &adminRelay{relayProc: r, url: "https://" + addr, caFile: filepath.Join(t.TempDir(), "ca.crt")}
	a.token = r.admin(t, "operator", "token", "create", "--name", "alice")
	r.admin(t, "ca", "export", "--out", a.caFile)
	pem, err := os.ReadFile(a.caFile)
	if err != nil {
		t.Fatal(err)
	}
	a.roots = x509.NewCertPool()
	if !a.roots.AppendCertsFromPEM(pem) {
		t.Fatal("ca export wrote no certificate")
	}
	return a
}

// ctl runs tetherctl against the relay with the operator token and env
// added; it returns stdout, stderr and the error.
func (a *adminRelay) ctl(t *testing.T, env []string, args ...string) (string, string, error) {
	t.Helper()
	base := []string{"TETHER_ADMIN_URL=" + a.url, "TETHER_ADMIN_TOKEN=" + a.token, "TETHER_ADMIN_CA=" + a.caFile}
	return runCmdEnv(t, append(base, env...), bins.ctl, args...)
}

// mustCtl is ctl failing the test on error; it returns stdout.
func (a *adminRelay) mustCtl(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := a.ctl(t, nil, args...)
	if err != nil {
		t.Fatalf("tetherctl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// ctlJSON runs tetherctl with -o json and decodes its output into v.
func (a *adminRelay) ctlJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out := a.mustCtl(t, append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("tetherctl %s -o json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

type ctlAgent struct {
	ID       string `json:"id"`
	Tenant   string `json:"tenant"`
	State    string `json:"state"`
	Reason   string `json:"reason"`
	Sessions int    `json:"sessions"`
}

func (a *adminRelay) agents(t *testing.T, args ...string) map[string]ctlAgent {
	t.Helper()
	var res struct{ Agents []ctlAgent }
	a.ctlJSON(t, &res, append([]string{"agents"}, args...)...)
	m := map[string]ctlAgent{}
	for _, x := range res.Agents {
		m[x.ID] = x
	}
	return m
}

// waitAgent polls the agent list until cond holds for agent id.
func (a *adminRelay) waitAgent(t *testing.T, id, what string, cond func(ctlAgent, bool) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		x, ok := a.agents(t)[id]
		if cond(x, ok) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent %s: %s did not happen within 30s; last seen %+v", id, what, x)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type auditRec struct {
	Seq    int64          `json:"seq"`
	Kind   string         `json:"kind"`
	Agent  string         `json:"agent"`
	Actor  string         `json:"actor"`
	Detail map[string]any `json:"detail"`
}

func (a *adminRelay) audit(t *testing.T, args ...string) []auditRec {
	t.Helper()
	var res struct{ Records []auditRec }
	a.ctlJSON(t, &res, append([]string{"audit"}, args...)...)
	return res.Records
}

// Every tetherctl command against a running relay with real agents.
func TestTetherctlCommands(t *testing.T) {
	a := startAdminRelay(t)
	a.addTenant(t, "acme")
	a.mustCtl(t, "tenant", "add", "globex")
	svc := tcpService(t, echo)
	a1 := startAgent(t, a.relayProc, "acme", agentOpts{services: map[string]string{"echo": svc}})
	a2 := startAgent(t, a.relayProc, "acme", agentOpts{services: map[string]string{"echo": svc}})
	g1 := startAgent(t, a.relayProc, "globex", agentOpts{services: map[string]string{"echo": svc}})

	if out := a.mustCtl(t, "whoami"); !strings.Contains(out, "alice (by token)") {
		t.Errorf("whoami: got %q, want alice (by token)", out)
	}

	// agents: every agent connected, needing attention first.
	for _, x := range []*agentProc{a1, a2, g1} {
		a.waitAgent(t, x.id, "connected", func(c ctlAgent, ok bool) bool { return ok && c.Sessions >= 1 && c.State != "down" })
	}
	table := a.mustCtl(t, "agents", "--tenant", "acme")
	if !strings.Contains(table, a1.id) || !strings.Contains(table, a2.id) || strings.Contains(table, g1.id) || !strings.HasPrefix(table, "STATE") {
		t.Errorf("agents --tenant acme: got\n%s\nwant a table with %s and %s only", table, a1.id, a2.id)
	}

	// agent ID: store facts and live sessions.
	var detail struct {
		ID, Tenant string
		Live       []struct {
			SessionID string `json:"session_id"`
		}
	}
	a.ctlJSON(t, &detail, "agent", a1.id)
	if detail.ID != a1.id || detail.Tenant != "acme" || len(detail.Live) == 0 {
		t.Errorf("agent %s: got %+v, want tenant acme with a live session", a1.id, detail)
	}
	if out := a.mustCtl(t, "agent", a1.id); !strings.Contains(out, "SESSIONS") || !strings.Contains(out, "tenant:") {
		t.Errorf("agent table: got\n%s", out)
	}

	// tenants and limits.
	if out := a.mustCtl(t, "tenants"); !strings.Contains(out, "acme") || !strings.Contains(out, "globex") {
		t.Errorf("tenants: got\n%s", out)
	}
	a.mustCtl(t, "limits", "acme", "--max-agents", "10", "--max-streams", "50")
	var ts struct {
		Name   string
		Agents struct{ Up, Degraded, Down, Revoked int }
		Limits *struct {
			MaxAgents  int `json:"max_agents"`
			MaxStreams int `json:"max_streams"`
		}
	}
	a.ctlJSON(t, &ts, "tenant", "show", "acme")
	if ts.Limits == nil || ts.Limits.MaxAgents != 10 || ts.Limits.MaxStreams != 50 || ts.Agents.Up+ts.Agents.Degraded != 2 {
		t.Errorf("tenant show acme: got %+v, want limits 10/50 and 2 connected agents", ts)
	}

	// token create, list, use, revoke.
	tok := a.mustCtl(t, "token", "create", "--tenant", "acme", "--uses", "2", "--ttl", "10m")
	tok = strings.TrimSpace(tok)
	var toks struct {
		Tokens []struct {
			ID      string
			MaxUses int `json:"max_uses"`
		}
	}
	a.ctlJSON(t, &toks, "token", "list", "--tenant", "acme")
	i := slices.IndexFunc(toks.Tokens, func(x struct {
		ID      string
		MaxUses int `json:"max_uses"`
	}) bool {
		return x.MaxUses == 2
	})
	if i < 0 {
		t.Fatalf("token list: no token with 2 uses in %+v", toks)
	}
	enroll(t, a.agentAddr, tok) // the token works
	a.mustCtl(t, "token", "revoke", toks.Tokens[i].ID)
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(tok), 0o600)
	if _, _, err := runCmd(t, bins.agent, "enroll", "--relay", a.agentAddr, "--token-file", tokenFile, "--state-dir", t.TempDir()); err == nil {
		t.Error("a revoked join token still enrolled an agent")
	}

	// backends.
	key := strings.TrimSpace(a.mustCtl(t, "backend", "add", "api", "--allow", "acme"))
	if !strings.HasPrefix(key, "tbk1_") {
		t.Errorf("backend add: got key %q", key)
	}
	if out := a.mustCtl(t, "backend", "grant", "api", "globex/echo"); !strings.Contains(out, "globex/echo") {
		t.Errorf("backend grant: got\n%s", out)
	}
	if out := a.mustCtl(t, "backend", "ungrant", "api", "globex/echo"); strings.Contains(out, "globex/echo") {
		t.Errorf("backend ungrant: got\n%s", out)
	}
	if out := a.mustCtl(t, "backends"); !strings.Contains(out, "api") || !strings.Contains(out, "acme/*") {
		t.Errorf("backends: got\n%s", out)
	}
	a.mustCtl(t, "backend", "remove", "api")
	if _, errOut, err := a.ctl(t, nil, "backend", "remove", "api"); err == nil || !strings.Contains(errOut, "not_found") {
		t.Errorf("removing a removed backend: got %v, %q; want a not_found error", err, errOut)
	}

	// drain: the agent's sessions are told to go away; it comes back.
	var drained struct{ Sessions int }
	a.ctlJSON(t, &drained, "drain", a2.id)
	if drained.Sessions < 1 {
		t.Errorf("drain: got %d sessions, want at least 1", drained.Sessions)
	}
	a.waitAgent(t, a2.id, "reconnection after drain", func(c ctlAgent, ok bool) bool {
		return ok && c.Sessions >= 1 && !strings.Contains(c.Reason, "draining")
	})

	// revoke: the agent's sessions close and it shows as revoked.
	a.mustCtl(t, "revoke", g1.id, "--reason", "test")
	a.waitAgent(t, g1.id, "revocation", func(c ctlAgent, ok bool) bool { return ok && c.State == "revoked" && c.Sessions == 0 })

	// unhealthy: an agent that stops is down.
	a1.kill()
	a.waitAgent(t, a1.id, "down", func(c ctlAgent, ok bool) bool { return ok && c.State == "down" })
	unhealthy := a.agents(t, "--unhealthy")
	if _, ok := unhealthy[a1.id]; !ok {
		t.Errorf("agents --unhealthy: %s (down) missing from %v", a1.id, unhealthy)
	}
	if _, ok := unhealthy[g1.id]; ok {
		t.Errorf("agents --unhealthy: %s (revoked) listed", g1.id)
	}
	// Down: a1 and the agent enrolled above with the join token, which
	// never ran.
	down := a.agents(t, "--state", "down")
	if _, ok := down[a1.id]; !ok || len(down) != 2 {
		t.Errorf("agents --state down: got %v, want %s and the agent enrolled but never run", down, a1.id)
	}
	for _, x := range down {
		if x.State != "down" || x.Sessions != 0 {
			t.Errorf("agents --state down listed %+v", x)
		}
	}

	// audit: the operator's actions, with their name; paging.
	recs := a.audit(t, "--since", "1h", "--kind", "agent.")
	var sawRevoke, sawDrain bool
	for _, r := range recs {
		sawRevoke = sawRevoke || (r.Kind == "agent.revoke" && r.Agent == g1.id && r.Actor == "operator:alice")
		sawDrain = sawDrain || (r.Kind == "agent.drain" && r.Agent == a2.id && r.Actor == "operator:alice")
	}
	if !sawRevoke || !sawDrain {
		t.Errorf("audit: revoke by operator:alice %v, drain by operator:alice %v; records %+v", sawRevoke, sawDrain, recs)
	}
	_, errOut, err := a.ctl(t, nil, "audit", "--limit", "1")
	if err != nil || !strings.Contains(errOut, "--cursor ") {
		t.Fatalf("audit --limit 1: %v, stderr %q; want a cursor for the next page", err, errOut)
	}
	cursor := strings.Fields(strings.SplitAfter(errOut, "--cursor ")[1])[0]
	first := a.audit(t, "--limit", "1")
	next := a.audit(t, "--limit", "1", "--cursor", cursor)
	if len(first) != 1 || len(next) != 1 || next[0].Seq >= first[0].Seq {
		t.Errorf("audit paging: first page %+v, next %+v; want an older record on the next page", first, next)
	}
	if out := a.mustCtl(t, "audit", "--tenant", "acme"); !strings.Contains(out, "tenant.limits") || !strings.Contains(out, "operator:alice") {
		t.Errorf("audit table: got\n%s", out)
	} else if strings.Contains(out, `\n`) || !strings.Contains(out, `{"`) {
		// The detail on one line, as compact JSON (as tether-relay audit
		// prints it), not the API's indented answer with its newlines
		// escaped.
		t.Errorf("audit table: detail not compact JSON on one line:\n%s", out)
	}
}

// A backend's certificates through both binaries: issued on the relay
// host, which prints the serial and how to list and revoke; listed by
// tetherctl (table and JSON) as by tether-relay; one revoked by its
// serial in upper case, the next try at it refused as not_found; the
// refusals of a malformed command line; --unrecorded on a backend that
// accepts no unrecorded certificate changes nothing; every revocation is
// audited with who made it.
func TestTetherctlBackendCertificates(t *testing.T) {
	a := startAdminRelay(t)
	a.addTenant(t, "acme")
	a.mustCtl(t, "backend", "add", "billing", "--allow", "acme")
	dir := t.TempDir()
	var serials []string
	for _, d := range []string{"one", "two"} {
		_, errOut, err := runCmd(t, bins.relay, "backend", "certificate", "billing", "--out", filepath.Join(dir, d), "--data-dir", a.dataDir)
		if err != nil {
			t.Fatalf("backend certificate: %v\n%s", err, errOut)
		}
		b, err := os.ReadFile(filepath.Join(dir, d, "backend.crt"))
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(b)
		if block == nil {
			t.Fatal("backend.crt holds no PEM block")
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		serial := c.SerialNumber.Text(16)
		if !strings.Contains(errOut, "serial "+serial) || !strings.Contains(errOut, "backend revoke-certificate billing "+serial) {
			t.Errorf("backend certificate says\n%s\nwant its serial %s and how to revoke it", errOut, serial)
		}
		serials = append(serials, serial)
	}
	slices.Sort(serials)

	type certList struct {
		Backend      string
		Certificates []struct {
			Serial    string
			CreatedAt time.Time `json:"created_at"`
			NotAfter  time.Time `json:"not_after"`
			Expired   bool
		}
		AcceptsUnrecorded bool `json:"accepts_unrecorded"`
	}
	listed := func() []string {
		t.Helper()
		var l certList
		a.ctlJSON(t, &l, "backend", "certificates", "billing")
		if l.Backend != "billing" || l.AcceptsUnrecorded {
			t.Errorf("backend certificates billing -o json: %+v", l)
		}
		out := []string{}
		for _, c := range l.Certificates {
			if c.Expired || c.CreatedAt.IsZero() || !c.NotAfter.After(time.Now()) {
				t.Errorf("backend certificates billing -o json lists %+v", c)
			}
			out = append(out, c.Serial)
		}
		slices.Sort(out)
		return out
	}
	if got := listed(); !slices.Equal(got, serials) {
		t.Fatalf("backend certificates billing: %v, want %v", got, serials)
	}
	for bin, table := range map[string]string{"tetherctl": a.mustCtl(t, "backend", "certificates", "billing"), "tether-relay": a.admin(t, "backend", "certificates", "billing")} {
		if !strings.HasPrefix(table, "SERIAL") || !strings.Contains(table, serials[0]) || !strings.Contains(table, serials[1]) ||
			strings.Count(table, "valid") != 2 || !strings.Contains(table, "backend billing accepts only the certificates listed") {
			t.Errorf("%s backend certificates billing:\n%s", bin, table)
		}
	}

	// Revoked by tetherctl, in upper case.
	_, errOut, err := a.ctl(t, nil, "backend", "revoke-certificate", "billing", strings.ToUpper(serials[0]))
	if err != nil || !strings.Contains(errOut, "certificate "+serials[0]+" of backend billing revoked") {
		t.Fatalf("backend revoke-certificate billing %s: %v\n%s", strings.ToUpper(serials[0]), err, errOut)
	}
	if got := listed(); !slices.Equal(got, serials[1:]) {
		t.Fatalf("backend certificates billing after the revocation: %v, want %v", got, serials[1:])
	}
	for _, tc := range []struct {
		args   []string
		code   int
		stderr []string
	}{
		{[]string{"billing", serials[0]}, 1, []string{"not_found", "HTTP 404", `backend "billing" has no certificate ` + serials[0] + " recorded", "backend certificates billing"}},
		{[]string{"nosuch", serials[1]}, 1, []string{"not_found", `no backend "nosuch"`}},
		{[]string{"billing", "xyz"}, 1, []string{"HTTP 400", "hexadecimal serial number"}},
		{[]string{"billing", serials[1], "--unrecorded"}, 2, []string{"a SERIAL or --unrecorded, not both"}},
		{[]string{"billing"}, 2, []string{"needs a SERIAL", "or --unrecorded"}},
	} {
		_, errOut, err := a.ctl(t, nil, append([]string{"backend", "revoke-certificate"}, tc.args...)...)
		if exitCode(err) != tc.code {
			t.Errorf("backend revoke-certificate %v: exit %d, want %d\n%s", tc.args, exitCode(err), tc.code, errOut)
		}
		for _, w := range tc.stderr {
			if !strings.Contains(errOut, w) {
				t.Errorf("backend revoke-certificate %v: stderr lacks %q:\n%s", tc.args, w, errOut)
			}
		}
	}
	if got := listed(); !slices.Equal(got, serials[1:]) {
		t.Fatalf("backend certificates billing after the refusals: %v, want %v", got, serials[1:])
	}
	var res struct {
		Backend           string
		AcceptsUnrecorded bool `json:"accepts_unrecorded"`
		Changed           bool
	}
	a.ctlJSON(t, &res, "backend", "revoke-certificate", "billing", "--unrecorded")
	if res.Backend != "billing" || res.AcceptsUnrecorded || res.Changed {
		t.Errorf("backend revoke-certificate billing --unrecorded -o json: %+v; want nothing changed", res)
	}

	// Revoked on the relay host.
	_, errOut, err = runCmd(t, bins.relay, "backend", "revoke-certificate", "billing", serials[1], "--data-dir", a.dataDir)
	if err != nil || !strings.Contains(errOut, "certificate "+serials[1]+" of backend billing revoked") {
		t.Fatalf("tether-relay backend revoke-certificate billing %s: %v\n%s", serials[1], err, errOut)
	}
	if got := listed(); len(got) != 0 {
		t.Fatalf("backend certificates billing after both revocations: %v, want none", got)
	}

	byActor := map[string]bool{}
	for _, r := range a.audit(t, "--kind", "backend.certificate_revoke") {
		byActor[r.Actor+" "+fmt.Sprint(r.Detail["serial"])] = true
	}
	if len(byActor) != 2 || !byActor["operator:alice "+serials[0]] || !byActor["operator "+serials[1]] {
		t.Errorf("audit of the revocations: %v; want %s by operator:alice and %s by operator (on the relay host)", byActor, serials[0], serials[1])
	}
}

// The admin API's authentication: tokens (none, wrong, expired, revoked),
// operator certificates (and refusal of others) and browser sessions.
func TestAdminAuthentication(t *testing.T) {
	a := startAdminRelay(t)
	a.addTenant(t, "acme")
	svc := tcpService(t, echo)
	ag := startAgent(t, a.relayProc, "acme", agentOpts{services: map[string]string{"echo": svc}})

	t.Run("no credential", func(t *testing.T) {
		st, code := a.call(t, a.httpClient(nil), "GET", "/api/v1/agents", nil, nil)
		if st != 401 || code != "unauthenticated" {
			t.Errorf("got %d %s, want 401 unauthenticated", st, code)
		}
		_, errOut, err := runCmdEnv(t, []string{"TETHER_ADMIN_URL=" + a.url, "TETHER_ADMIN_CA=" + a.caFile, "TETHER_ADMIN_TOKEN="}, bins.ctl, "agents")
		if err == nil || !strings.Contains(errOut, "no credential") {
			t.Errorf("tetherctl without a credential: %v, %q", err, errOut)
		}
	})
	t.Run("wrong token", func(t *testing.T) {
		wrong := a.token[:len(a.token)-2] + "AA"
		_, errOut, err := a.ctl(t, []string{"TETHER_ADMIN_TOKEN=" + wrong}, "agents")
		if err == nil || !strings.Contains(errOut, "(unauthenticated, HTTP 401)") {
			t.Errorf("tetherctl with a wrong token: %v, %q; want the API's unauthenticated error", err, errOut)
		}
		st, code := a.call(t, a.httpClient(nil), "GET", "/api/v1/agents", http.Header{"Authorization": {"Bearer nonsense"}}, nil)
		if st != 401 || code != "unauthenticated" {
			t.Errorf("malformed token: got %d %s, want 401 unauthenticated", st, code)
		}
	})
	t.Run("expired token", func(t *testing.T) {
		tok := a.admin(t, "operator", "token", "create", "--name", "brief", "--ttl", "2s")
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, errOut, err := a.ctl(t, []string{"TETHER_ADMIN_TOKEN=" + tok}, "whoami")
			if err != nil && strings.Contains(errOut, "unauthenticated") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a token with a 2s lifetime still works after 30s: %v %q", err, errOut)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	t.Run("revoked token", func(t *testing.T) {
		tok := a.admin(t, "operator", "token", "create", "--name", "carol")
		if out, _, err := a.ctl(t, []string{"TETHER_ADMIN_TOKEN=" + tok}, "whoami"); err != nil || !strings.Contains(out, "carol") {
			t.Fatalf("new token: %v, %q", err, out)
		}
		var list []struct{ ID, Name string }
		if err := json.Unmarshal([]byte(a.admin(t, "operator", "token", "list", "-o", "json")), &list); err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(list, func(x struct{ ID, Name string }) bool { return x.Name == "carol" })
		if i < 0 {
			t.Fatalf("operator token list: no carol in %+v", list)
		}
		a.admin(t, "operator", "token", "revoke", list[i].ID)
		if _, errOut, err := a.ctl(t, []string{"TETHER_ADMIN_TOKEN=" + tok}, "whoami"); err == nil || !strings.Contains(errOut, "unauthenticated") {
			t.Errorf("revoked token: %v, %q; want unauthenticated", err, errOut)
		}
	})
	t.Run("operator certificate", func(t *testing.T) {
		dir := t.TempDir()
		a.admin(t, "operator", "certificate", "bob", "--out", dir)
		out, errOut, err := a.ctl(t, []string{"TETHER_ADMIN_TOKEN=", "TETHER_ADMIN_CERT=" + filepath.Join(dir, "operator.crt"), "TETHER_ADMIN_KEY=" + filepath.Join(dir, "operator.key")}, "whoami")
		if err != nil || !strings.Contains(out, "bob (by certificate)") {
			t.Errorf("operator certificate: %v, %q, %q; want bob (by certificate)", err, out, errOut)
		}
	})
	refused := func(t *testing.T, certFile, keyFile string) {
		t.Helper()
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		st, code := a.call(t, a.httpClient(&pair), "GET", "/api/v1/whoami", http.Header{"Authorization": {"Bearer " + a.token}}, nil)
		if st != 401 || code != "unauthenticated" {
			t.Errorf("got %d %s, want 401 unauthenticated", st, code)
		}
	}
	t.Run("certificate from another CA", func(t *testing.T) {
		certFile, keyFile := foreignOperatorCert(t)
		refused(t, certFile, keyFile)
	})
	t.Run("agent certificate", func(t *testing.T) {
		refused(t, filepath.Join(ag.stateDir, "agent.crt"), filepath.Join(ag.stateDir, "agent.key"))
	})
	t.Run("backend certificate", func(t *testing.T) {
		dir := t.TempDir()
		a.admin(t, "backend", "add", "billing", "--tenants", "acme")
		a.admin(t, "backend", "certificate", "billing", "--out", dir)
		refused(t, filepath.Join(dir, "backend.crt"), filepath.Join(dir, "backend.key"))
	})
	t.Run("session", func(t *testing.T) {
		c := a.httpClient(nil)
		body, _ := json.Marshal(map[string]string{"token": a.token})
		req, _ := http.NewRequest("POST", a.url+"/login", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var login struct {
			Operator  string `json:"operator"`
			CSRFToken string `json:"csrf_token"`
		}
		json.NewDecoder(resp.Body).Decode(&login)
		resp.Body.Close()
		var cookie *http.Cookie
		for _, ck := range resp.Cookies() {
			if ck.Name == "__Host-tether_session" {
				cookie = ck
			}
		}
		if resp.StatusCode != 200 || cookie == nil || login.Operator != "alice" || login.CSRFToken == "" {
			t.Fatalf("login: %d, cookie %v, %+v", resp.StatusCode, cookie, login)
		}
		if !cookie.HttpOnly || !cookie.Secure || cookie.SameSite != http.SameSiteStrictMode {
			t.Errorf("session cookie %+v: want HttpOnly, Secure, SameSite=Strict", cookie)
		}
		withCookie := http.Header{"Cookie": {cookie.Name + "=" + cookie.Value}}
		if st, code := a.call(t, c, "GET", "/api/v1/whoami", withCookie, nil); st != 200 {
			t.Errorf("whoami with the session: %d %s", st, code)
		}
		// State changes need the CSRF token.
		if st, code := a.call(t, c, "POST", "/api/v1/agents/"+ag.id+"/drain", withCookie, []byte(`{}`)); st != 403 || code != "forbidden" {
			t.Errorf("drain without the CSRF token: %d %s, want 403 forbidden", st, code)
		}
		h := withCookie.Clone()
		h.Set("X-CSRF-Token", login.CSRFToken)
		h.Set("Origin", "https://evil.example")
		if st, code := a.call(t, c, "POST", "/api/v1/agents/nope/drain", h, []byte(`{}`)); st != 403 {
			t.Errorf("cross-origin post: %d %s, want 403", st, code)
		}
		h.Del("Origin")
		if st, code := a.call(t, c, "POST", "/api/v1/agents/nope/drain", h, []byte(`{}`)); st != 404 || code != "not_found" {
			t.Errorf("post with the CSRF token: %d %s, want 404 not_found (it got past the CSRF check)", st, code)
		}
		req, _ = http.NewRequest("POST", a.url+"/logout", nil)
		req.Header.Set("Cookie", cookie.Name+"="+cookie.Value)
		if resp, err := c.Do(req); err != nil || resp.StatusCode != 204 {
			t.Fatalf("logout: %v %v", resp, err)
		} else {
			resp.Body.Close()
		}
		if st, code := a.call(t, c, "GET", "/api/v1/whoami", withCookie, nil); st != 401 || code != "unauthenticated" {
			t.Errorf("whoami after logout: %d %s, want 401 unauthenticated", st, code)
		}
		// A wrong token logs nobody in.
		req, _ = http.NewRequest("POST", a.url+"/login", strings.NewReader(`{"token":"top1_x"}`))
		if st, code := a.do(t, c, req); st != 401 || code != "unauthenticated" {
			t.Errorf("login with a wrong token: %d %s", st, code)
		}
	})
}

// JSON errors carry a stable code and the right status.
func TestAdminErrors(t *testing.T) {
	a := startAdminRelay(t)
	a.addTenant(t, "acme")
	c := a.httpClient(nil)
	auth := http.Header{"Authorization": {"Bearer " + a.token}, "Content-Type": {"application/json"}}
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"unknown agent", "GET", "/api/v1/agents/nope", "", 404, "not_found"},
		{"unknown path", "GET", "/api/v1/nothing", "", 404, "not_found"},
		{"wrong method", "DELETE", "/api/v1/agents", "", 405, "method_not_allowed"},
		{"bad JSON", "POST", "/api/v1/tenants", "{", 400, "bad_request"},
		{"unknown field", "POST", "/api/v1/tenants", `{"name":"x","evil":1}`, 400, "bad_request"},
		{"two values", "POST", "/api/v1/tenants", `{"name":"x"}{}`, 400, "bad_request"},
		{"bad name", "POST", "/api/v1/tenants", `{"name":"../etc"}`, 400, "bad_request"},
		{"exists", "POST", "/api/v1/tenants", `{"name":"acme"}`, 409, "conflict"},
		{"too large", "POST", "/api/v1/tenants", `{"name":"` + strings.Repeat("a", 70000) + `"}`, 413, "too_large"},
		{"bad state filter", "GET", "/api/v1/agents?state=sleepy", "", 400, "bad_request"},
		{"bad audit limit", "GET", "/api/v1/audit?limit=0", "", 400, "bad_request"},
		{"bad cursor", "GET", "/api/v1/audit?cursor=abc", "", 400, "bad_request"},
		{"token for unknown tenant", "POST", "/api/v1/tokens", `{"tenant":"nope"}`, 404, "not_found"},
		{"bad ttl", "POST", "/api/v1/tokens", `{"tenant":"acme","ttl":"forever"}`, 400, "bad_request"},
		{"negative limits", "PUT", "/api/v1/tenants/acme/limits", `{"max_agents":-1}`, 400, "bad_request"},
		{"grant to unknown backend", "POST", "/api/v1/backends/nope/grant", `{"grants":["acme"]}`, 404, "not_found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body []byte
			if tc.body != "" {
				body = []byte(tc.body)
			}
			st, code := a.call(t, c, tc.method, tc.path, auth, body)
			if st != tc.status || code != tc.code {
				t.Errorf("%s %s: got %d %q, want %d %q", tc.method, tc.path, st, code, tc.status, tc.code)
			}
		})
	}
	// tetherctl shows the code.
	_, errOut, err := a.ctl(t, nil, "agent", "nope")
	if err == nil || !strings.Contains(errOut, "not_found") || !strings.Contains(errOut, "HTTP 404") {
		t.Errorf("tetherctl agent nope: %v, %q; want the not_found code", err, errOut)
	}
}

// httpClient trusts the relay CA and presents cert when not nil.
func (a *adminRelay) httpClient(cert *tls.Certificate) *http.Client {
	tc := &tls.Config{RootCAs: a.roots, InsecureSkipVerify: true} //nolint:gosec // verified below: chain to the relay CA
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: a.roots, Intermediates: inter})
		return err
	}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}, Timeout: 20 * time.Second}
}

// call sends a request and returns its status and error code ("" when the
// answer is not an error).
func (a *adminRelay) call(t *testing.T, c *http.Client, method, path string, h http.Header, body []byte) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, a.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	return a.do(t, c, req)
}

func (a *adminRelay) do(t *testing.T, c *http.Client, req *http.Request) (int, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	var e struct {
		Error *struct{ Code string } `json:"error"`
	}
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		if err := json.Unmarshal(data, &e); err != nil || e.Error == nil {
			t.Errorf("%s %s: status %d with a body that is not a JSON error: %q", req.Method, req.URL.Path, resp.StatusCode, data)
			return resp.StatusCode, ""
		}
		return resp.StatusCode, e.Error.Code
	}
	return resp.StatusCode, ""
}

// foreignOperatorCert makes, in a CA of its own, a client certificate
// that names an operator of the relay's trust domain.
func foreignOperatorCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("spiffe://tether.internal/operator/mallory")
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "mallory"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{u}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "op.crt"), filepath.Join(dir, "op.key")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", keyDER)
	return certFile, keyFile
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Rollouts through the admin API: tetherctl lists a release published on
// the relay's host, starts a rollout (audited with the operator's name),
// shows its status, and gets the API's codes for a missing release and a
// rollout with no agents chosen.
func TestTetherctlRelease(t *testing.T) {
	a := startAdminRelay(t)
	a.addTenant(t, "acme")
	keyDir := t.TempDir()
	mustRun(t, bins.relay, "release", "keygen", "--out", keyDir)
	bin := filepath.Join(t.TempDir(), "tether-agent")
	if err := os.WriteFile(bin, []byte("a release binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	a.admin(t, "release", "publish", "--file", bin, "--version", "1.2.3", "--os", "linux", "--arch", "arm64", "--key", filepath.Join(keyDir, "release.key"))

	if out := a.mustCtl(t, "release", "list"); !strings.Contains(out, "1.2.3") || !strings.Contains(out, "linux/arm64") {
		t.Fatalf("release list:\n%s", out)
	}
	if _, errOut, err := a.ctl(t, nil, "release", "rollout", "1.2.3", "--tenants", "acme", "--halt-at", "0.25", "--batch", "5"); err != nil || !strings.Contains(errOut, "rollout 1 of 1.2.3 started") {
		t.Fatalf("release rollout: %v\n%s", err, errOut)
	}
	var st struct {
		Rollouts []struct {
			ID      int64    `json:"id"`
			Version string   `json:"version"`
			Tenants []string `json:"tenants"`
			HaltAt  float64  `json:"halt_at"`
			Batch   int      `json:"batch"`
			State   string   `json:"state"`
		} `json:"rollouts"`
	}
	a.ctlJSON(t, &st, "release", "status", "--version", "1.2.3")
	if len(st.Rollouts) != 1 || st.Rollouts[0].Version != "1.2.3" || !slices.Equal(st.Rollouts[0].Tenants, []string{"acme"}) ||
		st.Rollouts[0].HaltAt != 0.25 || st.Rollouts[0].Batch != 5 || st.Rollouts[0].State != "active" {
		t.Fatalf("release status: %+v", st)
	}
	if out := a.mustCtl(t, "release", "status"); !strings.Contains(out, "tenants acme") {
		t.Fatalf("release status table:\n%s", out)
	}
	recs := a.audit(t, "--kind", "release.rollout")
	if len(recs) != 1 || recs[0].Actor != "operator:alice" {
		t.Fatalf("audit of the rollout: %+v", recs)
	}

	for _, tc := range []struct {
		args []string
		code string
	}{
		{[]string{"release", "rollout", "9.9.9", "--percent", "10"}, "not_found"},
		{[]string{"release", "rollout", "1.2.3"}, "bad_request"},
		{[]string{"release", "rollout", "1.2.3", "--percent", "101"}, "bad_request"},
		{[]string{"release", "rollout", "1.2.3", "--agents", "../x"}, "bad_request"},
		{[]string{"release", "rollout", "not-a-version", "--percent", "5"}, "bad_request"},
	} {
		_, errOut, err := a.ctl(t, nil, tc.args...)
		if err == nil || !strings.Contains(errOut, "("+tc.code+", HTTP") {
			t.Errorf("tetherctl %s: %v %q; want the %s code", strings.Join(tc.args, " "), err, errOut, tc.code)
		}
	}
}
