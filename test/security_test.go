package test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/quic"
	"github.com/tetherhq/tether/protocol/transport/tcp"
	"github.com/tetherhq/tether/relay/client"
)

// idp is a real OpenID Connect issuer: a discovery document and a key set
// over HTTP, and tokens signed with its key.
type idp struct {
	srv     *httptest.Server
	key     *ecdsa.PrivateKey
	issuer  string
	fetches atomic.Int64 // key set downloads
}

const testAudience = "tether-test"

func newIDP(t *testing.T) *idp {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := &idp{key: key}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"issuer": p.issuer, "jwks_uri": p.issuer + "/keys"})
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, _ *http.Request) {
		p.fetches.Add(1)
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: string(jose.ES256), Use: "sig"}}})
	})
	p.srv = httptest.NewServer(mux)
	p.issuer = p.srv.URL
	t.Cleanup(p.srv.Close)
	return p
}

// claims are valid claims for backend sub and tenants.
func (p *idp) claims(sub string, tenants any) map[string]any {
	now := time.Now()
	return map[string]any{"iss": p.issuer, "aud": testAudience, "sub": sub, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(), "tether_tenants": tenants}
}

// sign signs claims with key under key id kid (ES256), or with an HMAC
// secret when key is nil.
func sign(t *testing.T, key *ecdsa.PrivateKey, kid string, claims map[string]any) string {
	t.Helper()
	sk := jose.SigningKey{Algorithm: jose.ES256, Key: key}
	if key == nil {
		sk = jose.SigningKey{Algorithm: jose.HS256, Key: []byte("a shared secret of thirty-two bytes!")}
	}
	signer, err := jose.NewSigner(sk, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// labelled is a real HTTP server that answers every request with the
// tenant and service it stands for, and counts the requests it gets.
type labelled struct {
	addr     string
	requests atomic.Int64
}

func labelledService(t *testing.T, tenant, service string) *labelled {
	t.Helper()
	l := &labelled{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		l.requests.Add(1)
		fmt.Fprintf(w, "tenant=%s service=%s", tenant, service)
	}))
	t.Cleanup(srv.Close)
	l.addr = srv.Listener.Addr().String()
	return l
}

