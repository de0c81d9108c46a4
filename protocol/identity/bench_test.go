package identity_test

// Microbenchmarks of identity parsing and certificate checks done on every
// agent handshake. scripts/bench/micro runs them and compares two revisions
// with benchstat.

import (
	"crypto/tls"
	"testing"

	"github.com/tetherhq/tether/protocol/identity"
)

var benchAgent = identity.Agent{TrustDomain: td, Tenant: "acme", ID: "k3n5q7s9u2w4y6a8"}

// BenchmarkParseAgent parses an agent's SPIFFE ID from its string form.
func BenchmarkParseAgent(b *testing.B) {
	s := benchAgent.String()
	b.ReportAllocs()
	for b.Loop() {
		a, err := identity.ParseAgent(s)
		if err != nil || a != benchAgent {
			b.Fatalf("ParseAgent = %+v, %v", a, err)
		}
	}
}

// BenchmarkAgentFromCertificate extracts the identity from a verified agent
// certificate, as the relay does for every agent session.
func BenchmarkAgentFromCertificate(b *testing.B) {
	ca := newRoot(b, caTemplate(b, td))
	cert, _ := ca.issue(b, agentTemplate(b, benchAgent))
	b.ReportAllocs()
	for b.Loop() {
		a, err := identity.AgentFromCertificate(cert, td)
		if err != nil || a != benchAgent {
			b.Fatalf("AgentFromCertificate = %+v, %v", a, err)
		}
	}
}

// BenchmarkVerifyRelay is the agent's check of the relay's chain on every
// connection: signed by the tenant CA (directly, or through an
// intermediate) and carrying the relay's SPIFFE ID.
func BenchmarkVerifyRelay(b *testing.B) {
	p := newPKI(b)
	roots := pool(p.ca.cert)
	for _, tc := range []struct {
		name string
		cs   tls.ConnectionState
	}{
		{"leaf", state(p.relay)},
		{"intermediate", state(p.interRelay, p.inter.cert)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := identity.VerifyRelay(tc.cs, roots, td, epoch); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
