package console

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/coreos/go-oidc/v3/oidc"
	"go.yaml.in/yaml/v3"
	"golang.org/x/oauth2"

	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/audit"
)

// Single sign-on to the console: OpenID Connect, authorization code flow
// with PKCE, against the SaaS's identity provider and, for a tenant that
// has one, the tenant's own. A person's claims map to a scope
// (admin.Scope): a claim naming a role (and, for tenant administrators
// and viewers, a claim naming the tenant), or groups mapped to roles in
// the configuration. The mapping fails closed: a tenant's issuer only
// ever grants its own tenant (never vendor, never another tenant), a
// tenant that does not exist grants nothing, claims that name two tenants
// grant nothing, and a person whose claims map to nothing is refused. A
// signed-in person has a console session like any other (stored hashed,
// carrying the scope), and the audit trail names them by their issuer and
// subject, which never change.
//
//	GET /login/sso/{issuer}?next=   start: redirect to the issuer with state, nonce and PKCE
//	GET /login/sso/callback         the issuer's answer: exchange the code, verify, map, sign in

// SSOConfig configures single sign-on to the console. The zero value has
// it off.
type SSOConfig struct {
	// PublicURL is the console's address as browsers reach it, e.g.
	// https://relay.example:7446: the issuers redirect back to
	// PublicURL/login/sso/callback, which must be registered with each as
	// a redirect URI. Required with issuers.
	PublicURL string `yaml:"public_url"`
	// Issuers people may sign in with; none turns single sign-on off.
	Issuers []SSOIssuer `yaml:"issuers"`
}

// SSOIssuer is one OpenID Connect issuer and how its people's claims map
// to scopes.
type SSOIssuer struct {
	// Name identifies the issuer in the console's URLs, the audit trail
	// and the sessions it grants (a DNS label; renaming an issuer ends
	// them). Required.
	Name string `yaml:"name"`
	// Display is the text of its button on the login page. Default
	// "Sign in with NAME".
	Display string `yaml:"display"`
	// Issuer is the issuer URL (https; http only on a loopback address),
	// as its discovery document and its tokens name it. Required.
	Issuer string `yaml:"issuer"`
	// ClientID is the console's client id at the issuer. Required.
	ClientID string `yaml:"client_id"`
	// ClientSecret or ClientSecretFile (a file holding it) authenticate
	// the console at the issuer; neither: a public client (PKCE only).
	ClientSecret     string `yaml:"client_secret"`
	ClientSecretFile string `yaml:"client_secret_file"`
	// Scopes are asked for besides openid. Default profile and email.
	Scopes []string `yaml:"scopes"`
	// Tenant, when set, makes this the tenant's own issuer: its people can
	// only ever be that tenant's administrators or viewers.
	Tenant string `yaml:"tenant"`
	// RoleClaim names the claim holding a person's role: vendor, admin or
	// viewer. Default "tether_role".
	RoleClaim string `yaml:"role_claim"`
	// TenantClaim names the claim holding the tenant an admin or viewer
	// role is for. Default "tether_tenant". For a tenant's issuer it may
	// be absent (the issuer's tenant); naming another tenant grants
	// nothing.
	TenantClaim string `yaml:"tenant_claim"`
	// GroupsClaim names the claim listing a person's groups (a string or
	// an array of strings). Default "groups".
	GroupsClaim string `yaml:"groups_claim"`
	// Groups maps a group to a scope: "vendor", "admin@TENANT" or
	// "viewer@TENANT"; for a tenant's issuer "admin" or "viewer" (its
	// tenant), and no other tenant.
	Groups map[string]string `yaml:"groups"`
	// NameClaim names the claim shown as the person's name. Default: the
	// first of email, preferred_username and name, else the subject.
	NameClaim string `yaml:"name_claim"`
}

