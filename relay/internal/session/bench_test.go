package session

// Microbenchmarks of the session side's hot paths. scripts/bench/micro
// runs them and compares two revisions with benchstat.

import (
	"fmt"
	"testing"
)

// BenchmarkPick measures choosing an agent connection for a stream
// open: tenant-N has N connections of the one tenant asked for; fleet-N has
// N connections spread over N/2 tenants of two connections each (the usual
// shape: every agent keeps two connections) and asks for one of them.
func BenchmarkPick(b *testing.B) {
	for _, tc := range []struct {
		name             string
		tenants, perTent int
	}{
		{"tenant-1", 1, 1},
		{"tenant-100", 1, 100},
		{"tenant-10000", 1, 10000},
		{"fleet-10000", 5000, 2},
	} {
		b.Run(tc.name, func(b *testing.B) {
			srv := testServer()
			g := srv.set
			for t := range tc.tenants {
				for i := range tc.perTent {
					c := benchConn(srv, fmt.Sprintf("tenant-%d", t), fmt.Sprintf("agent-%d", i))
					c.open.Store(int64(i % 7)) // streams already open, so the least loaded must be found
					g.add(c)
				}
			}
			want := fmt.Sprintf("tenant-%d", tc.tenants/2)
			b.ReportAllocs()
			for b.Loop() {
				if c := g.routes.Pick(want, nil); c == nil || c.Tenant() != want {
					b.Fatalf("pick = %v", c)
				}
			}
		})
	}
}
