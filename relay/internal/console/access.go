package console

import (
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/tetherhq/tether/relay/admin"
)

// Who may use what. Every route of the admin API and every page of the
// dashboard is declared in a table (apiRoutes, dashRoutes) with the access
// it needs; registering a route without one panics, and a test walks both
// tables. A handler is given only an admin.Admin already scoped to the
// request's operator (admin.Admin.For), which checks every object against
// the scope as well: a tenant-scoped operator never sees another tenant's
// objects (they are not found: 404, so their existence is not revealed)
// and is refused what its role does not allow (403). Every such refusal
// is audited (admin.KindOperatorRefused).

// access is who may use a route or page.
type access int

const (
	accessUnset access = iota // not declared: a programming error
	// anyOperator: every authenticated operator (whoami).
	anyOperator
	// viewer: vendor operators and tenant viewers and administrators,
	// who see their own tenant's objects only.
	viewer
	// tenantAdmin: vendor operators and tenant administrators.
	tenantAdmin
	// vendorOnly: operators of every tenant only (backends and their
	// grants, releases and rollouts, the CA, operators, new tenants).
	vendorOnly
)

func (l access) String() string {
	switch l {
	case anyOperator:
		return "any operator"
	case viewer:
		return "viewers"
	case tenantAdmin:
		return "tenant administrators"
	case vendorOnly:
		return "vendor operators"
	}
	return "nobody"
}

// allows reports whether an operator with scope may use a route needing
// l. Objects are checked by admin.Admin.
func (l access) allows(s admin.Scope) bool {
	if s.Validate() != nil {
		return false
	}
	switch l {
	case anyOperator, viewer:
		return true
	case tenantAdmin:
		return s.Vendor() || s.Role == admin.RoleAdmin
	case vendorOnly:
		return s.Vendor()
	}
	return false
}

// apiHandler serves an admin API request with a, scoped to its operator.
// It writes its answer, or returns the error to answer with.
type apiHandler func(w http.ResponseWriter, req *http.Request, a *admin.Admin) error

// apiRoute is one method of one admin API path.
type apiRoute struct {
	method, pattern string
	access          access
	handle          apiHandler
}

// registerAPI registers routes on mux, one handler per path answering 405
// (with Allow) for methods it lacks. It panics on a route without access.
func (s *Server) registerAPI(mux *http.ServeMux, routes []apiRoute) {
	byPattern := map[string][]apiRoute{}
	var order []string
	for _, r := range routes {
		if r.access == accessUnset || r.handle == nil {
			panic(fmt.Sprintf("console: route %s %s declares no access", r.method, r.pattern))
		}
		if _, ok := byPattern[r.pattern]; !ok {
			order = append(order, r.pattern)
		}
		byPattern[r.pattern] = append(byPattern[r.pattern], r)
	}
	for _, pattern := range order {
		rs := byPattern[pattern]
		allowed := make([]string, 0, len(rs))
		for _, r := range rs {
			allowed = append(allowed, r.method)
		}
		slices.Sort(allowed)
		mux.Handle(pattern, s.authenticated(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			method := req.Method
			if method == http.MethodHead {
				method = http.MethodGet
			}
			i := slices.IndexFunc(rs, func(r apiRoute) bool { return r.method == method })
			if i < 0 {
				methodNotAllowed(w, allowed...)
				return
			}
			op, _ := OperatorFrom(req.Context())
			if e := s.checkAccess(req, op, rs[i].access); e != nil {
				writeError(w, e)
				return
			}
			if err := rs[i].handle(w, req, s.adm.For(op.Actor(), op.Scope())); err != nil {
				writeError(w, s.refusal(req, op, err))
			}
		})))
	}
}

// checkAccess refuses, and audits, a request whose operator the route's
// access does not allow.
func (s *Server) checkAccess(req *http.Request, op Operator, need access) *APIError {
	if need.allows(op.Scope()) {
		return nil
	}
	e := apiErrorf(http.StatusForbidden, CodeForbidden, "%s %s is for %s; this credential is %s", req.Method, req.URL.Path, need, op.Scope())
	s.auditRefusal(req, op, e, "needs "+need.String())
	return e
}

// refusal maps err to an API error, auditing it when the operator's scope
// refused it.
func (s *Server) refusal(req *http.Request, op Operator, err error) *APIError {
	e := errorFrom(err)
	var se *admin.ScopeError
	if errors.As(err, &se) {
		s.auditRefusal(req, op, e, se.Reason)
	}
	return e
}

// maxAuditedPath bounds the request path kept in a refusal's audit record.
const maxAuditedPath = 300

// maxSummedPath bounds the request path a sum of refusals names.
const maxSummedPath = 100

// auditRefusal records that op was refused req. The record is the
// operator's tenant's (its administrators see what their people were
// refused) and says only what the operator sent and was answered, never
// what the refused object is, which would tell a tenant about another.
// why is kept for vendor operators in the relay's log. Beyond a burst
// of one operator's refusals (Config.ScopeRefusals), they are summed
// instead: one record per operator and outcome per interval.
func (s *Server) auditRefusal(req *http.Request, op Operator, e *APIError, why string) {
	path := req.URL.RequestURI()
	if !s.guard.scopeRefused(op.Scope().Tenant, op.Actor(), e.Code, req.Method+" "+clean(path, maxSummedPath)) {
		return
	}
	if len(path) > maxAuditedPath {
		path = path[:maxAuditedPath]
	}
	s.adm.For(op.Actor(), op.Scope()).RecordRefusal(admin.KindOperatorRefused, e.Code, op.Scope().Tenant,
		map[string]any{"method": req.Method, "path": path, "status": e.Status, "role": string(op.Role)})
	s.log.Info("operator refused by scope", "actor", op.Actor(), "scope", op.Scope().String(), "method", req.Method, "path", path, "status", e.Status, "why", why)
}
