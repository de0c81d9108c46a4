package installer

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"

	"golang.org/x/sys/windows/svc"
)

// Run is the service run mode: it runs run under the service control
// manager, cancelling its context when the manager stops the service and
// waiting for it to return. How run ends decides what the manager does:
//
//   - Stopped by the manager: the service reports that it stopped, exit
//     code 0.
//   - run fails on its own: the process exits with status 1 without
//     reporting a stop, which the manager treats as a crash, so that its
//     recovery action (install sets "restart after 5 s") restarts it.
//   - run ends asking not to be restarted (its error's ExitCode() is
//     ExitNoRestart: the agent was refused for good): the service reports
//     that it stopped with service-specific exit code 3, which the manager
//     records (System log event 7024, "terminated with the following
//     service-specific error"; sc query shows SERVICE_EXIT_CODE 3) and
//     takes no recovery action on: recovery actions apply to a service
//     that stops with an error only when its "enable actions for stops
//     with errors" flag (FailureActionsOnNonCrashFailures) is set, and
//     install leaves it off. Run then returns run's error.
//
// Outside the service control manager (from a console) it runs run until
// Ctrl-C.
func Run(l Layout, run func(ctx context.Context) error) error {
	inService, err := svc.IsWindowsService()
	if err != nil {
		return fmt.Errorf("detect the service control manager: %w", err)
	}
	if !inService {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
		defer stop()
		return run(ctx)
	}
	h := &handler{run: run}
	if err := svc.Run(l.Name, h); err != nil {
		return fmt.Errorf("run as service %s: %w", l.Name, err)
	}
	return h.err
}

// handler is the agent's svc.Handler.
type handler struct {
	run func(ctx context.Context) error
	err error // run's error when it ended asking not to be restarted; read after svc.Run returns
}

func (h *handler) Execute(_ []string, req <-chan svc.ChangeRequest, status chan<- svc.Status) (bool, uint32) {
	status <- svc.Status{State: svc.StartPending}
	stop := make(chan struct{})
	var stopOnce sync.Once
	type ending struct {
		how serviceEnd
		err error
	}
	done := make(chan ending, 1)
	go func() {
		how, err := supervise(h.run, stop)
		done <- ending{how, err}
	}()
	status <- svc.Status{State: svc.Running, Accepts: svc.AcceptStop | svc.AcceptShutdown}
	for {
		select {
		case c := <-req:
			switch c.Cmd {
			case svc.Interrogate:
				status <- c.CurrentStatus
			case svc.Stop, svc.Shutdown:
				status <- svc.Status{State: svc.StopPending}
				stopOnce.Do(func() { close(stop) })
			}
		case e := <-done:
			switch e.how {
			case endStopped:
				return false, 0
			case endNoRestart:
				h.err = e.err
				return true, ExitNoRestart
			}
			// Not asked to stop: a failure the manager should see.
			fmt.Fprintf(os.Stderr, "tether-agent: %v\n", e.err)
			os.Exit(1)
		}
	}
}
