package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Binaries are the paths of the binaries built for a test run.
type Binaries struct {
	Relay, Agent, Ctl string
}

// Build builds tether-relay, tether-agent and tetherctl into dir, with the
// race detector when race is set, and returns their paths. It runs from
// the module's packages by import path, so it works from any package
// directory of the module.
func Build(dir string, race bool) (Binaries, error) {
	b := Binaries{
		Relay: filepath.Join(dir, "tether-relay"),
		Agent: filepath.Join(dir, "tether-agent"),
		Ctl:   filepath.Join(dir, "tetherctl"),
	}
	args := []string{"build", "-o", dir}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "github.com/tetherhq/tether/cmd/tether-relay",
		"github.com/tetherhq/tether/cmd/tether-agent", "github.com/tetherhq/tether/cmd/tetherctl")
	cmd := exec.Command("go", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return Binaries{}, fmt.Errorf("build binaries: %w", err)
	}
	return b, nil
}
