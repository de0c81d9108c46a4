//go:build !windows

package installer

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// Run is the service run mode. Under systemd it runs run until SIGTERM (a
// stop) or SIGINT, cancels its context and waits for it to return; the
// exit status follows run's error, so Restart=on-failure restarts a
// failed agent and not a stopped one.
func Run(_ Layout, run func(ctx context.Context) error) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx)
}
