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
	"strings"
	"time"

	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/trust"
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
}

// Handler is the admin listener's handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/login", s.login)
	mux.HandleFunc("/logout", s.logout)
	s.routes(mux)
	s.dashboard(mux) // /, /ui/, /static/ and GET /login
	return http.MaxBytesHandler(mux, maxAdminBody)
}

// authenticated wraps h with the admin API's authentication.
func (s *Server) authenticated(h http.Handler) http.Handler {
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

func (s *Server) authenticate(req *http.Request) (Operator, *APIError) {
	if req.TLS != nil && len(req.TLS.PeerCertificates) > 0 {
		id, err := s.adm.VerifyOperatorCertificate(req.TLS.PeerCertificates)
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
		rec, err := s.adm.CheckOperatorToken(req.Context(), strings.TrimSpace(tok))
		if errors.Is(err, admin.ErrOperatorToken) {
			return Operator{}, apiErrorf(http.StatusUnauthorized, CodeUnauthenticated, "%v", err)
		}
		if err != nil {
			return Operator{}, apiErrorf(http.StatusServiceUnavailable, CodeUnavailable, "check operator token: %v", err)
		}
		return Operator{Name: rec.Name, Via: "token"}, nil
	}
	if c, err := req.Cookie(SessionCookie); err == nil {
		x, err := s.adm.ConsoleSession(req.Context(), c.Value)
		if errors.Is(err, admin.ErrNoSession) {
			return Operator{}, apiErrorf(http.StatusUnauthorized, CodeUnauthenticated, "%v: log in again", err)
		}
		if err != nil {
			return Operator{}, apiErrorf(http.StatusServiceUnavailable, CodeUnavailable, "check session: %v", err)
		}
		op := Operator{Name: x.Operator, Via: "session", CSRFToken: x.CSRF}
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			if apiErr := checkCSRF(req, x.CSRF); apiErr != nil {
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
func (s *Server) login(w http.ResponseWriter, req *http.Request) {
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
	now := s.cfg.Now()
	rec, err := s.adm.CheckOperatorToken(req.Context(), strings.TrimSpace(tok))
	if errors.Is(err, admin.ErrOperatorToken) {
		fail(apiErrorf(http.StatusUnauthorized, CodeUnauthenticated, "%v", err))
		return
	}
	if err != nil {
		fail(apiErrorf(http.StatusServiceUnavailable, CodeUnavailable, "check operator token: %v", err))
		return
	}
	ttl := min(s.cfg.SessionTTL, rec.ExpiresAt.Sub(now))
	id, x, err := s.adm.OpenConsoleSession(req.Context(), rec, ttl)
	if err != nil {
		fail(apiErrorf(http.StatusServiceUnavailable, CodeUnavailable, "%v", err))
		return
	}
	s.adm.As(Operator{Name: rec.Name}.Actor()).Record(audit.OperatorLogin, "", "", "", map[string]any{"token": rec.ID})
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: id, Path: "/", Expires: x.ExpiresAt, MaxAge: int(ttl.Seconds()),
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	if form {
		if next == "" || !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
			next = "/"
		}
		http.Redirect(w, req, next, http.StatusSeeOther)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"operator": rec.Name, "expires_at": x.ExpiresAt, "csrf_token": x.CSRF})
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
			s.adm.As(Operator{Name: x.Operator}.Actor()).Record(audit.OperatorLogout, "", "", "", nil)
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

// errorFrom maps an error of an admin.Admin method to an API error.
func errorFrom(err error) *APIError {
	var e *APIError
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, admin.ErrNotFound):
		return &APIError{Status: http.StatusNotFound, Code: CodeNotFound, Message: err.Error()}
	case errors.Is(err, admin.ErrExists):
		return &APIError{Status: http.StatusConflict, Code: CodeConflict, Message: err.Error()}
	case errors.Is(err, admin.ErrInvalid):
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
