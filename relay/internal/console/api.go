package console

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// The admin API: JSON over HTTPS on Config.Listen, for tetherctl and
// the dashboard. Every request is authenticated, in this order:
//
//  1. a client certificate (mTLS) from the relay CA naming an operator,
//     spiffe://<td>/operator/<name> (tether-relay operator certificate),
//     recorded at issue and not revoked; a certificate that is presented
//     but is not one is refused outright, so agent and backend
//     certificates never act as operators;
//  2. "Authorization: Bearer <operator token>" (tether-relay operator
//     token create);
//  3. the session cookie set by POST /login or single sign-on (sso.go),
//     for browsers.
//
// Requests other than GET and HEAD from a browser (a session cookie, or a
// certificate with an Origin or Sec-Fetch-Site header) must come from this
// origin; with a cookie they must also carry the session's CSRF token
// (header X-CSRF-Token or form field csrf_token).
//
// Failed authentication is throttled per source network and per claimed
// identity (authlimit.go): after a burst, a source is refused with 429
// and Retry-After before its credentials are even looked at.
//
// Paths: /api/v1/… (routes.go, with who may use each: access.go),
// POST /login, POST /logout and the single sign-on paths under
// /login/sso/. The rest (/, /ui/…, /static/…, GET /login) is left to the
// dashboard.

// Operator is who an admin request acts for.
type Operator struct {
	Name string `json:"name"`
	// Via is how the operator authenticated: "certificate", "token",
	// "session" (a browser session opened with a token or a certificate)
	// or "sso" (a browser session opened by single sign-on).
	Via string `json:"via"`
	// Tenant and Role are the operator's scope (admin.Scope).
	Tenant string     `json:"tenant,omitempty"`
	Role   admin.Role `json:"role"`
	// Subject is the person's issuer and subject ("iss#sub") for single
	// sign-on, else "".
	Subject string `json:"subject,omitempty"`
	// CSRFToken is the session's token, which forms posted with the
	// session cookie must carry as csrf_token ("" without a session).
	CSRFToken string `json:"-"`
}

// operatorOf is the operator of an authenticated credential.
func operatorOf(c admin.Credential, via string) Operator {
	return Operator{Name: c.Name, Via: via, Tenant: c.Scope.Tenant, Role: c.Scope.Role, Subject: c.Subject}
}

// Scope is what the operator may see and do.
func (o Operator) Scope() admin.Scope { return admin.Scope{Tenant: o.Tenant, Role: o.Role} }

// Actor is how audit records name the operator: "operator:<name>", or
// for single sign-on "sso:<issuer>#<subject>", the person's identity that
// never changes.
func (o Operator) Actor() string {
	if o.Subject != "" {
		return "sso:" + o.Subject
	}
	return "operator:" + o.Name
}

// CanChange reports whether the operator may change anything of a
// tenant's (revoke, drain, tokens): a vendor operator or a tenant
// administrator.
func (o Operator) CanChange() bool { return tenantAdmin.allows(o.Scope()) }

// Vendor reports whether the operator is a vendor operator, who sees
// every tenant, backends, releases and the relay's health.
func (o Operator) Vendor() bool { return vendorOnly.allows(o.Scope()) }

type operatorKey struct{}

// OperatorFrom returns the operator an admin request was authenticated
// as; ok is false outside the admin API's authentication.
func OperatorFrom(ctx context.Context) (Operator, bool) {
	o, ok := ctx.Value(operatorKey{}).(Operator)
	return o, ok
}

// Limits of the admin API.
const (
	// SessionCookie names the browser session's cookie. The __Host-
	// prefix makes browsers accept it only from this host, over HTTPS,
	// for path /, without a Domain: a host on a sibling subdomain cannot
	// plant one of its own for the victim to work in.
	SessionCookie      = "__Host-tether_session"
	CSRFHeader         = "X-CSRF-Token"
	CSRFField          = "csrf_token"
	maxAdminBody       = 64 << 10
	adminRequestTimout = 30 * time.Second
)

// Server is the admin listener: the admin API and the dashboard.
type Server struct {
	cfg   Config
	log   *slog.Logger
	adm   *admin.Admin
	ln    net.Listener
	cert  *trust.CertFile // the listener's certificate from files, or nil
	pages dashPages       // the dashboard's templates (dashboard.go)
	guard *authGuard      // throttling and auditing of failed authentication (authlimit.go)
	sso   *ssoFlow        // single sign-on (sso.go), nil when not configured
}

