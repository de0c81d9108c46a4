package console

import (
	"net/http"
	"strings"
	"testing"
)

// TestScopedLookupsRevealNoExistence: a tenant's operator who asks for
// another tenant's tenant or agent, and for one that exists nowhere, gets
// the same answer and leaves the same record in its own audit trail
// (which it reads): before, only what existed elsewhere was recorded as a
// refusal, so the trail told a tenant's viewer which tenant names and
// agent ids exist.
func TestScopedLookupsRevealNoExistence(t *testing.T) {
	r := startScopedRelay(t)
	c := r.client(t)
	auth := map[string]string{"Authorization": "Bearer " + r.viewerTok}
	refusals := func() string {
		res := r.doBody(t, c, http.MethodGet, "/api/v1/audit?kind=operator.refused", "", auth)
		if res.status != http.StatusOK {
			t.Fatalf("audit: %d %s", res.status, res.body)
		}
		return res.body
	}
	for _, p := range [][2]string{
		{"/api/v1/tenants/globex", "/api/v1/tenants/nosuch"},
		{"/api/v1/tenants/globex/limits", "/api/v1/tenants/nosuch/limits"},
		{"/api/v1/agents/globex-agent", "/api/v1/agents/nosuch-agent"},
	} {
		n0 := strings.Count(refusals(), "operator.refused")
		elsewhere := r.doBody(t, c, http.MethodGet, p[0], "", auth)
		n1 := strings.Count(refusals(), "operator.refused")
		nowhere := r.doBody(t, c, http.MethodGet, p[1], "", auth)
		n2 := strings.Count(refusals(), "operator.refused")
		if elsewhere.status != http.StatusNotFound || nowhere.status != http.StatusNotFound {
			t.Fatalf("%s: %d, %s: %d; want 404 for both", p[0], elsewhere.status, p[1], nowhere.status)
		}
		if n1-n0 != n2-n1 {
			t.Errorf("%s (another tenant's) left %d refusal records in acme's trail, %s (nowhere) %d: the trail tells them apart", p[0], n1-n0, p[1], n2-n1)
		}
	}
}
