package identity_test

import (
	"crypto/x509"
	"net/url"
	"strings"
	"testing"

	"github.com/tetherhq/tether/protocol/identity"
)

func TestParseAgent(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want identity.Agent
	}{
		{"simple", "spiffe://tether.example/tenant/acme/agent/a1", identity.Agent{TrustDomain: "tether.example", Tenant: "acme", ID: "a1"}},
		{"digits and inner hyphens", "spiffe://td/tenant/0-acme-9/agent/01hzx-3k8q", identity.Agent{TrustDomain: "td", Tenant: "0-acme-9", ID: "01hzx-3k8q"}},
		{"trust domain with dots, hyphens and underscores", "spiffe://prod_eu-1.tether.example/tenant/t/agent/a", identity.Agent{TrustDomain: "prod_eu-1.tether.example", Tenant: "t", ID: "a"}},
		{"longest names", "spiffe://td/tenant/" + strings.Repeat("t", 63) + "/agent/" + strings.Repeat("a", 63),
			identity.Agent{TrustDomain: "td", Tenant: strings.Repeat("t", 63), ID: strings.Repeat("a", 63)}},
		{"one-character names", "spiffe://t/tenant/x/agent/y", identity.Agent{TrustDomain: "t", Tenant: "x", ID: "y"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := identity.ParseAgent(tc.in)
			if err != nil {
				t.Fatalf("ParseAgent(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if s := got.String(); s != tc.in {
				t.Errorf("String got %q, want %q", s, tc.in)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Validate got %v, want nil", err)
			}
		})
	}
}

func TestParseAgentErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
	}{
		{"empty", ""},
		{"not a URL", "://x"},
		{"control character", "spiffe://td/tenant/a\x00/agent/b"},
		{"https scheme", "https://td/tenant/a/agent/b"},
		{"no scheme", "//td/tenant/a/agent/b"},
		{"path only", "/tenant/a/agent/b"},
		{"opaque", "spiffe:td/tenant/a/agent/b"},
		{"user info", "spiffe://user@td/tenant/a/agent/b"},
		{"empty user info", "spiffe://@td/tenant/a/agent/b"},
		{"port", "spiffe://td:443/tenant/a/agent/b"},
		{"empty port", "spiffe://td:/tenant/a/agent/b"},
		{"query", "spiffe://td/tenant/a/agent/b?x=1"},
		{"fragment", "spiffe://td/tenant/a/agent/b#f"},
		{"empty trust domain", "spiffe:///tenant/a/agent/b"},
		{"upper-case trust domain", "spiffe://TD/tenant/a/agent/b"},
		{"IP literal", "spiffe://[::1]/tenant/a/agent/b"},
		{"trust domain too long", "spiffe://" + strings.Repeat("d", 256) + "/tenant/a/agent/b"},
		{"trust domain only", "spiffe://td"},
		{"relay", "spiffe://td/relay"},
		{"tenant only", "spiffe://td/tenant/a"},
		{"extra segment", "spiffe://td/tenant/a/agent/b/c"},
		{"trailing slash", "spiffe://td/tenant/a/agent/b/"},
		{"double slash", "spiffe://td//tenant/a/agent/b"},
		{"wrong keywords", "spiffe://td/tenants/a/agents/b"},
		{"keywords swapped", "spiffe://td/agent/a/tenant/b"},
		{"empty tenant", "spiffe://td/tenant//agent/b"},
		{"empty agent id", "spiffe://td/tenant/a/agent/"},
		{"escaped slash in tenant", "spiffe://td/tenant/a%2Fb/agent/c"},
		{"upper-case tenant", "spiffe://td/tenant/Acme/agent/b"},
		{"underscore in agent id", "spiffe://td/tenant/a/agent/b_c"},
		{"dot in tenant", "spiffe://td/tenant/a.b/agent/c"},
		{"leading hyphen", "spiffe://td/tenant/-a/agent/b"},
		{"trailing hyphen", "spiffe://td/tenant/a/agent/b-"},
		{"tenant too long", "spiffe://td/tenant/" + strings.Repeat("t", 64) + "/agent/b"},
		{"non-ASCII tenant", "spiffe://td/tenant/ä/agent/b"},
		{"escaped non-ASCII tenant", "spiffe://td/tenant/%C3%A4/agent/b"},
		{"bad escape", "spiffe://td/tenant/%zz/agent/b"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := identity.ParseAgent(tc.in)
			if err == nil {
				t.Fatalf("ParseAgent(%q) got %+v, want an error", tc.in, got)
			}
			if got != (identity.Agent{}) {
				t.Errorf("got %+v with the error, want the zero Agent", got)
			}
		})
	}
}

func TestAgentURI(t *testing.T) {
	a := identity.Agent{TrustDomain: "tether.example", Tenant: "acme", ID: "a1"}
	u := a.URI()
	if u.Scheme != "spiffe" || u.Host != "tether.example" || u.Path != "/tenant/acme/agent/a1" {
		t.Errorf("got scheme %q host %q path %q, want spiffe, tether.example, /tenant/acme/agent/a1", u.Scheme, u.Host, u.Path)
	}
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"agent", a.String(), "spiffe://tether.example/tenant/acme/agent/a1"},
		{"relay", identity.RelayURI("tether.example").String(), "spiffe://tether.example/relay"},
		{"trust domain", identity.TrustDomainURI("tether.example").String(), "spiffe://tether.example"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got %q, want %q", tc.got, tc.want)
			}
		})
	}
}

