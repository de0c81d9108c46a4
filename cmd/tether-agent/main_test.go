package main

import (
	"testing"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/installer"
)

// The status the agent exits with when refused for good is the one the
// service definitions treat as "do not restart".
func TestExitRefusedIsTheServiceNoRestartStatus(t *testing.T) {
	if agent.ExitRefused != installer.ExitNoRestart {
		t.Fatalf("agent.ExitRefused is %d but installer.ExitNoRestart (RestartPreventExitStatus=) is %d", agent.ExitRefused, installer.ExitNoRestart)
	}
	var err error = &agent.RefusedError{}
	if ec, ok := err.(interface{ ExitCode() int }); !ok || ec.ExitCode() != installer.ExitNoRestart {
		t.Fatalf("agent.RefusedError does not carry ExitCode() %d for the service run mode", installer.ExitNoRestart)
	}
}
