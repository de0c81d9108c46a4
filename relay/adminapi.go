package relay

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/trust"

	"github.com/tetherhq/tether/relay/internal/store"
)

// The admin API: JSON over HTTPS on Config.AdminListen, for tetherctl and
// the dashboard. Every request is authenticated, in this order:
//
//  1. a client certificate (mTLS) from the relay CA naming an operator,
//     spiffe://<td>/operator/<name> (tether-relay operator certificate);
//     a certificate that is presented but is not one is refused outright,
//     so agent and backend certificates never act as operators;
//  2. "Authorization: Bearer <operator token>" (tether-relay operator
//     token create);
//  3. the session cookie set by POST /login, for browsers. With a cookie,
//     requests other than GET and HEAD must also carry the session's CSRF
//     token (header X-CSRF-Token or form field csrf_token) and, when the
//     browser sends one, an Origin of this host.
//
// Paths: /api/v1/… (adminroutes.go), POST /login and POST /logout. The
// rest (/, /ui/…, /static/…, GET /login) is left to the dashboard.

// Operator is who an admin request acts for.
type Operator struct {
	Name string `json:"name"`
	// Via is how the operator authenticated: "certificate", "token" or
	// "session".
	Via string `json:"via"`
	// CSRFToken is the session's token, which forms posted with the
	// session cookie must carry as csrf_token ("" unless Via is
	// "session").
	CSRFToken string `json:"-"`
}

// Actor is how audit records name the operator: "operator:<name>".
func (o Operator) Actor() string { return "operator:" + o.Name }

type operatorKey struct{}

// OperatorFrom returns the operator an admin request was authenticated
// as; ok is false outside the admin API's authentication.
func OperatorFrom(ctx context.Context) (Operator, bool) {
	o, ok := ctx.Value(operatorKey{}).(Operator)
	return o, ok
}

// Limits of the admin API.
const (
	SessionCookie      = "tether_session"
	CSRFHeader         = "X-CSRF-Token"
	CSRFField          = "csrf_token"
	maxAdminBody       = 64 << 10
	maxSessions        = 10000
	adminRequestTimout = 30 * time.Second
)

// session is a browser login, kept in memory: a relay restart logs
// everyone out.
type session struct {
	operator string
	tokenID  string // the operator token it was opened with
	csrf     string
	expires  time.Time
}

type sessionStore struct {
	mu   sync.Mutex // guards byID
	byID map[string]*session
}

func newSessionStore() *sessionStore { return &sessionStore{byID: map[string]*session{}} }

func randomToken() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// open creates a session; it drops expired ones first and refuses when
// maxSessions are open.
func (s *sessionStore) open(operator, tokenID string, ttl time.Duration, now time.Time) (string, *session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, x := range s.byID {
		if !now.Before(x.expires) {
			delete(s.byID, id)
		}
	}
	if len(s.byID) >= maxSessions {
		return "", nil, errors.New("too many open sessions")
	}
	id := randomToken()
	x := &session{operator: operator, tokenID: tokenID, csrf: randomToken(), expires: now.Add(ttl)}
	s.byID[id] = x
	return id, x, nil
}

func (s *sessionStore) get(id string, now time.Time) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	x := s.byID[id]
	if x == nil {
		return nil
	}
	if !now.Before(x.expires) {
		delete(s.byID, id)
		return nil
	}
	return x
}

func (s *sessionStore) close(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.byID[id]
	delete(s.byID, id)
	return ok
}

// adminTLS is the admin listener's TLS configuration: the certificate
// from files when configured (reloaded when they change), else the relay's
// own from its CA.
func (r *Relay) adminTLS() (*tls.Config, error) {
	if r.cfg.AdminCertFile == "" {
		return r.tls.Admin(nil), nil
	}
	cf, err := trust.LoadCertFile(r.cfg.AdminCertFile, r.cfg.AdminKeyFile, r.log, r.cfg.Now)
	if err != nil {
		return nil, fmt.Errorf("admin certificate: %w", err)
	}
	r.adminCert = cf // watched for changes while the relay runs
	return r.tls.Admin(cf), nil
}