func TestAgentValidate(t *testing.T) {
	tests := []struct {
		name    string
		a       identity.Agent
		wantErr bool
	}{
		{"valid", identity.Agent{TrustDomain: "td", Tenant: "t", ID: "a"}, false},
		{"zero", identity.Agent{}, true},
		{"no trust domain", identity.Agent{Tenant: "t", ID: "a"}, true},
		{"no tenant", identity.Agent{TrustDomain: "td", ID: "a"}, true},
		{"no id", identity.Agent{TrustDomain: "td", Tenant: "t"}, true},
		{"slash in tenant", identity.Agent{TrustDomain: "td", Tenant: "t/agent/x", ID: "a"}, true},
		{"slash in id", identity.Agent{TrustDomain: "td", Tenant: "t", ID: "a/b"}, true},
		{"path in trust domain", identity.Agent{TrustDomain: "td/x", Tenant: "t", ID: "a"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.a.Validate()
			if got := err != nil; got != tc.wantErr {
				t.Errorf("got error %v, want error %v", err, tc.wantErr)
			}
		})
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr bool
	}{
		{"letters", "acme", false},
		{"digits", "123", false},
		{"single character", "a", false},
		{"inner hyphens", "a-b--c", false},
		{"63 characters", strings.Repeat("a", 63), false},
		{"empty", "", true},
		{"64 characters", strings.Repeat("a", 64), true},
		{"single hyphen", "-", true},
		{"leading hyphen", "-a", true},
		{"trailing hyphen", "a-", true},
		{"upper case", "Acme", true},
		{"underscore", "a_b", true},
		{"dot", "a.b", true},
		{"slash", "a/b", true},
		{"space", "a b", true},
		{"NUL", "a\x00", true},
		{"non-ASCII", "café", true},
		{"invalid UTF-8", "a\xff", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := identity.ValidateName("tenant", tc.in)
			if got := err != nil; got != tc.wantErr {
				t.Errorf("ValidateName(%q) got error %v, want error %v", tc.in, err, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "tenant") {
				t.Errorf("got %q, want the kind %q in the message", err, "tenant")
			}
		})
	}
}

func TestValidateTrustDomain(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr bool
	}{
		{"simple", "tether", false},
		{"dotted", "tether.example.com", false},
		{"hyphen and underscore", "a-b_c", false},
		{"255 characters", strings.Repeat("d", 255), false},
		{"empty", "", true},
		{"256 characters", strings.Repeat("d", 256), true},
		{"upper case", "Tether.example", true},
		{"port", "td:443", true},
		{"slash", "td/x", true},
		{"at sign", "u@td", true},
		{"space", "t d", true},
		{"non-ASCII", "tëther", true},
		{"IP literal", "[::1]", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := identity.ValidateTrustDomain(tc.in)
			if got := err != nil; got != tc.wantErr {
				t.Errorf("ValidateTrustDomain(%q) got error %v, want error %v", tc.in, err, tc.wantErr)
			}
		})
	}
}

func TestAgentFromCertificate(t *testing.T) {
	const td = "tether.example"
	ca := newRoot(t, caTemplate(t, td))
	agent := identity.Agent{TrustDomain: td, Tenant: "acme", ID: "a1"}
	other := identity.Agent{TrustDomain: "other.example", Tenant: "acme", ID: "a1"}
	issue := func(uris ...*url.URL) *x509.Certificate {
		c, _ := ca.issue(t, leafTemplate(t, x509.ExtKeyUsageClientAuth, uris...))
		return c
	}
	tests := []struct {
		name    string
		cert    *x509.Certificate
		want    identity.Agent
		wantErr bool
	}{
		{"agent", issue(agent.URI()), agent, false},
		{"no URI SAN", issue(), identity.Agent{}, true},
		{"two URI SANs", issue(agent.URI(), identity.RelayURI(td)), identity.Agent{}, true},
		{"the same URI twice", issue(agent.URI(), agent.URI()), identity.Agent{}, true},
		{"relay", issue(identity.RelayURI(td)), identity.Agent{}, true},
		{"trust domain", issue(identity.TrustDomainURI(td)), identity.Agent{}, true},
		{"other trust domain", issue(other.URI()), identity.Agent{}, true},
		{"not SPIFFE", issue(mustURL(t, "https://tether.example/tenant/acme/agent/a1")), identity.Agent{}, true},
		{"query", issue(mustURL(t, agent.String()+"?x=1")), identity.Agent{}, true},
		// Other spellings of the agent's own ID: no CA of the relay's
		// issues them.
		{"percent-encoded", issue(mustURL(t, "spiffe://tether.example/tenant/%61cme/agent/a1")), identity.Agent{}, true},
		{"empty query", issue(mustURL(t, agent.String()+"?")), identity.Agent{}, true},
		{"invalid tenant", issue(mustURL(t, "spiffe://tether.example/tenant/ACME/agent/a1")), identity.Agent{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := identity.AgentFromCertificate(tc.cert, td)
			if gotErr := err != nil; gotErr != tc.wantErr {
				t.Fatalf("got %+v, %v, want error %v", got, err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
