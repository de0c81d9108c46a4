// Package test holds Tether's end-to-end tests. They build the real
// tether-relay and tether-agent binaries, run them as processes on
// loopback, and put real servers (PostgreSQL, HTTP, TCP) behind the agent.
package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
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
	dir, err := os.MkdirTemp("", "tether-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bins.relay = filepath.Join(dir, "tether-relay")
	bins.agent = filepath.Join(dir, "tether-agent")
	bins.ctl = filepath.Join(dir, "tetherctl")
	args := []string{"build", "-o", dir}
	if os.Getenv("TETHER_E2E_RACE") == "1" {
		args = append(args, "-race")
	}
	args = append(args, "../cmd/tether-relay", "../cmd/tether-agent", "../cmd/tetherctl")
	cmd := exec.Command("go", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		return 1
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
