package console

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/admin"
)

// A revoked operator certificate is refused from the next request on,
// also on a connection already open with it, and the browser sessions
// opened with it end; a certificate the relay did not record is refused.
func TestRevokedOperatorCertificate(t *testing.T) {
	d := startDashRelay(t)
	ctx := context.Background()
	if err := d.adm.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	oc, err := d.adm.IssueOperatorCertificate(ctx, "bob", admin.Scope{Tenant: "acme", Role: admin.RoleAdmin}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(oc.CertPEM, oc.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	c := d.client(t)
	c.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{pair}
	var reused bool
	get := func(c *http.Client, path string, hdr map[string]string) dashResponse {
		t.Helper()
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet, d.base+path, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatal(err)
		}
		return dashResponse{res.StatusCode, res.Header, string(b)}
	}
	if res := get(c, "/api/v1/whoami", nil); res.status != 200 || !strings.Contains(res.body, `"via": "certificate"`) || !strings.Contains(res.body, `"tenant": "acme"`) {
		t.Fatalf("whoami with the certificate: %d %s", res.status, res.body)
	}
	// A browser session opened with the certificate.
	res := d.doBody(t, c, http.MethodPost, "/login", `{}`, map[string]string{"Origin": d.base})
	var cookie string
	for _, ck := range strings.Split(res.header.Get("Set-Cookie"), ";") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(ck), SessionCookie+"="); ok {
			cookie = v
		}
	}
	if res.status != 200 || cookie == "" || !strings.Contains(res.body, `"role": "admin"`) {
		t.Fatalf("login with the certificate: %d %s", res.status, res.body)
	}
	browser := d.client(t)
	withCookie := map[string]string{"Cookie": SessionCookie + "=" + cookie}
	if res := get(browser, "/api/v1/whoami", withCookie); res.status != 200 || !strings.Contains(res.body, `"via": "session"`) {
		t.Fatalf("the certificate's session: %d %s", res.status, res.body)
	}
	// The cookie is one browsers take from this host only (__Host-: a
	// sibling subdomain cannot plant a session of its own in its name),
	// and a session id under the unprefixed name, which any sibling
	// subdomain may set, opens nothing.
	if set := res.header.Get("Set-Cookie"); !strings.HasPrefix(set, "__Host-tether_session=") || !strings.Contains(set, "Path=/") || !strings.Contains(set, "Secure") || strings.Contains(set, "Domain=") {
		t.Errorf("session cookie %q: want __Host-tether_session, Path=/, Secure, no Domain", set)
	}
	if res := get(browser, "/api/v1/whoami", map[string]string{"Cookie": "tether_session=" + cookie}); res.status != http.StatusUnauthorized {
		t.Errorf("a session id under the unprefixed cookie name: %d %s; want 401", res.status, res.body)
	}
	list, err := d.adm.OperatorCertificates(ctx)
	if err != nil || len(list) != 1 || list[0].Serial != oc.Serial {
		t.Fatalf("certificates: %+v, %v", list, err)
	}

	if _, err := d.adm.RevokeOperatorCertificate(ctx, oc.Serial); err != nil {
		t.Fatal(err)
	}
	if res := get(c, "/api/v1/whoami", nil); res.status != http.StatusUnauthorized || !strings.Contains(res.body, "revoked") {
		t.Errorf("the revoked certificate on its open connection: %d %s; want 401", res.status, res.body)
	} else if !reused {
		t.Error("the request did not go over the connection already open with the certificate")
	}
	if res := get(browser, "/api/v1/whoami", withCookie); res.status != http.StatusUnauthorized {
		t.Errorf("the revoked certificate's session: %d %s; want 401", res.status, res.body)
	}
	if res := get(browser, "/ui/agents?live=1", withCookie); res.status != http.StatusUnauthorized {
		t.Errorf("the dashboard's live refresh in the revoked certificate's session: %d; want 401", res.status)
	}
	recs, _ := d.adm.Audit(ctx, admin.AuditFilter{Kind: admin.KindOperatorCertRevoke})
	if len(recs) != 1 || recs[0].Detail["serial"] != oc.Serial {
		t.Errorf("audit of the revocation: %+v", recs)
	}
}
