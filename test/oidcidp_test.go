package test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"html/template"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// testIdP is a small OpenID Connect identity provider for the console's
// single sign-on tests, over net/http on a loopback port: discovery, a
// key set, a login form (a person's name, no password) and the
// authorization code flow with PKCE (S256 only) and a nonce, checked as
// a real provider checks them. Its people and their claims are the
// test's.
type testIdP struct {
	t           testing.TB
	srv         *httptest.Server
	key         *ecdsa.PrivateKey
	clientID    string
	secret      string
	redirectURI string
	people      map[string]map[string]any // login name → claims besides iss, sub, aud, exp, iat, nonce

	mu    sync.Mutex // guards codes, the counters and namesItself
	codes map[string]idpGrant
	// namesItself makes the provider name itself in its authorization
	// answers (iss, RFC 9207) and say so in its discovery document.
	namesItself bool
	// pkceChecked counts token requests whose code_verifier matched the
	// challenge; pkceRefused those whose did not (or had none).
	pkceChecked, pkceRefused int
}

// idpGrant is an authorization code's grant, until it is redeemed.
type idpGrant struct {
	person, redirectURI, challenge, nonce string
	expires                               time.Time
}

// startIdP starts an identity provider for the client id and secret,
// which redirects only to redirectURI.
func startIdP(t testing.TB, clientID, secret, redirectURI string, people map[string]map[string]any) *testIdP {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := &testIdP{t: t, key: key, clientID: clientID, secret: secret, redirectURI: redirectURI, people: people, codes: map[string]idpGrant{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", p.discovery)
	mux.HandleFunc("GET /jwks", p.jwks)
	mux.HandleFunc("GET /authorize", p.authorizeForm)
	mux.HandleFunc("POST /authorize", p.authorize)
	mux.HandleFunc("POST /token", p.token)
	p.srv = httptest.NewServer(mux)
	t.Cleanup(p.srv.Close)
	return p
}

// nameItself makes the provider name itself in its answers (RFC 9207).
func (p *testIdP) nameItself() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.namesItself = true
}

func (p *testIdP) naming() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.namesItself
}

// issuer is the provider's issuer URL.
func (p *testIdP) issuer() string { return p.srv.URL }

// subject is the console's name for a person of this provider.
func (p *testIdP) subject(person string) string { return p.issuer() + "#" + person }