// admin returns an Admin on the relay's state whose audit records name
// actor.
func (r *Relay) admin(actor string) *Admin {
	return &Admin{st: r.st, now: r.cfg.Now, audit: r.audit, actor: actor}
}

// adminServer serves the admin API.
type adminServer struct {
	r        *Relay
	sessions *sessionStore
	pages    dashPages // the dashboard's templates (dashboard.go)
}

// adminHandler is the admin listener's handler.
func (r *Relay) adminHandler() http.Handler {
	s := &adminServer{r: r, sessions: newSessionStore()}
	mux := http.NewServeMux()
	mux.HandleFunc("/login", s.login)
	mux.HandleFunc("/logout", s.logout)
	s.routes(mux)
	s.dashboard(mux) // /, /ui/, /static/ and GET /login
	return http.MaxBytesHandler(mux, maxAdminBody)
}

// authenticated wraps h with the admin API's authentication.
func (s *adminServer) authenticated(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		op, apiErr := s.authenticate(req)
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

func (s *adminServer) authenticate(req *http.Request) (Operator, *APIError) {
	now := s.r.cfg.Now()
	if req.TLS != nil && len(req.TLS.PeerCertificates) > 0 {
		id, err := s.r.st.auth.VerifyOperator(req.TLS.PeerCertificates, now)
		if err != nil {
			return Operator{}, apiErrorf(http.StatusUnauthorized, CodeUnauthenticated, "client certificate refused: %v", err)
		}
		return Operator{Name: id.Name, Via: "certificate"}, nil
	}
	if h := req.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return Operator{}, apiErrorf(http.StatusUnauthorized, CodeUnauthenticated, `the Authorization header must be "Bearer <operator token>"`)
		}
		rec, err := checkOperatorToken(req.Context(), s.r.st.store, strings.TrimSpace(tok), now)
		if errors.Is(err, errOperatorToken) {
			return Operator{}, apiErrorf(http.StatusUnauthorized, CodeUnauthenticated, "%v", err)
		}
		if err != nil {
			return Operator{}, apiErrorf(http.StatusServiceUnavailable, CodeUnavailable, "check operator token: %v", err)
		}
		return Operator{Name: rec.Name, Via: "token"}, nil
	}
	if c, err := req.Cookie(SessionCookie); err == nil {
		x := s.sessions.get(c.Value, now)
		if x == nil {
			return Operator{}, apiErrorf(http.StatusUnauthorized, CodeUnauthenticated, "session expired or unknown: log in again")
		}
		// A session lives no longer than the token it was opened with.
		t, err := s.r.st.store.OperatorToken(req.Context(), x.tokenID)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return Operator{}, apiErrorf(http.StatusServiceUnavailable, CodeUnavailable, "check session: %v", err)
		}
		if err != nil || !t.RevokedAt.IsZero() || !now.Before(t.ExpiresAt) {
			s.sessions.close(c.Value)
			return Operator{}, apiErrorf(http.StatusUnauthorized, CodeUnauthenticated, "the operator token of this session was revoked or expired: log in again")
		}
		op := Operator{Name: x.operator, Via: "session", CSRFToken: x.csrf}
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			if apiErr := checkCSRF(req, x.csrf); apiErr != nil {
				return Operator{}, apiErr
			}
		}
		return op, nil
	}
	return Operator{}, apiErrorf(http.StatusUnauthorized, CodeUnauthenticated, "authentication required: an operator token (Authorization: Bearer), an operator client certificate or a session")
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
// form field "token" or JSON {"token": "…"}. Form posts are redirected
// (303) to "next" (a local path, default "/") or, on failure, to
// "/login?error=1"; JSON posts get JSON.
func (s *adminServer) login(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		methodNotAllowed(w, http.MethodPost)
		return
	}
	form := isForm(req)
	fail := func(e *APIError) {
		if form {
			http.Redirect(w, req, "/login?error=1", http.StatusSeeOther)
			return
		}
		writeError(w, e)
	}
	if !sameOrigin(req) {
		fail(apiErrorf(http.StatusForbidden, CodeForbidden, "cross-origin login refused"))
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
	now := s.r.cfg.Now()
	rec, err := checkOperatorToken(req.Context(), s.r.st.store, strings.TrimSpace(tok), now)
	if errors.Is(err, errOperatorToken) {
		fail(apiErrorf(http.StatusUnauthorized, CodeUnauthenticated, "%v", err))
		return
	}
	if err != nil {
		fail(apiErrorf(http.StatusServiceUnavailable, CodeUnavailable, "check operator token: %v", err))
		return
	}
	ttl := min(s.r.cfg.AdminSessionTTL, rec.ExpiresAt.Sub(now))
	id, x, err := s.sessions.open(rec.Name, rec.ID, ttl, now)
	if err != nil {
		fail(apiErrorf(http.StatusServiceUnavailable, CodeUnavailable, "%v", err))
		return
	}
	s.r.admin(Operator{Name: rec.Name}.Actor()).record(audit.OperatorLogin, "", "", "", map[string]any{"token": rec.ID})
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: id, Path: "/", Expires: x.expires, MaxAge: int(ttl.Seconds()),
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	if form {
		if next == "" || !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
			next = "/"
		}
		http.Redirect(w, req, next, http.StatusSeeOther)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"operator": rec.Name, "expires_at": x.expires, "csrf_token": x.csrf})
}

