package route_test

import (
	"testing"

	"github.com/tetherhq/tether/relay/internal/route"
)

// BenchmarkParseTarget parses the address a backend asks for.
func BenchmarkParseTarget(b *testing.B) {
	for _, addr := range []string{"postgres.acme.tether:5432", "postgres.acme.tether"} {
		b.Run(addr, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if t, err := route.ParseTarget(addr); err != nil || t.Tenant != "acme" {
					b.Fatalf("ParseTarget = %+v, %v", t, err)
				}
			}
		})
	}
}