// ParseSSOConfig reads single sign-on configuration from YAML. Unknown
// keys are an error.
func ParseSSOConfig(data []byte) (SSOConfig, error) {
	var c SSOConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return SSOConfig{}, fmt.Errorf("single sign-on config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return SSOConfig{}, err
	}
	return c, nil
}

// Defaults of SSOIssuer.
const (
	defaultRoleClaim   = "tether_role"
	defaultTenantClaim = "tether_tenant"
	defaultGroupsClaim = "groups"
)

// Validate reports every problem of c at once.
func (c SSOConfig) Validate() error {
	if len(c.Issuers) == 0 {
		if c.PublicURL != "" {
			return errors.New("single sign-on: public_url without issuers")
		}
		return nil
	}
	var errs []error
	if u, err := url.Parse(c.PublicURL); err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		errs = append(errs, fmt.Errorf("single sign-on: public_url %q: want the console's https://host[:port]", c.PublicURL))
	}
	seen := map[string]bool{}
	for i, iss := range c.Issuers {
		what := fmt.Sprintf("single sign-on issuer %d (%s)", i+1, iss.Name)
		if err := identity.ValidateName("issuer", iss.Name); err != nil {
			errs = append(errs, fmt.Errorf("%s: name: %w", what, err))
		} else if seen[iss.Name] || iss.Name == "callback" {
			errs = append(errs, fmt.Errorf("%s: the name is taken", what))
		}
		seen[iss.Name] = true
		if err := checkIssuerURL(iss.Issuer); err != nil {
			errs = append(errs, fmt.Errorf("%s: issuer: %w", what, err))
		}
		if iss.ClientID == "" {
			errs = append(errs, fmt.Errorf("%s: client_id is required", what))
		}
		if iss.ClientSecret != "" && iss.ClientSecretFile != "" {
			errs = append(errs, fmt.Errorf("%s: client_secret and client_secret_file: give one", what))
		}
		if iss.Tenant != "" {
			if err := identity.ValidateName("tenant", iss.Tenant); err != nil {
				errs = append(errs, fmt.Errorf("%s: tenant: %w", what, err))
			}
		}
		for g, m := range iss.Groups {
			if _, err := iss.groupScope(m); err != nil {
				errs = append(errs, fmt.Errorf("%s: group %q: %w", what, g, err))
			}
		}
	}
	return errors.Join(errs...)
}

// checkIssuerURL accepts https URLs, and http ones on a loopback address
// (an identity provider on the relay's own host).
func checkIssuerURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("%q is not an issuer URL", s)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			return nil
		}
	}
	return fmt.Errorf("%q: want https (http only on a loopback address)", s)
}

// checkEndpoints holds the endpoints of a discovery document that the
// relay itself calls (the token endpoint, the key set) to the issuer's
// rule: https, or http on a loopback address. The document is the
// issuer's to write, a tenant's for a tenant's issuer, and the relay
// calls them for anyone who starts a sign-in: a plain-http URL elsewhere
// would have the relay post to, and read from, services of its own
// network (a cloud metadata address, an internal port).
func checkEndpoints(p *oidc.Provider) error {
	var doc struct {
		JWKS string `json:"jwks_uri"`
	}
	if err := p.Claims(&doc); err != nil {
		return err
	}
	for _, e := range [][2]string{{"token_endpoint", p.Endpoint().TokenURL}, {"jwks_uri", doc.JWKS}} {
		u, err := url.Parse(e[1])
		ok := err == nil && u.Host != "" && u.User == nil
		if ok && u.Scheme != "https" {
			host := u.Hostname()
			ip := net.ParseIP(host)
			ok = u.Scheme == "http" && (host == "localhost" || (ip != nil && ip.IsLoopback()))
		}
		if !ok {
			return fmt.Errorf("%s %q: want https (http only on a loopback address)", e[0], e[1])
		}
	}
	return nil
}

