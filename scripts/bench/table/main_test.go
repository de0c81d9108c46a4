package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// parseText parses benchmark output given as a string.
func parseText(t *testing.T, text string) results {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bench.txt")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := parse(path)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Figures from a full run of scripts/bench/run (2026-11-23; medians), one
// line each.
const unpinnedRun = `
BenchmarkTunnel/upload-1/direct-2   	 1000	 100 ns/op	 1818 MB/s
BenchmarkTunnel/upload-1/fwd-2      	 1000	 100 ns/op	 700.9 MB/s	 0.58 agent-cpu-s/GB	 0.68 relay-cpu-s/GB
BenchmarkTunnel/upload-1/quic-2     	 1000	 100 ns/op	 99.4 MB/s	 7.39 agent-cpu-s/GB	 7.29 relay-cpu-s/GB
BenchmarkTunnel/upload-1/tcp-2      	 1000	 100 ns/op	 389.6 MB/s	 1.43 agent-cpu-s/GB	 1.67 relay-cpu-s/GB
BenchmarkTunnel/upload-8/direct-2   	 1000	 100 ns/op	 2590 MB/s
BenchmarkTunnel/upload-8/fwd-2      	 1000	 100 ns/op	 805.8 MB/s
BenchmarkTunnel/upload-8/quic-2     	 1000	 100 ns/op	 105.0 MB/s
BenchmarkTunnel/upload-8/tcp-2      	 1000	 100 ns/op	 461.3 MB/s
BenchmarkTunnel/download-1/direct-2 	 1000	 100 ns/op	 1726 MB/s
BenchmarkTunnel/download-1/fwd-2    	 1000	 100 ns/op	 663.2 MB/s
BenchmarkTunnel/download-1/quic-2   	 1000	 100 ns/op	 101.8 MB/s
BenchmarkTunnel/download-1/tcp-2    	 1000	 100 ns/op	 410.8 MB/s
BenchmarkTunnel/download-8/direct-2 	 1000	 100 ns/op	 2456 MB/s
BenchmarkTunnel/download-8/fwd-2    	 1000	 100 ns/op	 842.3 MB/s
BenchmarkTunnel/download-8/quic-2   	 1000	 100 ns/op	 105.7 MB/s
BenchmarkTunnel/download-8/tcp-2    	 1000	 100 ns/op	 451.3 MB/s
BenchmarkTunnel/first-byte/direct-2 	 2000	 100 ns/op	 36.16 p50-µs
BenchmarkTunnel/first-byte/fwd-2    	 2000	 100 ns/op	 155.0 agent-cpu-µs/conn	 307.3 p50-µs	 160.0 relay-cpu-µs/conn
BenchmarkTunnel/first-byte/quic-2   	 2000	 100 ns/op	 445.0 agent-cpu-µs/conn	 782.9 p50-µs	 535.0 relay-cpu-µs/conn
BenchmarkTunnel/first-byte/tcp-2    	 2000	 100 ns/op	 315.0 agent-cpu-µs/conn	 635.7 p50-µs	 435.0 relay-cpu-µs/conn
`

const pinnedRun = `
BenchmarkTunnel/pingpong-64B/direct 	 1000	 100 ns/op	 21.5 p50-µs	 68.9 p99-µs
BenchmarkTunnel/pingpong-64B/fwd    	 1000	 100 ns/op	 101.6 p50-µs	 265.9 p99-µs
BenchmarkTunnel/pingpong-64B/quic   	 1000	 100 ns/op	 398.9 p50-µs	 823.2 p99-µs
BenchmarkTunnel/pingpong-64B/tcp    	 1000	 100 ns/op	 155.0 p50-µs	 404.0 p99-µs
BenchmarkTunnel/first-byte/direct   	 1000	 100 ns/op	 129.0 p50-µs
BenchmarkTunnel/first-byte/fwd      	 1000	 100 ns/op	 758.5 p50-µs
BenchmarkTunnel/first-byte/quic     	 1000	 100 ns/op	 1387 p50-µs
BenchmarkTunnel/first-byte/tcp      	 1000	 100 ns/op	 1172 p50-µs
BenchmarkTunnel/opens/direct        	 1000	 100 ns/op	 7244 opens/s
BenchmarkTunnel/opens/fwd           	 1000	 100 ns/op	 1713 opens/s
BenchmarkTunnel/opens/quic          	 1000	 100 ns/op	 1202 opens/s
BenchmarkTunnel/opens/tcp           	 1000	 100 ns/op	 1277 opens/s
`

const pgbenchRun = `
BenchmarkPgbench/select/direct-2 	 1	 100 ns/op	 15232 tps	 0.53 latency-ms
BenchmarkPgbench/select/fwd-2    	 1	 100 ns/op	 6188 tps
BenchmarkPgbench/select/quic-2   	 1	 100 ns/op	 4414 tps
BenchmarkPgbench/select/tcp-2    	 1	 100 ns/op	 5850 tps
BenchmarkPgbench/tpcb/direct-2   	 1	 100 ns/op	 2506 tps
BenchmarkPgbench/tpcb/fwd-2      	 1	 100 ns/op	 1087 tps
BenchmarkPgbench/tpcb/quic-2     	 1	 100 ns/op	 654.0 tps
BenchmarkPgbench/tpcb/tcp-2      	 1	 100 ns/op	 806.9 tps
`

// The forwarder table holds the plain chain to Tether-over-TCP's targets
// and says which it misses itself.
func TestRenderHoldsTheChainToTheTargets(t *testing.T) {
	var out strings.Builder
	render(&out, parseText(t, unpinnedRun), parseText(t, pinnedRun), results{}, parseText(t, pgbenchRun))
	text := out.String()
	for _, want := range []string{
		"| upload, 1 stream (MB/s) | 1818 | 700.9 | 0.39× | 389.6 | 0.21× | 0.56× | ≥ 0.30× | yes |",
		"| upload, 8 streams (MB/s) | 2590 | 805.8 | 0.31× | 461.3 | 0.18× | 0.57× | ≥ 1 stream | yes |",
		"| 64 B ping-pong p50, pinned (p50-µs) | 21.5 | 101.6 | +80.1 | 155.0 | +133.5 | +53.4 | + ≤ 60 µs | no |",
		"| 64 B ping-pong p99, pinned (p99-µs) | 68.9 | 265.9 | +197.0 | 404.0 | +335.1 | +138.1 | ≤ 3× own p50 | yes |",
		"| new connection to first byte p50, pinned (p50-µs) | 129.0 | 758.5 | +629.5 | 1172 | +1043 | +413.5 | + ≤ 250 µs | no |",
		"| stream opens, pinned (opens/s) | 7244 | 1713 | 0.24× | 1277 | 0.18× | 0.75× | ≥ 5000/s | no |",
		"| pgbench tpcb (tps) | 2506 | 1087 | 0.43× | 806.9 | 0.32× | 0.74× | ≥ 0.70× | no |",
		// CPU rows have no target.
		"| relay CPU, upload (relay-cpu-s/GB) | – | 0.68 | – | 1.67 | – | 2.46× |  |  |",
		"| agent CPU per new connection (agent-cpu-µs/conn) | – | 155.0 | – | 315.0 | – | 2.03× |  |  |",
		"Two plain forwarders in Tether's place miss 5 of the 10 targets they were held to (last table).",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
}

// Without forwarder runs there is no floor table and no word about it.
func TestRenderWithoutTheChain(t *testing.T) {
	var keep []string
	for line := range strings.SplitSeq(unpinnedRun, "\n") {
		if !strings.Contains(line, "/fwd") {
			keep = append(keep, line)
		}
	}
	var out strings.Builder
	render(&out, parseText(t, strings.Join(keep, "\n")), results{}, results{}, results{})
	if text := out.String(); strings.Contains(text, "plain forwarders") {
		t.Errorf("output speaks of forwarders without their runs:\n%s", text)
	}
}
