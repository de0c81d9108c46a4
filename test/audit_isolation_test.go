package test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// ctlStreamRecords runs tetherctl audit --kind stream -o json (the admin
// API) with env added (an operator token of its own) and returns the
// records.
func ctlStreamRecords(t *testing.T, a *adminRelay, env []string) []requestRec {
	t.Helper()
	out, errOut, err := a.ctl(t, env, "audit", "--kind", "stream", "--limit", "1000", "-o", "json")
	if err != nil {
		t.Fatalf("tetherctl audit --kind stream: %v\n%s", err, errOut)
	}
	var res struct {
		Records []requestRec `json:"records"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("tetherctl audit -o json: %v\n%s", err, out)
	}
	return res.Records
}

// TestUngrantedBackendCannotWriteATenantsTrail: a backend with no grant
// for acme asks for acme's services through every front door (the Go
// Dialer's CONNECT, SOCKS5, a plain HTTP proxy request). Each refusal is
// recorded in the relay's trail, under no tenant, with the backend, the
// target it asked for and the reason: a vendor operator sees them, acme's
// operators do not. A backend granted a service of acme, refused another,
// stays in acme's trail.
func TestUngrantedBackendCannotWriteATenantsTrail(t *testing.T) {
	a := startAdminRelay(t)
	a.addTenant(t, "acme")
	a.addTenant(t, "globex")
	billingKey := a.admin(t, "backend", "add", "billing", "--allow", "acme/echo")
	eveKey := a.admin(t, "backend", "add", "eve", "--allow", "globex")
	acmeTok := a.admin(t, "operator", "token", "create", "--name", "vic", "--tenant", "acme")
	acmeEnv := []string{"TETHER_ADMIN_TOKEN=" + acmeTok}

	// Eve, granted globex only, asks for acme's services at each door.
	eve := &client.Dialer{Relay: a.connectAddr, Backend: "eve", APIKey: eveKey, Timeout: 20 * time.Second}
	refusalID(t, eve, "echo.acme.tether:7", client.ErrNotAllowed)
	if code := socksConnect(t, a.socksAddr, "eve", eveKey, "db.acme.tether"); code == 0 {
		t.Fatal("SOCKS5: eve reached a service of acme")
	}
	resp, err := proxyClient(t, a.connectAddr, "eve", eveKey).Get("http://api.acme.tether/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get("Tether-Error") != "not_allowed" {
		t.Fatalf("HTTP proxy: eve's GET of acme's api: %s %s, want 403 not_allowed", resp.Status, resp.Header.Get("Tether-Error"))
	}
	// Billing, granted acme's echo, asks for another service of acme.
	billing := &client.Dialer{Relay: a.connectAddr, Backend: "billing", APIKey: billingKey, Timeout: 20 * time.Second}
	billingID := refusalID(t, billing, "secret.acme.tether:7", client.ErrNotAllowed)

	// The vendor sees every refusal (records are written a moment after).
	want := map[string]string{"connect": "echo.acme.tether:7", "socks5": "db.acme.tether:80", "http-proxy": "api.acme.tether:80"}
	var eves []requestRec
	for deadline := time.Now().Add(15 * time.Second); ; {
		eves = eves[:0]
		var billingSeen bool
		for _, rec := range ctlStreamRecords(t, a, nil) {
			switch {
			case rec.Backend == "eve":
				eves = append(eves, rec)
			case rec.Backend == "billing" && rec.Detail["request"] == billingID:
				billingSeen = true
				if rec.Tenant != "acme" || rec.Outcome != "not_allowed" {
					t.Fatalf("billing's refusal for acme's secret: %+v, want a not_allowed record of acme", rec)
				}
			}
		}
		if len(eves) >= len(want) && billingSeen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the vendor's audit trail has %d of eve's 3 refusals (%+v), billing's: %v", len(eves), eves, billingSeen)
		}
		time.Sleep(100 * time.Millisecond) // bounded poll: the audit writer has no event to wait on from here
	}
	for _, rec := range eves {
		door, _ := rec.Detail["door"].(string)
		target, ok := want[door]
		if !ok || rec.Tenant != "" || rec.Outcome != "not_allowed" || rec.Actor != "backend:eve" || rec.Detail["target"] != target ||
			!strings.Contains(fmt.Sprint(rec.Detail["error"]), "no grant") {
			t.Errorf("eve's refusal %+v: want a not_allowed record under no tenant, with the target %q and the reason", rec, target)
		}
		delete(want, door)
	}
	if len(want) != 0 {
		t.Errorf("no record of eve's refusal at %v", want)
	}

	// Acme's operator sees billing's refusal, and nothing of eve's.
	var billingSeen bool
	for _, rec := range ctlStreamRecords(t, a, acmeEnv) {
		if rec.Backend == "eve" || strings.Contains(rec.Actor, "eve") {
			t.Errorf("acme's operator sees eve's refusal: %+v", rec)
		}
		billingSeen = billingSeen || rec.Detail["request"] == billingID
	}
	if !billingSeen {
		t.Errorf("acme's operator does not see billing's refusal %s for acme's secret", billingID)
	}
}