// groupScope parses a group mapping of iss: "vendor", "ROLE@TENANT", or
// for a tenant's issuer "ROLE" (its tenant). A tenant's issuer may not map
// to vendor or to another tenant.
func (iss SSOIssuer) groupScope(m string) (admin.Scope, error) {
	role, tenant, _ := strings.Cut(strings.TrimSpace(m), "@")
	if iss.Tenant != "" {
		if admin.Role(role) == admin.RoleVendor {
			return admin.Scope{}, errors.New("a tenant's issuer cannot grant vendor")
		}
		if tenant == "" {
			tenant = iss.Tenant
		}
		if tenant != iss.Tenant {
			return admin.Scope{}, fmt.Errorf("a tenant's issuer grants only its tenant %q, not %q", iss.Tenant, tenant)
		}
	}
	if admin.Role(role) == admin.RoleVendor && tenant != "" {
		return admin.Scope{}, fmt.Errorf("%q: vendor takes no tenant", m)
	}
	s := admin.Scope{Tenant: tenant, Role: admin.Role(role)}
	if err := s.Validate(); err != nil {
		return admin.Scope{}, fmt.Errorf("%q: want vendor, admin@TENANT or viewer@TENANT: %w", m, err)
	}
	return s, nil
}

// ssoFlow is single sign-on in operation.
type ssoFlow struct {
	redirectURL string
	client      *http.Client
	issuers     []*ssoIssuer
	log         *slog.Logger
	now         func() time.Time
}

// ssoIssuer is an issuer with its secret read and, once discovered, its
// provider.
type ssoIssuer struct {
	SSOIssuer
	secret string

	mu       sync.Mutex // guards the fields below
	provider *oidc.Provider
	verifier *oidc.IDTokenVerifier
	pending  *discovery // the discovery in progress, nil when none
	failed   error      // the last reading's failure, while it is remembered
	failedAt time.Time  // when that reading ended
}

// discovery is one reading of an issuer's discovery document, which every
// sign-in that needs it meanwhile waits for.
type discovery struct {
	done     chan struct{} // closed when the fields below are set
	waiters  int           // sign-ins waiting for it besides the reader; guarded by ssoIssuer.mu
	provider *oidc.Provider
	verifier *oidc.IDTokenVerifier
	err      error
}

