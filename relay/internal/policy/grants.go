package policy

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/store"
)

// Grant lets a backend reach the services matching Service of the tenants
// matching Tenant. Each is a name or a pattern with "*" wildcards ("*"
// alone matches every name). A backend reaches nothing it has no grant
// for: the policy is default deny.
type Grant = store.Grant

// ParseGrant parses "tenant/service" or "tenant" (every service of the
// tenant), each part a name or a "*" pattern: "acme/postgres", "acme",
// "acme/*", "*/metrics", "eu-*/db-*".
func ParseGrant(s string) (Grant, error) {
	s = strings.TrimSpace(s)
	tenant, service, ok := strings.Cut(s, "/")
	if !ok {
		service = store.Any
	}
	g := Grant{Tenant: tenant, Service: service}
	if err := validatePattern("tenant", g.Tenant); err != nil {
		return Grant{}, fmt.Errorf("grant %q: %w", s, err)
	}
	if err := validatePattern("service", g.Service); err != nil {
		return Grant{}, fmt.Errorf("grant %q: %w", s, err)
	}
	return g, nil
}

// ParseGrants parses and deduplicates grants, sorted.
func ParseGrants(ss []string) ([]Grant, error) {
	out := make([]Grant, 0, len(ss))
	for _, s := range ss {
		g, err := ParseGrant(s)
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b Grant) int { return strings.Compare(a.String(), b.String()) })
	return slices.Compact(out), nil
}

// validatePattern accepts a name, or a name in which "*" stands for any
// run of characters.
func validatePattern(kind, p string) error {
	if p == store.Any {
		return nil
	}
	if strings.Contains(p, "**") {
		return fmt.Errorf("%s pattern %q: use a single *", kind, p)
	}
	// Each * stands for at least one character of a valid name.
	if err := identity.ValidateName(kind, strings.ReplaceAll(p, "*", "x")); err != nil {
		return err
	}
	return nil
}

// matchName reports whether name matches a grant pattern. Names and
// patterns are validated DNS labels, so path.Match cannot meet a
// malformed pattern or a separator.
func matchName(pattern, name string) bool {
	if pattern == store.Any || pattern == name {
		return true
	}
	if !strings.Contains(pattern, "*") {
		return false
	}
	ok, err := path.Match(pattern, name)
	return err == nil && ok
}

// Allows reports whether any grant lets its holder reach service of
// tenant.
func Allows(gs []Grant, tenant, service string) bool {
	for _, g := range gs {
		if matchName(g.Tenant, tenant) && matchName(g.Service, service) {
			return true
		}
	}
	return false
}

// AllowsTenant reports whether any grant lets its holder reach some
// service of tenant.
func AllowsTenant(gs []Grant, tenant string) bool {
	for _, g := range gs {
		if matchName(g.Tenant, tenant) {
			return true
		}
	}
	return false
}
