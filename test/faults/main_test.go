//go:build linux

// Package faults is Tether's fault suite: the real tether-relay and
// tether-agent, with real services behind the agent, on a network path
// that loses, delays, reorders and corrupts packets, drops everything, or
// blocks UDP, between network namespaces (netns_test.go) joined by an
// impairing router (router_test.go). It needs root; where network
// namespaces cannot be made, every test skips saying why.
package faults

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/tetherhq/tether/test/internal/e2e"
)

// bins are the binaries built for this run.
var bins e2e.Binaries

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	netnsUnavailable = probeNetns()
	if netnsUnavailable == "" {
		dir, err := os.MkdirTemp("", "tether-faults-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		if bins, err = e2e.Build(dir, os.Getenv("TETHER_E2E_RACE") == "1"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			return 1
		}
	}
	return code
}