// Handler is the admin listener's handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/login", s.login)
	mux.HandleFunc("/logout", s.logout)
	s.routes(mux)
	s.dashboard(mux) // /, /ui/, /static/ and GET /login
	if s.sso != nil {
		mux.HandleFunc("GET /login/sso/callback", s.ssoCallback)
		mux.HandleFunc("GET /login/sso/{issuer}", s.ssoStart)
	}
	return http.MaxBytesHandler(mux, maxAdminBody)
}

// authenticated wraps h with the admin API's authentication.
func (s *Server) authenticated(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		op, apiErr := s.authenticate(req, doorAPI)
		if apiErr != nil {
			if apiErr.Status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="tether-admin"`)
			}
			writeError(w, apiErr)
			return
		}
		ctx, cancel := context.WithTimeout(context.WithValue(req.Context(), operatorKey{}, op), adminRequestTimout)
		defer cancel()
		h.ServeHTTP(w, req.WithContext(ctx))
	})
}

// authenticate works out who req is from, at door. A source that failed
// too often lately is refused (429) before anything else; every failure
// is counted against the source and the identity claimed, and summed in
// the audit trail.
func (s *Server) authenticate(req *http.Request, door string) (Operator, *APIError) {
	src := s.guard.source(req)
	if e := s.guard.admit(door, src); e != nil {
		return Operator{}, e
	}
	op, fail := s.credential(req)
	if fail != nil {
		return Operator{}, s.guard.failed(door, src, *fail)
	}
	return op, nil
}

// failure is why a credential was refused, with the identity it claimed.
type failure struct {
	reason   string // reasonBadToken and the like
	identity string // "token:<id>", "cert:<serial>" or ""
	err      *APIError
}

// credential checks the credential req carries.
func (s *Server) credential(req *http.Request) (Operator, *failure) {
	if hasCertificate(req) {
		c, f := s.checkCertificate(req)
		if f != nil {
			return Operator{}, f
		}
		// A browser presents its certificate on any site's request: a
		// change must come from this origin.
		if req.Method != http.MethodGet && req.Method != http.MethodHead && !sameOrigin(req) {
			return Operator{}, &failure{err: apiErrorf(http.StatusForbidden, CodeForbidden, "cross-origin request refused")}
		}
		return operatorOf(c, "certificate"), nil
	}
	if h := req.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return Operator{}, &failure{reasonBadToken, "", apiErrorf(http.StatusUnauthorized, CodeUnauthenticated, `the Authorization header must be "Bearer <operator token>"`)}
		}
		c, f := s.checkToken(req.Context(), strings.TrimSpace(tok))
		if f != nil {
			return Operator{}, f
		}
		return operatorOf(c, "token"), nil
	}
	if c, err := req.Cookie(SessionCookie); err == nil {
		x, err := s.adm.ConsoleSession(req.Context(), c.Value)
		if errors.Is(err, admin.ErrNoSession) {
			return Operator{}, &failure{reasonBadSession, "", apiErrorf(http.StatusUnauthorized, CodeUnauthenticated, "%v: log in again", err)}
		}
		if err != nil {
			return Operator{}, &failure{err: apiErrorf(http.StatusServiceUnavailable, CodeUnavailable, "check session: %v", err)}
		}
		via := "session"
		if x.Operator.Subject != "" {
			via = "sso"
			// A sign-on session lasts only while its issuer is configured
			// to grant what it carries.
			if !s.sso.sessionValid(x.Operator) {
				s.adm.CloseConsoleSession(req.Context(), c.Value)
				return Operator{}, &failure{reasonBadSession, "", apiErrorf(http.StatusUnauthorized, CodeUnauthenticated, "%v: its sign-on issuer is no longer configured for it; sign in again", admin.ErrNoSession)}
			}
		}
		op := operatorOf(x.Operator, via)
		op.CSRFToken = x.CSRF
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			if apiErr := checkCSRF(req, x.CSRF); apiErr != nil {
				return Operator{}, &failure{err: apiErr}
			}
		}
		return op, nil
	}
	return Operator{}, &failure{err: apiErrorf(http.StatusUnauthorized, CodeUnauthenticated, "authentication required: an operator token (Authorization: Bearer), an operator client certificate or a session")}
}

// hasCertificate reports whether req came with a client certificate.
func hasCertificate(req *http.Request) bool {
	return req.TLS != nil && len(req.TLS.PeerCertificates) > 0
}

// checkCertificate checks the client certificate of req.
func (s *Server) checkCertificate(req *http.Request) (admin.Credential, *failure) {
	identity := "cert:" + admin.CertificateSerial(req.TLS.PeerCertificates[0])
	c, err := s.adm.VerifyOperatorCertificate(req.Context(), req.TLS.PeerCertificates)
	if errors.Is(err, admin.ErrOperatorCertificate) {
		return admin.Credential{}, &failure{reasonBadCert, identity, apiErrorf(http.StatusUnauthorized, CodeUnauthenticated, "client certificate refused: %v", err)}
	}
	if err != nil {
		return admin.Credential{}, &failure{err: apiErrorf(http.StatusServiceUnavailable, CodeUnavailable, "check operator certificate: %v", err)}
	}
	return c, nil
}

// checkToken checks an operator token.
func (s *Server) checkToken(ctx context.Context, tok string) (admin.Credential, *failure) {
	identity := ""
	if id := admin.OperatorTokenID(tok); id != "" {
		identity = "token:" + id
	}
	c, err := s.adm.CheckOperatorToken(ctx, tok)
	if errors.Is(err, admin.ErrOperatorToken) {
		return admin.Credential{}, &failure{reasonBadToken, identity, apiErrorf(http.StatusUnauthorized, CodeUnauthenticated, "%v", admin.ErrOperatorToken)}
	}
	if err != nil {
		return admin.Credential{}, &failure{err: apiErrorf(http.StatusServiceUnavailable, CodeUnavailable, "check operator token: %v", err)}
	}
	return c, nil
}

// checkCSRF refuses a state-changing request made with a session cookie
// that does not carry the session's CSRF token or comes from another
// origin.
func checkCSRF(req *http.Request, want string) *APIError {
	if !sameOrigin(req) {
		return apiErrorf(http.StatusForbidden, CodeForbidden, "cross-origin request refused")
	}
	got := req.Header.Get(CSRFHeader)
	if got == "" && isForm(req) {
		got = req.PostFormValue(CSRFField)
	}
	if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		return apiErrorf(http.StatusForbidden, CodeForbidden, "missing or wrong CSRF token (header %s or form field %s)", CSRFHeader, CSRFField)
	}
	return nil
}

// sameOrigin reports whether the request's Origin header, if any, names
// this host.
func sameOrigin(req *http.Request) bool {
	o := req.Header.Get("Origin")
	if o == "" {
		return req.Header.Get("Sec-Fetch-Site") != "cross-site"
	}
	u, err := url.Parse(o)
	return err == nil && u.Scheme == "https" && u.Host == req.Host
}

func isForm(req *http.Request) bool {
	mt, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type"))
	return mt == "application/x-www-form-urlencoded" || mt == "multipart/form-data"
}

// login opens a browser session with an operator token, given as the
// form field "token" or JSON {"token": "…"}, or, without a token, with
// the operator certificate the browser presents. Form posts are
// redirected (303) to "next" (a path on this site, safeNext; default "/"
// or the operator's tenant) or, on failure, to "/login?error=1"; JSON
// posts get JSON. A source that failed too often lately gets 429.
func (s *Server) login(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		methodNotAllowed(w, http.MethodPost)
		return
	}
	form := isForm(req)
	fail := func(e *APIError) {
		switch {
		case form && e.Status == http.StatusTooManyRequests:
			setRetryAfter(w, e)
			s.loginPageStatus(w, req, e.Status, "", loginThrottled)
		case form:
			http.Redirect(w, req, "/login?error=1", http.StatusSeeOther)
		default:
			writeError(w, e)
		}
	}
	if !sameOrigin(req) {
		fail(apiErrorf(http.StatusForbidden, CodeForbidden, "cross-origin login refused"))
		return
	}
	src := s.guard.source(req)
	if e := s.guard.admit(doorLogin, src); e != nil {
		fail(e)
		return
	}
	var tok, next string
	if form {
		tok, next = req.PostFormValue("token"), req.PostFormValue("next")
	} else {
		var body struct {
			Token string `json:"token"`
		}
		if e := decodeJSON(req, &body); e != nil {
			fail(e)
			return
		}
		tok = body.Token
	}
	var c admin.Credential
	var f *failure
	if strings.TrimSpace(tok) == "" && hasCertificate(req) {
		c, f = s.checkCertificate(req)
	} else {
		c, f = s.checkToken(req.Context(), strings.TrimSpace(tok))
	}
	if f != nil {
		fail(s.guard.failed(doorLogin, src, *f))
		return
	}
	op := operatorOf(c, "session")
	ttl := min(s.cfg.SessionTTL, c.ExpiresAt.Sub(s.cfg.Now()))
	id, x, err := s.adm.OpenConsoleSession(req.Context(), c, ttl)
	if err != nil {
		fail(apiErrorf(http.StatusServiceUnavailable, CodeUnavailable, "%v", err))
		return
	}
	detail := map[string]any{"role": string(op.Role)}
	if c.TokenID != "" {
		detail["token"] = c.TokenID
	} else {
		detail["certificate"] = c.CertSerial
	}
	s.adm.For(op.Actor(), op.Scope()).Record(audit.OperatorLogin, op.Tenant, "", "", detail)
	setSessionCookie(w, id, x.ExpiresAt, ttl)
	if form {
		http.Redirect(w, req, landing(next, op), http.StatusSeeOther)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"operator": op.Name, "tenant": op.Tenant, "role": op.Role, "expires_at": x.ExpiresAt, "csrf_token": x.CSRF})
}

// landing is where a browser goes after signing in: next when it is a
// path on this site, else the overview, or a tenant-scoped operator's
// tenant.
func landing(next string, op Operator) string {
	if safeNext(next) {
		return next
	}
	if op.Tenant != "" {
		return "/ui/tenants/" + url.PathEscape(op.Tenant)
	}
	return "/"
}

// setSessionCookie gives the browser its session.
func setSessionCookie(w http.ResponseWriter, id string, expires time.Time, ttl time.Duration) {
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: id, Path: "/", Expires: expires, MaxAge: int(ttl.Seconds()),
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
}

// logout ends the session of the request's cookie. Form posts are
// redirected to /login.
func (s *Server) logout(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		methodNotAllowed(w, http.MethodPost)
		return
	}
	if !sameOrigin(req) {
		writeError(w, apiErrorf(http.StatusForbidden, CodeForbidden, "cross-origin logout refused"))
		return
	}
	if c, err := req.Cookie(SessionCookie); err == nil {
		if x, err := s.adm.ConsoleSession(req.Context(), c.Value); err == nil {
			s.adm.CloseConsoleSession(req.Context(), c.Value)
			op := operatorOf(x.Operator, "session")
			var detail map[string]any
			if op.Subject != "" {
				detail = map[string]any{"subject": op.Subject, "name": op.Name}
			}
			s.adm.For(op.Actor(), op.Scope()).Record(audit.OperatorLogout, op.Tenant, "", "", detail)
		}
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	if isForm(req) {
		http.Redirect(w, req, "/login", http.StatusSeeOther)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// Error codes of the admin API: the "code" of every error body.
const (
	CodeBadRequest       = "bad_request"        // 400: malformed body, query or argument
	CodeUnauthenticated  = "unauthenticated"    // 401: no, unknown, expired or revoked credential
	CodeForbidden        = "forbidden"          // 403: CSRF or origin check failed, or the operator's scope does not allow it
	CodeNotFound         = "not_found"          // 404: no such tenant, agent, token, backend or path
	CodeMethodNotAllowed = "method_not_allowed" // 405
	CodeConflict         = "conflict"           // 409: exists already, or still in use
	CodeTooLarge         = "too_large"          // 413: body over 64 KiB
	CodeUnsupportedMedia = "unsupported_media"  // 415: body is not JSON
	CodeRateLimited      = "rate_limited"       // 429: too many failed authentications from this source or for this credential
	CodeInternal         = "internal"           // 500
	CodeUnavailable      = "unavailable"        // 503: store unreachable, timeout, too many sessions
)

// APIError is the body of every admin API error: {"error": {...}}.
type APIError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	// RetryAfter, for 429, is when to try again (the Retry-After header).
	RetryAfter time.Duration `json:"-"`
}

func (e *APIError) Error() string { return e.Code + ": " + e.Message }

func apiErrorf(status int, code, format string, args ...any) *APIError {
	return &APIError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// errorFrom maps an error of an admin.Admin method to an API error.
func errorFrom(err error) *APIError {
	var e *APIError
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, admin.ErrNotFound):
		return &APIError{Status: http.StatusNotFound, Code: CodeNotFound, Message: err.Error()}
	case errors.Is(err, admin.ErrExists), errors.Is(err, admin.ErrInUse):
		return &APIError{Status: http.StatusConflict, Code: CodeConflict, Message: err.Error()}
	case errors.Is(err, admin.ErrForbidden):
		return &APIError{Status: http.StatusForbidden, Code: CodeForbidden, Message: err.Error()}
	case errors.Is(err, admin.ErrInvalid):
		return &APIError{Status: http.StatusBadRequest, Code: CodeBadRequest, Message: err.Error()}
	case errors.Is(err, context.DeadlineExceeded):
		return &APIError{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "the request timed out"}
	}
	return &APIError{Status: http.StatusInternalServerError, Code: CodeInternal, Message: err.Error()}
}

func writeError(w http.ResponseWriter, e *APIError) {
	setRetryAfter(w, e)
	writeJSON(w, e.Status, map[string]*APIError{"error": e})
}

// setRetryAfter sets the Retry-After header of a 429, in whole seconds
// rounded up.
func setRetryAfter(w http.ResponseWriter, e *APIError) {
	if e.Status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", strconv.Itoa(int(max(time.Second, e.RetryAfter+time.Second-1)/time.Second)))
	}
}

func methodNotAllowed(w http.ResponseWriter, allowed ...string) {
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	writeError(w, apiErrorf(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "method not allowed; use %s", strings.Join(allowed, " or ")))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// decodeJSON decodes a JSON request body strictly into v (unknown fields
// are an error); an empty body leaves v as it is.
func decodeJSON(req *http.Request, v any) *APIError {
	if ct := req.Header.Get("Content-Type"); ct != "" {
		if mt, _, _ := mime.ParseMediaType(ct); mt != "application/json" {
			return apiErrorf(http.StatusUnsupportedMediaType, CodeUnsupportedMedia, "request body must be application/json (got %q)", ct)
		}
	}
	dec := json.NewDecoder(req.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	var tooLarge *http.MaxBytesError
	switch {
	case errors.Is(err, io.EOF):
		return nil
	case errors.As(err, &tooLarge):
		return apiErrorf(http.StatusRequestEntityTooLarge, CodeTooLarge, "request body is larger than %d bytes", tooLarge.Limit)
	case err != nil:
		return apiErrorf(http.StatusBadRequest, CodeBadRequest, "request body: %s", jsonProblem(err))
	}
	if dec.More() {
		return apiErrorf(http.StatusBadRequest, CodeBadRequest, "request body: more than one JSON value")
	}
	return nil
}

// jsonProblem says what is wrong with a request body in the API's terms
// (its field names and JSON's kinds of value), not Go's: encoding/json's
// own errors name Go types and struct fields ("cannot unmarshal string
// into Go struct field req.max_streams of type int").
func jsonProblem(err error) string {
	var typ *json.UnmarshalTypeError
	var syn *json.SyntaxError
	switch {
	case errors.As(err, &typ):
		want := "a " + typ.Type.Kind().String()
		switch typ.Type.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
			want = "a number"
		case reflect.String:
			want = "a string"
		case reflect.Bool:
			want = "true or false"
		case reflect.Slice, reflect.Array:
			want = "a list"
		case reflect.Map, reflect.Struct:
			want = "an object"
		}
		if typ.Field == "" {
			return fmt.Sprintf("want %s, got a JSON %s", want, typ.Value)
		}
		return fmt.Sprintf("field %q: want %s, got a JSON %s", typ.Field, want, typ.Value)
	case errors.As(err, &syn):
		return fmt.Sprintf("not valid JSON at byte %d: %s", syn.Offset, strings.TrimPrefix(syn.Error(), "json: "))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "not valid JSON: it ends too soon"
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}