// fetch sends one HTTP request to addr through d and returns the body.
func fetch(d *client.Dialer, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+addr+"\r\nConnection: close\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

// auditKey names a stream audit record by who asked for what and how it ended.
func auditKey(rec map[string]any) string {
	d, _ := rec["detail"].(map[string]any)
	return fmt.Sprintf("%v %v/%v %v", rec["backend"], rec["tenant"], d["service"], rec["outcome"])
}

// waitAuditKeys waits until every key in want appears among the stream
// audit records.
func waitAuditKeys(t *testing.T, r *relayProc, want map[string]bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		have := map[string]bool{}
		for _, rec := range auditRecords(t, r, "--kind", "stream", "--limit", "100000") {
			have[auditKey(rec)] = true
		}
		var missing []string
		for k := range want {
			if !have[k] {
				missing = append(missing, k)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("streams missing from the audit trail: %v", missing)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// TestSecurityMatrix tries every backend against every tenant and service
// under a policy with exact grants, wildcards and an agent that narrows a
// service to one backend, and then every way of claiming an identity that
// is not one's own. Allowed streams reach exactly the service asked for;
// everything else is refused with its typed code, reaches no service, and
// is in the audit trail.
func TestSecurityMatrix(t *testing.T) {
	p := newIDP(t)
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r := startRelay(t, relayOpts{extra: []string{"--connect-tls-listen", tlsAddr, "--oidc-issuer", p.issuer, "--oidc-audience", testAudience}})
	for _, tenant := range []string{"acme", "globex", "initech", "umbrella"} {
		r.addTenant(t, tenant)
	}
	services := map[string]*labelled{}
	for _, tenant := range []string{"acme", "globex"} {
		for _, svc := range []string{"db", "api"} {
			services[tenant+"/"+svc] = labelledService(t, tenant, svc)
		}
	}
	startAgent(t, r, "acme", agentOpts{transport: "quic",
		services: map[string]string{"db": services["acme/db"].addr, "api": services["acme/api"].addr},
		backends: map[string][]string{"api": {"billing"}}, // tenant-owned least privilege
	})
	startAgent(t, r, "globex", agentOpts{transport: "tcp",
		services: map[string]string{"db": services["globex/db"].addr, "api": services["globex/api"].addr}})

	key := func(name string, grants ...string) string {
		return r.admin(t, "backend", "add", name, "--allow", strings.Join(grants, ","))
	}
	dialers := map[string]*client.Dialer{}
	// The tenants each backend has a grant for (some service of): its
	// requests for another tenant are the relay's to record, not that
	// tenant's.
	grantedTenants := map[string][]string{}
	for name, grants := range map[string][]string{
		"billing":   {"acme", "globex/db"},
		"reports":   {"*/api"},
		"analytics": {"acme/d*"},
		"eve":       {"initech"},
	} {
		dialers[name] = &client.Dialer{Relay: r.connectAddr, Backend: name, APIKey: key(name, grants...), Timeout: 20 * time.Second}
		for _, tenant := range []string{"acme", "globex", "initech", "ghost"} {
			if slices.ContainsFunc(grants, func(g string) bool { ok, _ := path.Match(strings.SplitN(g, "/", 2)[0], tenant); return ok }) {
				grantedTenants[name] = append(grantedTenants[name], tenant)
			}
		}
	}

	// What each backend may do; every other combination is not_allowed.
	expect := map[string]protocol.Code{
		"billing acme/db":     protocol.CodeOK,
		"billing acme/api":    protocol.CodeOK,
		"billing acme/nosuch": protocol.CodeUnknownService, // granted by the relay, unknown to the agent
		"billing globex/db":   protocol.CodeOK,
		"reports acme/api":    protocol.CodeNotAllowed, // granted by the relay, refused by acme's agent
		"reports globex/api":  protocol.CodeOK,
		"reports initech/api": protocol.CodeNoAgent,
		"reports ghost/api":   protocol.CodeUnknownTenant, // the grant covers every tenant, so it may learn this one does not exist
		"analytics acme/db":   protocol.CodeOK,
		"eve initech/db":      protocol.CodeNoAgent,
		"eve initech/api":     protocol.CodeNoAgent,
		"eve initech/nosuch":  protocol.CodeNoAgent,
	}
	before := map[string]int64{}
	for k, s := range services {
		before[k] = s.requests.Load()
	}
	reached := map[string]int64{}
	audited := map[string]bool{}
	for backend, d := range dialers {
		for _, tenant := range []string{"acme", "globex", "initech", "ghost"} {
			for _, svc := range []string{"db", "api", "nosuch"} {
				combo := fmt.Sprintf("%s %s/%s", backend, tenant, svc)
				want, ok := expect[combo]
				if !ok {
					want = protocol.CodeNotAllowed
				}
				body, err := fetch(d, svc+"."+tenant+".tether:80")
				if got := protocol.CodeOf(err); got != want {
					t.Errorf("%s: got %v (%v), want %v", combo, got, err, want)
					continue
				}
				recorded := tenant
				if !slices.Contains(grantedTenants[backend], tenant) {
					recorded = "<nil>" // no tenant: the relay's trail
				}
				audited[fmt.Sprintf("%s %s/%s %s", backend, recorded, svc, want)] = true
				if want != protocol.CodeOK {
					continue
				}
				if wantBody := fmt.Sprintf("tenant=%s service=%s", tenant, svc); body != wantBody {
					t.Errorf("%s: reached %q, want %q", combo, body, wantBody)
				}
				reached[tenant+"/"+svc]++
			}
		}
	}
	for k, s := range services {
		if got := s.requests.Load() - before[k]; got != reached[k] {
			t.Errorf("service %s got %d requests, want %d (only allowed streams may reach it)", k, got, reached[k])
		}
	}
	waitAuditKeys(t, r, audited)

	t.Run("bearer tokens", func(t *testing.T) {
		bearer := func(tok string) *client.Dialer {
			return &client.Dialer{Relay: r.connectAddr, Timeout: 20 * time.Second,
				BearerToken: func(context.Context) (string, error) { return tok, nil }}
		}
		good := sign(t, p.key, "k1", p.claims("billing", []string{"acme"}))
		if body, err := fetch(bearer(good), "db.acme.tether:80"); err != nil || body != "tenant=acme service=db" {
			t.Fatalf("valid token: %q, %v", body, err)
		}
		// The token names acme only, although billing's grants cover globex/db.
		if _, err := fetch(bearer(good), "db.globex.tether:80"); !errors.Is(err, client.ErrNotAllowed) {
			t.Fatalf("tenant outside the token's claim: got %v, want not_allowed", err)
		}
		// A token that does not name globex grants nothing of globex: the
		// refusal is the relay's to record, not globex's.
		waitAudit(t, r, "the refusal of a token that does not name globex", func(m map[string]any) bool {
			d, _ := m["detail"].(map[string]any)
			return m["outcome"] == "not_allowed" && m["backend"] == "billing" && d["auth"] == "jwt" && d["target"] == "db.globex.tether:80"
		}, "--kind", "stream")
		for _, m := range auditRecords(t, r, "--kind", "stream", "--tenant", "globex", "--backend", "billing") {
			if d, _ := m["detail"].(map[string]any); d["auth"] == "jwt" {
				t.Errorf("globex's trail holds the refusal of a token that does not name globex: %v", m)
			}
		}
		all := sign(t, p.key, "k1", p.claims("billing", "*"))
		if body, err := fetch(bearer(all), "db.globex.tether:80"); err != nil || body != "tenant=globex service=db" {
			t.Fatalf("token for every tenant: %q, %v", body, err)
		}
		// The grants still apply to a token for every tenant.
		if _, err := fetch(bearer(all), "api.globex.tether:80"); !errors.Is(err, client.ErrNotAllowed) {
			t.Fatalf("token beyond the backend's grants: got %v, want not_allowed", err)
		}
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		with := func(k string, v any) map[string]any {
			c := p.claims("billing", []string{"acme"})
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
			return c
		}
		for name, tc := range map[string]struct {
			token string
			why   string // in the refusal and its audit record
		}{
			"wrong issuer":          {sign(t, p.key, "k1", with("iss", "https://idp.example")), "different provider"},
			"wrong audience":        {sign(t, p.key, "k1", with("aud", "someone-else")), "audience"},
			"expired":               {sign(t, p.key, "k1", with("exp", time.Now().Add(-time.Minute).Unix())), "expired"},
			"forged signature":      {sign(t, other, "k1", p.claims("billing", []string{"acme"})), "signature"},
			"unknown key":           {sign(t, other, "k9", p.claims("billing", []string{"acme"})), `signing key "k9" is not one of the issuer's keys`},
			"HMAC":                  {sign(t, nil, "k1", p.claims("billing", []string{"acme"})), "signature algorithm"},
			"no tenant claim":       {sign(t, p.key, "k1", with("tether_tenants", nil)), "tether_tenants"},
			"tenant claim mistyped": {sign(t, p.key, "k1", with("tether_tenants", 7)), "tether_tenants"},
			"unregistered backend":  {sign(t, p.key, "k1", with("sub", "mallory")), "not registered"},
			"not a JWT":             {"not.a.jwt", "malformed"},
		} {
			before := services["acme/db"].requests.Load()
			_, err := fetch(bearer(tc.token), "db.acme.tether:80")
			if !errors.Is(err, client.ErrUnauthenticated) || !strings.Contains(err.Error(), tc.why) {
				t.Errorf("%s: got %v, want unauthenticated mentioning %q", name, err, tc.why)
			}
			if services["acme/db"].requests.Load() != before {
				t.Errorf("%s: the service was reached", name)
			}
			waitAudit(t, r, "refused token ("+name+")", func(m map[string]any) bool {
				d, _ := m["detail"].(map[string]any)
				e, _ := d["error"].(string)
				return m["outcome"] == "unauthenticated" && m["actor"] == "unauthenticated" && strings.Contains(e, tc.why)
			}, "--kind", "stream")
		}
		// The issuer goes down: keys already fetched keep working.
		fetches := p.fetches.Load()
		p.srv.Close()
		if body, err := fetch(bearer(good), "db.acme.tether:80"); err != nil || body != "tenant=acme service=db" {
			t.Fatalf("valid token while the issuer is down: %q, %v", body, err)
		}
		if fetches == 0 || fetches > 3 {
			t.Errorf("the relay fetched the key set %d times, want it cached (1 to 3: once, and at most one refetch per unknown key)", fetches)
		}
		waitAudit(t, r, "a stream authenticated by token", func(m map[string]any) bool {
			d, _ := m["detail"].(map[string]any)
			return m["outcome"] == "ok" && m["backend"] == "billing" && d["auth"] == "jwt"
		}, "--kind", "stream")
	})

	t.Run("client certificates", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "billing")
		r.admin(t, "backend", "certificate", "billing", "--out", dir)
		if fi, err := os.Stat(filepath.Join(dir, "backend.key")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("backend.key: %v, %v; want mode 0600", fi, err)
		}
		conf, err := client.LoadCertificate(dir)
		if err != nil {
			t.Fatal(err)
		}
		byCert := &client.Dialer{Relay: tlsAddr, TLSConfig: conf, Timeout: 20 * time.Second}
		if body, err := fetch(byCert, "db.acme.tether:80"); err != nil || body != "tenant=acme service=db" {
			t.Fatalf("backend certificate: %q, %v", body, err)
		}
		if _, err := fetch(byCert, "api.globex.tether:80"); !errors.Is(err, client.ErrNotAllowed) {
			t.Fatalf("certificate beyond billing's grants: got %v, want not_allowed", err)
		}
		waitAudit(t, r, "a stream authenticated by certificate", func(m map[string]any) bool {
			d, _ := m["detail"].(map[string]any)
			return m["outcome"] == "ok" && m["backend"] == "billing" && d["auth"] == "certificate" && d["door"] == "connect-tls"
		}, "--kind", "stream")

		// An API key works on the TLS door too, which must be the relay's.
		caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
		relayOnly, err := client.RelayTLSConfig(caPEM)
		if err != nil {
			t.Fatal(err)
		}
		byKey := *dialers["analytics"]
		byKey.Relay, byKey.TLSConfig = tlsAddr, relayOnly
		if body, err := fetch(&byKey, "db.acme.tether:80"); err != nil || body != "tenant=acme service=db" {
			t.Fatalf("API key over TLS: %q, %v", body, err)
		}

		ca, caKey := relayCA(t, r)
		otherCA, otherKey := selfSignedCA(t)
		for name, tc := range map[string]struct {
			cert tls.Certificate
			why  string
		}{
			"another CA":           {agentCert(t, otherCA, otherKey, "spiffe://tether.internal/backend/billing", time.Now().Add(-time.Hour), time.Now().Add(time.Hour)), "unknown authority"},
			"an agent certificate": {agentCert(t, ca, caKey, "spiffe://tether.internal/tenant/acme/agent/aaaaaaaaaaaaaaaa", time.Now().Add(-time.Hour), time.Now().Add(time.Hour)), "not /backend/"},
			"expired":              {agentCert(t, ca, caKey, "spiffe://tether.internal/backend/billing", time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)), "expired"},
			"unregistered backend": {agentCert(t, ca, caKey, "spiffe://tether.internal/backend/mallory", time.Now().Add(-time.Hour), time.Now().Add(time.Hour)), "not registered"},
		} {
			c := relayOnly.Clone()
			c.Certificates = []tls.Certificate{tc.cert}
			// From an address of its own: 127.0.0.1 has just spent its
			// burst of failed authentications on the bearer tokens above,
			// and its next failure would be answered rate_limited.
			d := &client.Dialer{Relay: tlsAddr, TLSConfig: c, Timeout: 20 * time.Second, NetDialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}}
			before := services["acme/db"].requests.Load()
			if _, err := fetch(d, "db.acme.tether:80"); err == nil {
				t.Errorf("%s: accepted", name)
			}
			if services["acme/db"].requests.Load() != before {
				t.Errorf("%s: the service was reached", name)
			}
			waitAudit(t, r, "refused certificate ("+name+")", func(m map[string]any) bool {
				d, _ := m["detail"].(map[string]any)
				e, _ := d["error"].(string)
				return m["outcome"] == "unauthenticated" && d["door"] == "connect-tls" && strings.Contains(e, tc.why)
			}, "--kind", "stream")
		}
	})

	t.Run("streams opened by an agent", func(t *testing.T) {
		// An agent holds a valid identity (of tenant umbrella) and tries to
		// send the relay a stream header naming a backend and a service.
		// The relay accepts no stream from an agent but its control stream,
		// so nothing acts on it.
		stateDir, _ := enroll(t, r.agentAddr, r.token(t, "umbrella"))
		cert, err := tls.LoadX509KeyPair(filepath.Join(stateDir, "agent.crt"), filepath.Join(stateDir, "agent.key"))
		if err != nil {
			t.Fatal(err)
		}
		caPEM, _ := os.ReadFile(filepath.Join(stateDir, "ca.crt"))
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(caPEM)
		conf := identity.AgentClientConfig(roots, "tether.internal", func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil })
		before := map[string]int64{}
		for k, s := range services {
			before[k] = s.requests.Load()
		}
		for _, tr := range []string{"tcp", "quic"} {
			t.Run(tr, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				var sess transport.Session
				if tr == "tcp" {
					sess, err = tcp.Dial(ctx, nil, r.agentAddr, conf, tcp.Config(slog.New(slog.DiscardHandler)))
				} else {
					sess, err = quic.Dial(ctx, r.agentAddr, conf.Clone(), quic.Config(16))
				}
				if err != nil {
					t.Fatal(err)
				}
				defer sess.Close()
				ctl, err := sess.OpenStream(ctx)
				if err != nil {
					t.Fatal(err)
				}
				ctl.SetDeadline(time.Now().Add(10 * time.Second))
				if err := protocol.WriteMessage(ctl, &protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "rogue", OS: "linux", Arch: "amd64"}); err != nil {
					t.Fatal(err)
				}
				if m, err := protocol.ReadMessage(bufio.NewReader(ctl)); err != nil || m.Type() != protocol.TypeWelcome {
					t.Fatalf("hello: %v, %v", m, err)
				}
				for i := range 4 {
					octx, ocancel := context.WithTimeout(ctx, 2*time.Second)
					st, err := sess.OpenStream(octx)
					ocancel()
					if err != nil {
						continue // QUIC: the relay grants no stream credit beyond the control stream
					}
					st.SetDeadline(time.Now().Add(2 * time.Second))
					protocol.WriteStreamHeader(st, protocol.StreamHeader{Service: "db", Backend: "backend:billing", RequestID: fmt.Sprint("forged-", i)})
					if rep, err := protocol.ReadReply(st); err == nil {
						t.Errorf("the relay answered a stream an agent opened: %+v", rep)
					}
					st.Close()
				}
			})
		}
		for k, s := range services {
			if s.requests.Load() != before[k] {
				t.Errorf("service %s was reached by a stream an agent opened", k)
			}
		}
		// The relay is unaffected.
		if body, err := fetch(dialers["billing"], "db.acme.tether:80"); err != nil || body != "tenant=acme service=db" {
			t.Fatalf("after the rogue agent: %q, %v", body, err)
		}
	})

	t.Run("policy changes apply to running relays", func(t *testing.T) {
		r.admin(t, "backend", "grant", "analytics", "globex/api")
		waitFetch(t, dialers["analytics"], "api.globex.tether:80", "tenant=globex service=api")
		r.admin(t, "backend", "ungrant", "analytics", "acme/d*")
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := fetch(dialers["analytics"], "db.acme.tether:80")
			if errors.Is(err, client.ErrNotAllowed) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("grant removed, stream still: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if _, _, err := runCmd(t, bins.relay, "backend", "ungrant", "analytics", "acme/d*", "--data-dir", r.dataDir); err == nil {
			t.Fatal("removing a grant twice succeeded, want an error naming it")
		}
		recs := auditRecords(t, r, "--kind", "backend.", "--backend", "analytics")
		var kinds []string
		for _, m := range recs {
			kinds = append(kinds, fmt.Sprint(m["kind"]))
		}
		if got := strings.Join(kinds, ","); !strings.Contains(got, "backend.grant") || !strings.Contains(got, "backend.ungrant") || !strings.Contains(got, "backend.add") {
			t.Fatalf("policy changes in the audit trail: %s", got)
		}
	})
}