// logout ends the session of the request's cookie. Form posts are
// redirected to /login.
func (s *adminServer) logout(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		methodNotAllowed(w, http.MethodPost)
		return
	}
	if !sameOrigin(req) {
		writeError(w, apiErrorf(http.StatusForbidden, CodeForbidden, "cross-origin logout refused"))
		return
	}
	if c, err := req.Cookie(SessionCookie); err == nil {
		if x := s.sessions.get(c.Value, s.r.cfg.Now()); x != nil {
			s.sessions.close(c.Value)
			s.r.admin(Operator{Name: x.operator}.Actor()).record(audit.OperatorLogout, "", "", "", nil)
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
	CodeForbidden        = "forbidden"          // 403: CSRF or origin check failed
	CodeNotFound         = "not_found"          // 404: no such tenant, agent, token, backend or path
	CodeMethodNotAllowed = "method_not_allowed" // 405
	CodeConflict         = "conflict"           // 409: exists already
	CodeTooLarge         = "too_large"          // 413: body over 64 KiB
	CodeUnsupportedMedia = "unsupported_media"  // 415: body is not JSON
	CodeInternal         = "internal"           // 500
	CodeUnavailable      = "unavailable"        // 503: store unreachable, timeout, too many sessions
)

// APIError is the body of every admin API error: {"error": {...}}.
type APIError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *APIError) Error() string { return e.Code + ": " + e.Message }

func apiErrorf(status int, code, format string, args ...any) *APIError {
	return &APIError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// errorFrom maps an error of an Admin method to an API error.
func errorFrom(err error) *APIError {
	var e *APIError
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, ErrNotFound):
		return &APIError{Status: http.StatusNotFound, Code: CodeNotFound, Message: err.Error()}
	case errors.Is(err, ErrExists):
		return &APIError{Status: http.StatusConflict, Code: CodeConflict, Message: err.Error()}
	case errors.Is(err, ErrInvalid):
		return &APIError{Status: http.StatusBadRequest, Code: CodeBadRequest, Message: err.Error()}
	case errors.Is(err, context.DeadlineExceeded):
		return &APIError{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "the request timed out"}
	}
	return &APIError{Status: http.StatusInternalServerError, Code: CodeInternal, Message: err.Error()}
}

func writeError(w http.ResponseWriter, e *APIError) {
	writeJSON(w, e.Status, map[string]*APIError{"error": e})
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
		return apiErrorf(http.StatusBadRequest, CodeBadRequest, "request body: %v", err)
	}
	if dec.More() {
		return apiErrorf(http.StatusBadRequest, CodeBadRequest, "request body: more than one JSON value")
	}
	return nil
}