// newSSOFlow prepares c (validated) for use; nil when it has no issuers.
// log (nil: discard) is told when an issuer cannot be reached; now (nil:
// time.Now) is the clock.
func newSSOFlow(c SSOConfig, client *http.Client, log *slog.Logger, now func() time.Time) (*ssoFlow, error) {
	if len(c.Issuers) == 0 {
		return nil, nil
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if client == nil {
		client = &http.Client{Timeout: ssoTimeout, Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, TLSHandshakeTimeout: ssoTimeout, ResponseHeaderTimeout: ssoTimeout}}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	f := &ssoFlow{redirectURL: strings.TrimSuffix(c.PublicURL, "/") + ssoCallbackPath, client: client, log: log, now: now}
	var errs []error
	for _, iss := range c.Issuers {
		i := &ssoIssuer{SSOIssuer: iss, secret: iss.ClientSecret}
		if iss.ClientSecretFile != "" {
			b, err := os.ReadFile(iss.ClientSecretFile)
			if err != nil {
				errs = append(errs, fmt.Errorf("single sign-on issuer %s: client secret: %w", iss.Name, err))
			}
			i.secret = strings.TrimSpace(string(b))
		}
		if i.RoleClaim == "" {
			i.RoleClaim = defaultRoleClaim
		}
		if i.TenantClaim == "" {
			i.TenantClaim = defaultTenantClaim
		}
		if i.GroupsClaim == "" {
			i.GroupsClaim = defaultGroupsClaim
		}
		if len(i.Scopes) == 0 {
			i.Scopes = []string{oidc.ScopeProfile, "email"}
		}
		if i.Display == "" {
			i.Display = "Sign in with " + i.Name
		}
		f.issuers = append(f.issuers, i)
	}
	return f, errors.Join(errs...)
}

func (f *ssoFlow) issuer(name string) *ssoIssuer {
	i := slices.IndexFunc(f.issuers, func(x *ssoIssuer) bool { return x.Name == name })
	if i < 0 {
		return nil
	}
	return f.issuers[i]
}

// Limits of single sign-on.
const (
	ssoTimeout      = 10 * time.Second // each request to an issuer
	ssoRetryFailed  = 5 * time.Second  // a failed discovery is not tried again sooner
	ssoStateTTL     = 10 * time.Minute // from start to callback
	ssoCookie       = "__Host-tether_sso"
	ssoCallbackPath = "/login/sso/callback"
	maxNameLen      = 100
)

// discover returns the issuer's provider and token verifier, reading its
// discovery document the first time (and again after a failure). Sign-ins
// that need it while it is read wait for that one reading, each no longer
// than its own request lasts (the one reading it, no longer than the
// reading's ssoTimeout), instead of taking turns: an issuer that does not
// answer holds each of them for at most ssoTimeout, not one ssoTimeout
// per sign-in ahead of it. A reading that failed is remembered for
// ssoRetryFailed: sign-ins meanwhile get its error at once, so that
// however many ask (the start of a sign-in needs no credential), an
// issuer that is down is asked once per ssoRetryFailed, and the warning
// that it cannot be reached is logged once per reading, by discover.
func (i *ssoIssuer) discover(ctx context.Context, f *ssoFlow) (*oidc.Provider, *oidc.IDTokenVerifier, error) {
	i.mu.Lock()
	if i.provider != nil {
		defer i.mu.Unlock()
		return i.provider, i.verifier, nil
	}
	if i.failed != nil && f.now().Sub(i.failedAt) < ssoRetryFailed {
		defer i.mu.Unlock()
		return nil, nil, i.failed
	}
	d, lead := i.pending, i.pending == nil
	if lead {
		d = &discovery{done: make(chan struct{})}
		i.pending = d
	} else {
		d.waiters++
	}
	i.mu.Unlock()
	if lead {
		// The reading serves every sign-in waiting for it, so it is not
		// cut short when this one's request ends; it is bounded alike.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ssoTimeout)
		p, err := oidc.NewProvider(oidc.ClientContext(dctx, f.client), i.Issuer)
		cancel()
		if err == nil {
			err = checkEndpoints(p)
		}
		i.mu.Lock()
		if err != nil {
			d.err = fmt.Errorf("discover issuer %s: %w", i.Issuer, err)
			i.failed, i.failedAt = d.err, f.now()
		} else {
			i.provider, i.verifier = p, p.Verifier(&oidc.Config{ClientID: i.ClientID})
			d.provider, d.verifier = i.provider, i.verifier
			i.failed = nil
		}
		i.pending = nil
		i.mu.Unlock()
		close(d.done)
		if d.err != nil {
			f.log.Warn("single sign-on: identity provider unreachable", "issuer", i.Name, "err", d.err, "retry_after", ssoRetryFailed)
		}
		return d.provider, d.verifier, d.err
	}
	select {
	case <-d.done:
		return d.provider, d.verifier, d.err
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("discover issuer %s: %w", i.Issuer, ctx.Err())
	}
}

func (i *ssoIssuer) oauth2(p *oidc.Provider, redirectURL string) *oauth2.Config {
	return &oauth2.Config{ClientID: i.ClientID, ClientSecret: i.secret, RedirectURL: redirectURL, Endpoint: p.Endpoint(),
		Scopes: append([]string{oidc.ScopeOpenID}, i.Scopes...)}
}

// ssoState is what the browser keeps between start and callback, in a
// cookie only this site can set (__Host-), HttpOnly and Secure: the
// callback's state must match it, and its nonce and PKCE verifier bind
// the answer to this browser.
type ssoState struct {
	Issuer   string `json:"i"`
	State    string `json:"s"`
	Nonce    string `json:"n"`
	Verifier string `json:"v"`
	Next     string `json:"x"`
	Expires  int64  `json:"e"`
}

// maxSSOCookie bounds the state cookie read back.
const maxSSOCookie = 4096

// parseSSOState decodes the state cookie's value.
func parseSSOState(v string, now time.Time) (ssoState, error) {
	var st ssoState
	if len(v) > maxSSOCookie {
		return st, errors.New("state cookie too long")
	}
	b, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil {
		return st, fmt.Errorf("state cookie: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("state cookie: %w", err)
	}
	if st.State == "" || st.Nonce == "" || st.Verifier == "" || st.Issuer == "" {
		return ssoState{}, errors.New("state cookie incomplete")
	}
	if now.Unix() > st.Expires {
		return ssoState{}, errors.New("sign-in took too long")
	}
	return st, nil
}

func randomString() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// ssoStart sends the browser to the issuer to sign in.
func (s *Server) ssoStart(w http.ResponseWriter, req *http.Request) {
	dashHeaders(w)
	noStore(w)
	// A source throttled for failed sign-ins is refused here too: a
	// start needs no credential, but leads to the issuer.
	if e := s.guard.admit(doorSSO, s.guard.source(req)); e != nil {
		setRetryAfter(w, e)
		s.loginPageStatus(w, req, e.Status, "", loginThrottled)
		return
	}
	iss := s.sso.issuer(req.PathValue("issuer"))
	if iss == nil {
		s.loginPageStatus(w, req, http.StatusNotFound, "", "There is no such sign-on.")
		return
	}
	p, _, err := iss.discover(req.Context(), s.sso)
	if err != nil { // logged by discover
		s.loginPageStatus(w, req, http.StatusServiceUnavailable, "", "The identity provider cannot be reached; try again later or use an operator token.")
		return
	}
	next := req.URL.Query().Get("next")
	if !safeNext(next) {
		next = ""
	}
	st := ssoState{Issuer: iss.Name, State: randomString(), Nonce: randomString(), Verifier: oauth2.GenerateVerifier(), Next: next,
		Expires: s.cfg.Now().Add(ssoStateTTL).Unix()}
	b, _ := json.Marshal(st)
	// SameSite=Lax: the browser must send it back on the issuer's
	// redirect, a navigation from another site.
	http.SetCookie(w, &http.Cookie{Name: ssoCookie, Value: base64.RawURLEncoding.EncodeToString(b), Path: "/", MaxAge: int(ssoStateTTL.Seconds()),
		HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode})
	to := iss.oauth2(p, s.sso.redirectURL).AuthCodeURL(st.State, oidc.Nonce(st.Nonce), oauth2.S256ChallengeOption(st.Verifier))
	http.Redirect(w, req, to, http.StatusSeeOther)
}

// ssoCallback finishes a sign-in: it checks the state, exchanges the code
// (with the PKCE verifier), verifies the ID token (issuer, audience,
// expiry, signature, nonce), maps the claims to a scope and opens a
// session.
func (s *Server) ssoCallback(w http.ResponseWriter, req *http.Request) {
	dashHeaders(w)
	noStore(w)
	http.SetCookie(w, &http.Cookie{Name: ssoCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode})
	src := s.guard.source(req)
	if e := s.guard.admit(doorSSO, src); e != nil {
		setRetryAfter(w, e)
		s.loginPageStatus(w, req, e.Status, "", loginThrottled)
		return
	}
	refuse := func(reason string, status int, msg string) {
		if e := s.guard.failed(doorSSO, src, failure{reason: reason, err: apiErrorf(status, CodeUnauthenticated, "%s", msg)}); e.Status == http.StatusTooManyRequests {
			setRetryAfter(w, e)
			status, msg = e.Status, loginThrottled
		}
		s.loginPageStatus(w, req, status, "", msg)
	}
	q := req.URL.Query()
	c, err := req.Cookie(ssoCookie)
	if err != nil {
		refuse(reasonBadState, http.StatusBadRequest, "This sign-in was not started here, or its cookie was lost: start again.")
		return
	}
	st, err := parseSSOState(c.Value, s.cfg.Now())
	if err != nil || subtle.ConstantTimeCompare([]byte(st.State), []byte(q.Get("state"))) != 1 {
		refuse(reasonBadState, http.StatusBadRequest, "This sign-in has expired or was started elsewhere: start again.")
		return
	}
	iss := s.sso.issuer(st.Issuer)
	if iss == nil {
		refuse(reasonBadState, http.StatusBadRequest, "This sign-in names an issuer the console does not know: start again.")
		return
	}
	// An answer that names its issuer (RFC 9207) must name the one the
	// sign-in began with: an answer another issuer gave (a mix-up, an
	// issuer of the attacker's sending the browser on to another one)
	// would send that issuer's code to this one's token endpoint.
	if got, ok := q["iss"]; ok && (len(got) != 1 || got[0] != iss.Issuer) {
		s.log.Info("single sign-on: answer from another issuer refused", "issuer", iss.Name, "iss", clean(strings.Join(got, ","), 256))
		refuse(reasonBadState, http.StatusBadRequest, "This sign-in's answer came from another identity provider than the one it was started with: start again.")
		return
	}
	if e := q.Get("error"); e != "" {
		// The person cancelled or the issuer refused: nothing was tried
		// against the console.
		s.loginPageStatus(w, req, http.StatusUnauthorized, st.Next, "The identity provider did not sign you in ("+clean(e, 64)+").")
		return
	}
	p, verifier, err := iss.discover(req.Context(), s.sso)
	if err != nil { // logged by discover
		s.loginPageStatus(w, req, http.StatusServiceUnavailable, st.Next, "The identity provider cannot be reached; try again later.")
		return
	}
	if _, ok := q["iss"]; !ok && namesItself(p) {
		// The issuer says its answers name it: one that does not was
		// not its.
		s.log.Info("single sign-on: answer without the issuer it names itself with refused", "issuer", iss.Name)
		refuse(reasonBadState, http.StatusBadRequest, "This sign-in's answer came from another identity provider than the one it was started with: start again.")
		return
	}
	ctx, cancel := context.WithTimeout(context.WithValue(req.Context(), oauth2.HTTPClient, s.sso.client), ssoTimeout)
	defer cancel()
	tok, err := iss.oauth2(p, s.sso.redirectURL).Exchange(ctx, q.Get("code"), oauth2.VerifierOption(st.Verifier))
	if err != nil {
		s.log.Info("single sign-on: code exchange refused", "issuer", iss.Name, "err", err)
		refuse(reasonBadIDToken, http.StatusUnauthorized, "The identity provider did not accept this sign-in: start again.")
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	idt, err := verifier.Verify(oidc.ClientContext(ctx, s.sso.client), raw)
	if err == nil && subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(st.Nonce)) != 1 {
		err = errors.New("nonce does not match")
	}
	var claims map[string]any
	if err == nil {
		err = idt.Claims(&claims)
	}
	if err != nil {
		s.log.Info("single sign-on: ID token refused", "issuer", iss.Name, "err", err)
		refuse(reasonBadIDToken, http.StatusUnauthorized, "The identity provider's answer did not verify: start again.")
		return
	}
	subject := idt.Issuer + "#" + idt.Subject
	name := iss.personName(claims, idt.Subject)
	scope, why, err := iss.scopeOf(claims, func(tenant string) (bool, error) {
		_, err := s.adm.Tenant(req.Context(), tenant)
		if errors.Is(err, admin.ErrNotFound) {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		s.loginPageStatus(w, req, http.StatusServiceUnavailable, st.Next, "The console cannot check your access right now; try again later.")
		return
	}
	person := Operator{Name: name, Via: "sso", Tenant: scope.Tenant, Role: scope.Role, Subject: subject}
	if why != "" {
		if e := s.guard.refusedPerson(doorSSO, src, "sso:"+subject); e != nil {
			setRetryAfter(w, e)
			s.loginPageStatus(w, req, e.Status, "", loginThrottled)
			return
		}
		s.adm.As(person.Actor()).RecordRefusal(audit.OperatorLogin, CodeForbidden, iss.Tenant, iss.claimsDetail(claims, map[string]any{
			"issuer": iss.Name, "subject": subject, "name": name, "reason": why}))
		s.loginPageStatus(w, req, http.StatusForbidden, "", "You are signed in at the identity provider, but nothing there gives you access to this console.")
		return
	}
	id, x, err := s.adm.OpenConsoleSession(req.Context(), admin.Credential{Name: name, Scope: scope, Subject: subject, Issuer: iss.Name}, s.cfg.SessionTTL)
	if err != nil {
		s.loginPageStatus(w, req, http.StatusServiceUnavailable, st.Next, "The console cannot open a session right now; try again later.")
		return
	}
	s.adm.For(person.Actor(), scope).Record(audit.OperatorLogin, scope.Tenant, "", "", map[string]any{
		"issuer": iss.Name, "subject": subject, "name": name, "role": string(scope.Role)})
	setSessionCookie(w, id, x.ExpiresAt, s.cfg.SessionTTL)
	// The session cookie is SameSite=Strict, and this answer ends a
	// navigation that began on the issuer's site: the browser would not
	// send the cookie on a redirect from here. The page sends it on from
	// this site instead (dash.js, and a link).
	s.render(w, http.StatusOK, "signedin", "page", dashView{Title: "Signed in", Now: s.cfg.Now(),
		Data: struct{ Next, Name string }{landing(st.Next, person), name}})
}

// sessionValid reports whether a session opened by single sign-on for c
// may go on: the very issuer that granted it (c.Issuer, its name) is
// still configured, at the issuer URL of c.Subject, and, if it is a
// tenant's, for c's tenant. Another configured issuer with the same URL
// does not keep it going: a vendor's issuer and a tenant's may both be at
// one provider (Google, say), and removing the tenant's must end the
// sessions it granted.
func (f *ssoFlow) sessionValid(c admin.Credential) bool {
	if f == nil || c.Issuer == "" {
		return false
	}
	issuerURL, _, ok := strings.Cut(c.Subject, "#") // issuer URLs have no fragment
	i := f.issuer(c.Issuer)
	return ok && i != nil && i.Issuer == issuerURL && (i.Tenant == "" || (c.Scope.Tenant == i.Tenant && !c.Scope.Vendor()))
}

// personName is how the console shows the person: NameClaim, else the
// first of email, preferred_username and name, else the subject.
func (i *ssoIssuer) personName(claims map[string]any, sub string) string {
	keys := []string{"email", "preferred_username", "name"}
	if i.NameClaim != "" {
		keys = []string{i.NameClaim}
	}
	for _, k := range keys {
		if v, ok := claims[k].(string); ok && strings.TrimSpace(v) != "" {
			return clean(v, maxNameLen)
		}
	}
	return clean(sub, maxNameLen)
}

// clean makes a claim's text fit to show and log: printable, at most n
// bytes.
func clean(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return -1
		}
		return r
	}, strings.TrimSpace(s))
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "")
	}
	return s
}

