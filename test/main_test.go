// Package test holds Tether's end-to-end tests. They build the real
// tether-relay and tether-agent binaries, run them as processes on
// loopback, and put real servers (PostgreSQL, HTTP, TCP) behind the agent.
package test

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/tetherhq/tether/test/internal/e2e"
)

// bins holds the paths of the binaries built for this test run.
var bins struct {
	relay, agent, ctl string
}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if targets := os.Getenv(forwardEnv); targets != "" {
		return runForwarder(targets) // a forwarder process of the benchmarks
	}
	if work := os.Getenv(fleetWorkerEnv); work != "" {
		return runFleetWorker(work) // a fleet worker of BenchmarkFleet
	}
	if role := os.Getenv("FAIRNESS_HELPER"); role != "" {
		return runFairnessHelper(role) // a service or flood of BenchmarkTenantFlood
	}
	dir, err := os.MkdirTemp("", "tether-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	b, err := e2e.Build(dir, os.Getenv("TETHER_E2E_RACE") == "1")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bins.relay, bins.agent, bins.ctl = b.Relay, b.Agent, b.Ctl
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			return 1
		}
	}
	return code
}
