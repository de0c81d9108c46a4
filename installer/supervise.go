package installer

import (
	"context"
	"errors"
)

// ExitNoRestart is the exit status with which the agent says that starting
// it again cannot help: a relay refused its identity for good (revoked,
// unknown, certificate expired), and only a new enrolment fixes that. The
// systemd unit names it in RestartPreventExitStatus=; on Windows the
// service stops with it as its service-specific exit code (see Run).
// tether-agent's agent.ExitRefused is the same number.
const ExitNoRestart = 3

// noRestart reports whether err, returned by the agent's run function,
// asks the service manager not to start it again: it carries (wraps) an
// ExitCode method that returns ExitNoRestart.
func noRestart(err error) bool {
	var ec interface{ ExitCode() int }
	return errors.As(err, &ec) && ec.ExitCode() == ExitNoRestart
}

// serviceEnd is how a service run ended, which decides what the service
// reports to its manager.
type serviceEnd int

const (
	endStopped   serviceEnd = iota // the manager stopped it
	endNoRestart                   // run ended on its own asking not to be restarted (noRestart)
	endFailed                      // run ended on its own otherwise: a failure the manager should restart
)

// supervise runs run until it returns on its own or stop is closed; then
// it cancels run's context and waits for run to return. It reports how the
// run ended and run's error.
func supervise(run func(ctx context.Context) error, stop <-chan struct{}) (serviceEnd, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	select {
	case err := <-done:
		if noRestart(err) {
			return endNoRestart, err
		}
		return endFailed, err
	case <-stop:
		cancel()
		return endStopped, <-done
	}
}