// waitFetch retries fetch until it returns want.
func waitFetch(t *testing.T, d *client.Dialer, addr, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		body, err := fetch(d, addr)
		if err == nil && body == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %q, %v; want %q", addr, body, err, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// selfSignedCA makes a CA the relay has never seen.
func selfSignedCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("spiffe://tether.internal")
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "not the relay CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, URIs: []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

// TestJoinTokenDoubleUse races agents enrolling with one single-use token:
// exactly one gets an identity, in the token's tenant; the others are
// refused with token_used_up; every attempt is audited; a replay later is
// refused too.
func TestJoinTokenDoubleUse(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	r.addTenant(t, "globex")
	tok := r.token(t, "acme", "--uses", "1")
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	const racers = 6
	type result struct {
		stateDir, stderr string
		err              error
	}
	results := make(chan result, racers)
	for range racers {
		go func() {
			dir := filepath.Join(t.TempDir(), "state")
			_, stderr, err := runCmd(t, bins.agent, "enroll", "--relay", r.agentAddr, "--token-file", tokenFile, "--state-dir", dir)
			results <- result{dir, stderr, err}
		}()
	}
	var winners []string
	for range racers {
		res := <-results
		switch {
		case res.err == nil:
			winners = append(winners, res.stateDir)
		case !strings.Contains(res.stderr, "token_used_up"):
			t.Errorf("losing enrolment: %v, %s; want token_used_up", res.err, res.stderr)
		}
	}
	if len(winners) != 1 {
		t.Fatalf("%d enrolments succeeded with a single-use token, want 1", len(winners))
	}
	leaf := readCert(t, filepath.Join(winners[0], "agent.crt"))
	id, err := identity.AgentFromCertificate(leaf, "tether.internal")
	if err != nil || id.Tenant != "acme" {
		t.Fatalf("the token for acme gave identity %+v, %v", id, err)
	}
	// A replay later.
	_, stderr, err := runCmd(t, bins.agent, "enroll", "--relay", r.agentAddr, "--token-file", tokenFile, "--state-dir", filepath.Join(t.TempDir(), "s"))
	if err == nil || !strings.Contains(stderr, "token_used_up") {
		t.Fatalf("replayed token: %v, %s", err, stderr)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, refused := 0, 0
		for _, m := range auditRecords(t, r, "--kind", "agent.enrol") {
			switch m["outcome"] {
			case "ok":
				ok++
			case "token_used_up":
				refused++
			}
		}
		if ok == 1 && refused == racers {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit: %d enrolments ok, %d token_used_up; want 1 and %d", ok, refused, racers)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
