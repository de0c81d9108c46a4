package test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// requestRec is an audit record as tether-relay audit and tetherctl audit
// print it in JSON.
type requestRec struct {
	Kind    string         `json:"kind"`
	Outcome string         `json:"outcome"`
	Tenant  string         `json:"tenant"`
	Agent   string         `json:"agent"`
	Backend string         `json:"backend"`
	Actor   string         `json:"actor"`
	Detail  map[string]any `json:"detail"`
}

// relayAuditByRequest polls tether-relay audit --request id (the data
// directory's store; the relay writes records a moment after the event)
// until it lists a record, and returns the records.
func relayAuditByRequest(t *testing.T, r *relayProc, id string) []requestRec {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var recs []requestRec
		for _, line := range strings.Split(r.admin(t, "audit", "--request", id, "-o", "json"), "\n") {
			if line == "" {
				continue
			}
			var rec requestRec
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("tether-relay audit line %q: %v", line, err)
			}
			recs = append(recs, rec)
		}
		if len(recs) > 0 {
			return recs
		}
		if time.Now().After(deadline) {
			t.Fatalf("tether-relay audit --request %s: no record after 15s", id)
		}
		time.Sleep(50 * time.Millisecond) // bounded poll: the audit writer has no event to wait on from here
	}
}

// ctlAuditByRequest runs tetherctl audit --request id -o json (the admin
// API) with env added and returns the records.
func ctlAuditByRequest(t *testing.T, a *adminRelay, env []string, id string) []requestRec {
	t.Helper()
	out, errOut, err := a.ctl(t, env, "audit", "--request", id, "-o", "json")
	if err != nil {
		t.Fatalf("tetherctl audit --request %s: %v\n%s", id, err, errOut)
	}
	var res struct {
		Records []requestRec `json:"records"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("tetherctl audit -o json: %v\n%s", err, out)
	}
	return res.Records
}

// relayLogLine waits for the relay's JSON log line with message msg and
// request id, and returns it.
func relayLogLine(t *testing.T, p *proc, msg, id string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		for _, line := range strings.Split(p.out.String(), "\n") {
			if !strings.Contains(line, id) {
				continue
			}
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg && m["request"] == id {
				return m
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s logged no %q line with request %s in 15s:\n%s", p.name, msg, id, p.out.String())
		}
		select {
		case <-p.Done():
			t.Fatalf("%s exited (%v)", p.name, p.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// refusalID dials addr with d, wants a refusal with code want, and
// returns the request id the Go Dialer's error carries (also in its text).
func refusalID(t *testing.T, d *client.Dialer, addr string, want error) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		c.Close()
		t.Fatalf("dial %s: connected, want %v", addr, want)
	}
	var ref *client.Refusal
	if !errors.As(err, &ref) || !errors.Is(err, want) {
		t.Fatalf("dial %s: %v (%T), want a *client.Refusal of %v", addr, err, err, want)
	}
	if len(ref.RequestID) != 16 || !strings.Contains(err.Error(), ref.RequestID) {
		t.Fatalf("dial %s: request id %q in %q, want 16 hex digits, in the error's text", addr, ref.RequestID, err)
	}
	return ref.RequestID
}

// TestRequestIDFindsARefusalOnBothSides: one id for every refusal. The id
// the Go Dialer's error carries for a refusal (before authentication, by
// the relay's policy, by the agent) is in the relay's log line for it,
// in its audit record (tether-relay audit --request, and tetherctl audit
// --request through the admin API) and, when the agent refused, in the
// agent's access log. A tenant-scoped operator sees only its tenant's
// records, and not the refusals of a backend with no grant for its
// tenant (the relay's). A SOCKS5 refusal, which has no header, is logged and audited
// with its id.
func TestRequestIDFindsARefusalOnBothSides(t *testing.T) {
	a := startAdminRelay(t)
	a.addTenant(t, "acme")
	a.addTenant(t, "globex")
	key := a.admin(t, "backend", "add", "billing", "--allow", "acme")
	echoAddr := tcpService(t, echo)
	ag := startAgent(t, a.relayProc, "acme", agentOpts{services: map[string]string{"echo": echoAddr}})
	d := &client.Dialer{Relay: a.connectAddr, Backend: "billing", APIKey: key, Timeout: 20 * time.Second}
	waitDial(t, d, "echo.acme.tether:7", 20*time.Second).Close()
	globexTok := a.admin(t, "operator", "token", "create", "--name", "gus", "--tenant", "globex")
	acmeTok := a.admin(t, "operator", "token", "create", "--name", "vic", "--tenant", "acme")

	check := func(t *testing.T, id, outcome, tenant, door string) requestRec {
		t.Helper()
		line := relayLogLine(t, a.proc, "refused", id)
		if line["code"] != outcome || line["door"] != door {
			t.Errorf("relay log line %v: want code %s at door %s", line, outcome, door)
		}
		recs := relayAuditByRequest(t, a.relayProc, id)
		if len(recs) != 1 || recs[0].Outcome != outcome || recs[0].Tenant != tenant || recs[0].Detail["request"] != id || recs[0].Detail["door"] != door {
			t.Fatalf("tether-relay audit --request %s: %+v, want one %s record of tenant %q at door %s", id, recs, outcome, tenant, door)
		}
		api := ctlAuditByRequest(t, a, nil, id)
		if len(api) != 1 || api[0].Outcome != outcome || api[0].Detail["request"] != id {
			t.Fatalf("tetherctl audit --request %s: %+v, want the same record", id, api)
		}
		return recs[0]
	}

	t.Run("not allowed by the relay", func(t *testing.T) {
		id := refusalID(t, d, "db.globex.tether:5432", client.ErrNotAllowed)
		// Billing has no grant for globex: the refusal is the relay's
		// (no tenant), with the target, not globex's.
		if rec := check(t, id, "not_allowed", "", "connect"); rec.Detail["target"] != "db.globex.tether:5432" {
			t.Errorf("audit record %+v: want the target asked for", rec)
		}
		// Scoped operators: neither globex's nor acme's sees it.
		if got := ctlAuditByRequest(t, a, []string{"TETHER_ADMIN_TOKEN=" + globexTok}, id); len(got) != 0 {
			t.Errorf("globex's operator sees a refusal of a backend with no grant for globex: %+v", got)
		}
		if got := ctlAuditByRequest(t, a, []string{"TETHER_ADMIN_TOKEN=" + acmeTok}, id); len(got) != 0 {
			t.Errorf("acme's operator sees billing's refusal for globex: %+v", got)
		}
	})

	t.Run("refused by the agent", func(t *testing.T) {
		id := refusalID(t, d, "nope.acme.tether:1", client.ErrUnknownService)
		check(t, id, "unknown_service", "acme", "connect")
		var found bool
		for _, e := range accessLogLines(t, ag) {
			if e.Request == id {
				found = true
				if e.Code != "unknown_service" || e.Service != "nope" {
					t.Errorf("agent's access log line of %s: %+v, want unknown_service for nope", id, e)
				}
			}
		}
		if !found {
			t.Errorf("the agent's access log has no line of request %s", id)
		}
	})

	t.Run("wrong API key", func(t *testing.T) {
		bad := *d
		bad.APIKey = "tbk1_wrong"
		id := refusalID(t, &bad, "echo.acme.tether:7", client.ErrUnauthenticated)
		rec := check(t, id, "unauthenticated", "", "connect")
		if rec.Actor != "unauthenticated" || rec.Detail["claimed_backend"] != "billing" {
			t.Errorf("audit record %+v: want actor unauthenticated, claimed backend billing", rec)
		}
	})

	t.Run("SOCKS5", func(t *testing.T) {
		if code := socksConnect(t, a.socksAddr, "billing", key, "db.globex.tether"); code == 0 {
			t.Fatal("SOCKS5 connect to an ungranted tenant succeeded")
		}
		// SOCKS5 carries no id: find it in the relay's log, then the audit.
		var id string
		deadline := time.Now().Add(15 * time.Second)
		for id == "" {
			for _, line := range strings.Split(a.out.String(), "\n") {
				var m map[string]any
				if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "refused" && m["door"] == "socks5" {
					id, _ = m["request"].(string)
				}
			}
			if id == "" && time.Now().After(deadline) {
				t.Fatalf("no SOCKS5 refusal with a request id in the relay's log:\n%s", a.out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		check(t, id, "not_allowed", "", "socks5")
	})

	t.Run("malformed id", func(t *testing.T) {
		_, errOut, err := a.ctl(t, nil, "audit", "--request", "50%_off")
		if err == nil || !strings.Contains(errOut, "request id") {
			t.Errorf("tetherctl audit --request 50%%_off: %v, %q; want the id refused", err, errOut)
		}
	})
}
