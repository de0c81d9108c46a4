package admin

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/policy"
)

// Role is what an operator may do.
type Role string

// Roles. A vendor operator is not scoped to a tenant and may do
// everything; tenant administrators and viewers are scoped to one tenant.
const (
	// RoleVendor: every tenant, backend, release, the CA and operators.
	RoleVendor Role = "vendor"
	// RoleAdmin: one tenant's agents, their health and audit, its join
	// tokens, revoking and draining its agents, and lowering its limits.
	RoleAdmin Role = "admin"
	// RoleViewer: one tenant's agents, their health and its audit.
	RoleViewer Role = "viewer"
)

// Scope is what an operator credential may see and do: every tenant (a
// vendor operator) or one tenant with a role.
type Scope struct {
	Tenant string `json:"tenant,omitempty"`
	Role   Role   `json:"role"`
}

// Unscoped is the scope of vendor operators: everything.
var Unscoped = Scope{Role: RoleVendor}

// ErrForbidden: the operator's scope does not allow the action. Objects
// of tenants outside the scope are ErrNotFound instead, so that a scoped
// operator learns nothing of other tenants.
var ErrForbidden = errors.New("forbidden")

// ParseScope makes the scope of a new credential from a tenant and a role
// as an operator gives them: no tenant and no role (or "vendor") is
// Unscoped; a tenant without a role is a viewer of it, the least a
// tenant's person may be.
func ParseScope(tenant, role string) (Scope, error) {
	s := Scope{Tenant: tenant, Role: Role(role)}
	switch {
	case tenant == "" && (role == "" || s.Role == RoleVendor):
		return Unscoped, nil
	case tenant != "" && role == "":
		s.Role = RoleViewer
	}
	return s, s.Validate()
}

// Validate reports whether s is a scope: vendor without a tenant, or
// admin or viewer of a tenant with a valid name.
func (s Scope) Validate() error {
	switch s.Role {
	case RoleVendor:
		if s.Tenant != "" {
			return invalidf("a vendor operator is not scoped to a tenant (got tenant %q)", s.Tenant)
		}
		return nil
	case RoleAdmin, RoleViewer:
		if s.Tenant == "" {
			return invalidf("role %s needs a tenant", s.Role)
		}
		return invalid(identity.ValidateName("tenant", s.Tenant))
	}
	return invalidf("role %q: want vendor, admin or viewer", s.Role)
}

// storedScope reads the scope of a stored credential. Rows written before
// scopes existed have neither tenant nor role: vendor operators, as they
// were. Anything else that is not a valid scope is refused.
func storedScope(tenant, role string) (Scope, error) {
	if tenant == "" && role == "" {
		return Unscoped, nil
	}
	s := Scope{Tenant: tenant, Role: Role(role)}
	if err := s.Validate(); err != nil {
		return Scope{}, fmt.Errorf("stored operator scope: %w", err)
	}
	return s, nil
}

// Vendor reports whether s is unscoped.
func (s Scope) Vendor() bool { return s.Role == RoleVendor && s.Tenant == "" }

// Sees reports whether s may see tenant.
func (s Scope) Sees(tenant string) bool { return s.Vendor() || (s.Tenant != "" && s.Tenant == tenant) }

// Administers reports whether s may change tenant's agents, tokens and
// limits.
func (s Scope) Administers(tenant string) bool {
	return s.Vendor() || (s.Role == RoleAdmin && s.Tenant == tenant)
}

func (s Scope) String() string {
	if s.Vendor() {
		return "vendor"
	}
	return fmt.Sprintf("%s of tenant %s", s.Role, s.Tenant)
}

// ScopeError is a refusal because of the operator's scope. Its message is
// the one the operator sees, the same as for an object that does not
// exist when the object is another tenant's; Reason says, for the audit
// trail, what was refused. It wraps ErrForbidden or ErrNotFound.
type ScopeError struct {
	err    error
	Reason string
}

func (e *ScopeError) Error() string { return e.err.Error() }
func (e *ScopeError) Unwrap() error { return e.err }

// Scope is the scope a's actions are checked against.
func (a *Admin) Scope() Scope { return a.scope }

// vendorOnly refuses what only a vendor operator may do.
func (a *Admin) vendorOnly(what string) error {
	if s := a.scope; !s.Vendor() {
		return &ScopeError{err: Errorf(ErrForbidden, "%s is for vendor operators; this credential is %s", what, s), Reason: what}
	}
	return nil
}

