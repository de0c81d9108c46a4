package policy

import (
	"strings"
	"testing"
)

func TestParseGrant(t *testing.T) {
	for in, want := range map[string]string{
		"acme":           "acme/*",
		"acme/postgres":  "acme/postgres",
		" acme/db ":      "acme/db",
		"*":              "*/*",
		"*/metrics":      "*/metrics",
		"eu-*/db-*":      "eu-*/db-*",
		"acme/*":         "acme/*",
		"*-prod/pg":      "*-prod/pg",
		"a*b/c*":         "a*b/c*",
		"tenant-1/svc-2": "tenant-1/svc-2",
	} {
		g, err := ParseGrant(in)
		if err != nil || g.String() != want {
			t.Errorf("ParseGrant(%q) = %v, %v; want %s", in, g, err, want)
		}
	}
	for _, bad := range []string{"", "/", "acme/", "/db", "Acme/db", "acme/db/x", "acme/**", "a b/c", "acme/[a-z]", "acme/d?", "-x/db", strings.Repeat("a", 64)} {
		if g, err := ParseGrant(bad); err == nil {
			t.Errorf("ParseGrant(%q) = %v, want an error", bad, g)
		}
	}
}

func TestGrantsAllow(t *testing.T) {
	gs, err := ParseGrants([]string{"acme/db", "globex", "*/metrics", "eu-*/pg-*"})
	if err != nil {
		t.Fatal(err)
	}
	for target, want := range map[struct{ Tenant, Service string }]bool{
		{Tenant: "acme", Service: "db"}:         true,
		{Tenant: "acme", Service: "api"}:        false,
		{Tenant: "acme", Service: "db2"}:        false,
		{Tenant: "globex", Service: "anything"}: true,
		{Tenant: "initech", Service: "metrics"}: true,
		{Tenant: "initech", Service: "db"}:      false,
		{Tenant: "eu-west", Service: "pg-main"}: true,
		{Tenant: "eu-west", Service: "db"}:      false,
		{Tenant: "us-east", Service: "pg-main"}: false,
		{Tenant: "acmex", Service: "db"}:        false,
	} {
		if got := Allows(gs, target.Tenant, target.Service); got != want {
			t.Errorf("Allows(%+v) = %v, want %v", target, got, want)
		}
	}
	if Allows(nil, "acme", "db") {
		t.Error("no grants allowed a stream: the policy must be default deny")
	}
}

// AllowsTenant: some service of the tenant is granted.
func TestGrantsAllowTenant(t *testing.T) {
	gs, err := ParseGrants([]string{"acme/db", "globex", "eu-*/pg-*"})
	if err != nil {
		t.Fatal(err)
	}
	for tenant, want := range map[string]bool{"acme": true, "globex": true, "eu-west": true, "initech": false, "acmex": false, "us-east": false} {
		if got := AllowsTenant(gs, tenant); got != want {
			t.Errorf("AllowsTenant(%s) = %v, want %v", tenant, got, want)
		}
	}
	if all, _ := ParseGrants([]string{"*/metrics"}); !AllowsTenant(all, "anyone") {
		t.Error("a grant of a service of every tenant does not cover a tenant")
	}
	if AllowsTenant(nil, "acme") {
		t.Error("no grants covered a tenant")
	}
}