// claimStrings reads a claim that is a string or an array of strings.
func claimStrings(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		out := make([]string, 0, len(v))
		for _, x := range v {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// maxGroups bounds the groups of a person considered.
const maxGroups = 1000

// scopeOf maps a person's claims to a scope, failing closed: it returns
// the scope, or why nothing is granted. tenantExists is asked about every
// tenant a claim names; its error stops the mapping.
func (i *ssoIssuer) scopeOf(claims map[string]any, tenantExists func(string) (bool, error)) (admin.Scope, string, error) {
	var candidates []admin.Scope
	var dropped []string
	if roles := claimStrings(claims[i.RoleClaim]); len(roles) > 0 {
		tenants := claimStrings(claims[i.TenantClaim])
		for _, role := range roles {
			switch admin.Role(role) {
			case admin.RoleVendor:
				switch {
				case i.Tenant != "":
					dropped = append(dropped, "a tenant's issuer cannot grant vendor")
				case len(tenants) > 0:
					dropped = append(dropped, "role vendor with a tenant claim")
				default:
					candidates = append(candidates, admin.Unscoped)
				}
			case admin.RoleAdmin, admin.RoleViewer:
				switch {
				case len(tenants) > 1:
					dropped = append(dropped, "the tenant claim names more than one tenant")
				case len(tenants) == 0 && i.Tenant == "":
					dropped = append(dropped, "role "+role+" without a tenant claim")
				case len(tenants) == 0:
					candidates = append(candidates, admin.Scope{Tenant: i.Tenant, Role: admin.Role(role)})
				case i.Tenant != "" && tenants[0] != i.Tenant:
					dropped = append(dropped, "a tenant's issuer names another tenant")
				default:
					candidates = append(candidates, admin.Scope{Tenant: tenants[0], Role: admin.Role(role)})
				}
			default:
				dropped = append(dropped, "unknown role")
			}
		}
	}
	groups := claimStrings(claims[i.GroupsClaim])
	for _, g := range groups[:min(len(groups), maxGroups)] {
		m, ok := i.Groups[g]
		if !ok {
			continue
		}
		sc, err := i.groupScope(m)
		if err != nil {
			dropped = append(dropped, "group "+g+": "+err.Error())
			continue
		}
		candidates = append(candidates, sc)
	}
	var tenants []string
	vendor, adminOf := false, map[string]bool{}
	for _, c := range candidates {
		if c.Validate() != nil {
			continue
		}
		if c.Vendor() {
			// Belt and braces: the cases above never make one for a
			// tenant's issuer.
			if i.Tenant == "" {
				vendor = true
			}
			continue
		}
		if i.Tenant != "" && c.Tenant != i.Tenant {
			continue
		}
		ok, err := tenantExists(c.Tenant)
		if err != nil {
			return admin.Scope{}, "", err
		}
		if !ok {
			dropped = append(dropped, "no tenant "+c.Tenant)
			continue
		}
		if !slices.Contains(tenants, c.Tenant) {
			tenants = append(tenants, c.Tenant)
		}
		adminOf[c.Tenant] = adminOf[c.Tenant] || c.Role == admin.RoleAdmin
	}
	switch {
	case vendor:
		return admin.Unscoped, "", nil
	case len(tenants) == 1:
		sc := admin.Scope{Tenant: tenants[0], Role: admin.RoleViewer}
		if adminOf[tenants[0]] {
			sc.Role = admin.RoleAdmin
		}
		return sc, "", nil
	case len(tenants) > 1:
		return admin.Scope{}, "the claims name more than one tenant", nil
	case len(dropped) > 0:
		return admin.Scope{}, strings.Join(dropped, "; "), nil
	}
	return admin.Scope{}, "no claim maps to a role", nil
}

// claimsDetail adds to detail what a refused person's claims said about
// their role, for whoever fixes the mapping.
func (i *ssoIssuer) claimsDetail(claims map[string]any, detail map[string]any) map[string]any {
	for _, k := range []string{i.RoleClaim, i.TenantClaim, i.GroupsClaim} {
		if v := claimStrings(claims[k]); len(v) > 0 {
			for j := range v[:min(len(v), 20)] {
				v[j] = clean(v[j], 100)
			}
			detail["claim_"+k] = v[:min(len(v), 20)]
		}
	}
	return detail
}

// namesItself reports whether the issuer's discovery document says that
// its authorization answers carry its issuer URL (RFC 9207).
func namesItself(p *oidc.Provider) bool {
	var m struct {
		Supported bool `json:"authorization_response_iss_parameter_supported"`
	}
	return p.Claims(&m) == nil && m.Supported
}