// tenantHidden refuses tenant's object when the scope does not see the
// tenant, with notFound (the message of an object that does not exist).
func (a *Admin) tenantHidden(tenant string, notFound error) error {
	if !a.scope.Sees(tenant) {
		return &ScopeError{err: notFound, Reason: "tenant " + tenant + " is outside the scope"}
	}
	return nil
}

// missing is the refusal of a lookup that found nothing: for a tenant's
// operator, the same refusal (recorded the same way) as of an object of
// another tenant (tenantHidden), so that what exists outside its scope
// cannot be told from what does not exist at all.
func (a *Admin) missing(notFound error) error {
	if a.scope.Vendor() {
		return notFound
	}
	return &ScopeError{err: notFound, Reason: "not found"}
}

// administer refuses a change to tenant's agents, tokens or limits that
// the scope does not allow: another tenant's are not found (notFound), a
// viewer's own are forbidden.
func (a *Admin) administer(tenant, what string, notFound error) error {
	if err := a.tenantHidden(tenant, notFound); err != nil {
		return err
	}
	if s := a.scope; !s.Administers(tenant) {
		return &ScopeError{err: Errorf(ErrForbidden, "%s needs a tenant administrator; this credential is %s", what, s), Reason: what}
	}
	return nil
}

// scopedTenant is the tenant filter of a list for the scope: "" (all)
// becomes the scope's tenant; a scoped operator naming another tenant is
// refused as if it did not exist.
func (a *Admin) scopedTenant(tenant string) (string, error) {
	s := a.scope
	if s.Vendor() {
		return tenant, nil
	}
	if s.Tenant == "" { // the zero Scope, which allows nothing: "" is no filter
		return "", &ScopeError{err: Errorf(ErrForbidden, "this credential allows nothing"), Reason: "no scope"}
	}
	if tenant == "" {
		return s.Tenant, nil
	}
	if err := a.tenantHidden(tenant, notFoundf("no tenant %q", tenant)); err != nil {
		return "", err
	}
	return tenant, nil
}

// lowersOnly checks that new limits only tighten old ones, the bounds a
// tenant administrator works within (the vendor sets them): a limit that
// is set (non-zero) may be lowered but neither raised nor lifted (0 is
// unlimited), and allowed networks may only narrow to networks within
// those allowed. A limit that is not set may be set to anything. The
// burst of stream opens is compared as enforced: under an open_rate, an
// open_burst of 0 is a burst of the rate, not an unset limit.
func lowersOnly(old, l Limits, nets []netip.Prefix) error {
	refuse := func(format string, args ...any) error {
		return &ScopeError{err: Errorf(ErrForbidden, "a tenant administrator may only lower the tenant's limits (the vendor sets the bounds): "+format, args...),
			Reason: "raise a limit"}
	}
	for _, f := range []struct {
		name     string
		old, new float64
	}{
		{"max_agents", float64(old.MaxAgents), float64(l.MaxAgents)},
		{"max_streams", float64(old.MaxStreams), float64(l.MaxStreams)},
		{"open_rate", old.OpenRate, l.OpenRate},
		{"bandwidth", float64(old.Bandwidth), float64(l.Bandwidth)},
	} {
		if f.old > 0 && (f.new == 0 || f.new > f.old) {
			return refuse("%s %v → %v raises or lifts it", f.name, f.old, f.new)
		}
	}
	if old.OpenRate > 0 { // and so l.OpenRate > 0, checked above
		ob, nb := policy.OpenBurst(old.OpenRate, old.OpenBurst), policy.OpenBurst(l.OpenRate, l.OpenBurst)
		if nb > ob {
			return refuse("open_burst %d → %d raises it (an open_burst of 0 is a burst of open_rate)", ob, nb)
		}
	}
	if len(old.CIDRs) == 0 {
		return nil
	}
	if len(nets) == 0 {
		return refuse("cidrs %v → any network lifts them", old.CIDRs)
	}
	oldNets, err := policy.ParseCIDRs(old.CIDRs)
	if err != nil {
		return err
	}
	for _, n := range nets {
		if !slices.ContainsFunc(oldNets, func(o netip.Prefix) bool { return o.Bits() <= n.Bits() && o.Contains(n.Addr()) }) {
			return refuse("%s is not within %v", n, old.CIDRs)
		}
	}
	return nil
}