func (p *testIdP) discovery(w http.ResponseWriter, _ *http.Request) {
	doc := map[string]any{
		"issuer":                                p.issuer(),
		"authorization_endpoint":                p.issuer() + "/authorize",
		"token_endpoint":                        p.issuer() + "/token",
		"jwks_uri":                              p.issuer() + "/jwks",
		"response_types_supported":              []string{"code"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{"ES256"},
		"code_challenge_methods_supported":      []string{"S256"},
	}
	if p.naming() {
		doc["authorization_response_iss_parameter_supported"] = true
	}
	writeIdPJSON(w, http.StatusOK, doc)
}

func (p *testIdP) jwks(w http.ResponseWriter, _ *http.Request) {
	writeIdPJSON(w, http.StatusOK, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &p.key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
}

var idpLoginPage = template.Must(template.New("login").Parse(`<!doctype html>
<html><head><title>Test IdP</title></head><body>
<h1>Sign in to the test identity provider</h1>
{{if .Error}}<p id="idp-error">{{.Error}}</p>{{end}}
<form method="post" action="/authorize">
{{range $k, $v := .Params}}<input type="hidden" name="{{$k}}" value="{{$v}}">
{{end}}<label>Name <input id="idp-username" name="username" autofocus></label>
<button id="idp-login" type="submit">Sign in</button>
</form></body></html>`))

// authorizeForm checks an authorization request and shows the login form.
func (p *testIdP) authorizeForm(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	if msg := p.checkAuthorize(q); msg != "" {
		http.Error(w, msg, http.StatusBadRequest)
		return
	}
	params := map[string]string{}
	for _, k := range []string{"client_id", "redirect_uri", "state", "nonce", "code_challenge", "code_challenge_method", "scope", "response_type"} {
		params[k] = q.Get(k)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	idpLoginPage.Execute(w, map[string]any{"Params": params})
}

// checkAuthorize returns what is wrong with an authorization request.
func (p *testIdP) checkAuthorize(q url.Values) string {
	switch {
	case q.Get("response_type") != "code":
		return "response_type must be code"
	case q.Get("client_id") != p.clientID:
		return "unknown client"
	case q.Get("redirect_uri") != p.redirectURI:
		return "redirect_uri is not registered: " + q.Get("redirect_uri")
	case q.Get("code_challenge") == "" || q.Get("code_challenge_method") != "S256":
		return "PKCE with S256 is required"
	case q.Get("state") == "" || q.Get("nonce") == "":
		return "state and nonce are required"
	}
	return ""
}

// authorize signs the person in and sends the browser back with a code.
func (p *testIdP) authorize(w http.ResponseWriter, req *http.Request) {
	if err := req.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f := req.PostForm
	if msg := p.checkAuthorize(f); msg != "" {
		http.Error(w, msg, http.StatusBadRequest)
		return
	}
	person := f.Get("username")
	if _, ok := p.people[person]; !ok {
		params := map[string]string{}
		for k := range f {
			if k != "username" {
				params[k] = f.Get(k)
			}
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		idpLoginPage.Execute(w, map[string]any{"Params": params, "Error": "no such person"})
		return
	}
	code := randomB64()
	p.mu.Lock()
	p.codes[code] = idpGrant{person: person, redirectURI: f.Get("redirect_uri"), challenge: f.Get("code_challenge"), nonce: f.Get("nonce"), expires: time.Now().Add(time.Minute)}
	p.mu.Unlock()
	to, _ := url.Parse(f.Get("redirect_uri"))
	q := to.Query()
	q.Set("code", code)
	q.Set("state", f.Get("state"))
	if p.naming() {
		q.Set("iss", p.issuer())
	}
	to.RawQuery = q.Encode()
	http.Redirect(w, req, to.String(), http.StatusSeeOther)
}

// token redeems a code: client authentication, the same redirect URI,
// and the PKCE verifier of the challenge; it answers an ID token signed
// with the provider's key.
func (p *testIdP) token(w http.ResponseWriter, req *http.Request) {
	if err := req.ParseForm(); err != nil {
		writeIdPJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request"})
		return
	}
	f := req.PostForm
	id, secret, ok := req.BasicAuth()
	if !ok {
		id, secret = f.Get("client_id"), f.Get("client_secret")
	} else {
		id, _ = url.QueryUnescape(id)
		secret, _ = url.QueryUnescape(secret)
	}
	if id != p.clientID || subtle.ConstantTimeCompare([]byte(secret), []byte(p.secret)) != 1 {
		writeIdPJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client"})
		return
	}
	p.mu.Lock()
	g, ok := p.codes[f.Get("code")]
	delete(p.codes, f.Get("code"))
	sum := sha256.Sum256([]byte(f.Get("code_verifier")))
	pkce := f.Get("code_verifier") != "" && base64.RawURLEncoding.EncodeToString(sum[:]) == g.challenge
	if ok && pkce {
		p.pkceChecked++
	} else if ok {
		p.pkceRefused++
	}
	p.mu.Unlock()
	if f.Get("grant_type") != "authorization_code" || !ok || time.Now().After(g.expires) || f.Get("redirect_uri") != g.redirectURI || !pkce {
		writeIdPJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant"})
		return
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: p.key, KeyID: "k1"}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		writeIdPJSON(w, http.StatusInternalServerError, map[string]string{"error": "server_error"})
		return
	}
	now := time.Now()
	claims := map[string]any{}
	for k, v := range p.people[g.person] {
		claims[k] = v
	}
	std := jwt.Claims{Issuer: p.issuer(), Subject: g.person, Audience: jwt.Audience{p.clientID}, IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(5 * time.Minute))}
	raw, err := jwt.Signed(signer).Claims(std).Claims(claims).Claims(map[string]any{"nonce": g.nonce}).Serialize()
	if err != nil {
		writeIdPJSON(w, http.StatusInternalServerError, map[string]string{"error": "server_error"})
		return
	}
	writeIdPJSON(w, http.StatusOK, map[string]any{"access_token": randomB64(), "token_type": "Bearer", "expires_in": 300, "id_token": raw})
}

// pkce returns the counts of token requests whose PKCE verifier matched
// and did not.
func (p *testIdP) pkce() (checked, refused int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pkceChecked, p.pkceRefused
}

func writeIdPJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func randomB64() string {
	b := make([]byte, 24)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
