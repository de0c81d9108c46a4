package installer

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// exitError is an error with an exit status, as the agent's RefusedError.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }
func (e *exitError) ExitCode() int { return e.code }

func TestNoRestart(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain error", errors.New("disk full"), false},
		{"refused", &exitError{ExitNoRestart}, true},
		{"refused, wrapped", fmt.Errorf("run: %w", &exitError{ExitNoRestart}), true},
		{"another status", &exitError{75}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := noRestart(tc.err); got != tc.want {
				t.Errorf("noRestart(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestSupervise(t *testing.T) {
	errFailed := errors.New("listener failed")
	refused := &exitError{ExitNoRestart}
	for _, tc := range []struct {
		name    string
		run     func(context.Context) error
		stop    bool
		want    serviceEnd
		wantErr error
	}{
		{"stopped by the manager", func(ctx context.Context) error { <-ctx.Done(); return nil }, true, endStopped, nil},
		{"refused for good", func(context.Context) error { return refused }, false, endNoRestart, refused},
		{"failed", func(context.Context) error { return errFailed }, false, endFailed, errFailed},
		// Run must not end on its own with no error; if it does, the
		// manager should still learn of it.
		{"ended without error", func(context.Context) error { return nil }, false, endFailed, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stop := make(chan struct{})
			if tc.stop {
				close(stop)
			}
			got, err := supervise(tc.run, stop)
			if got != tc.want || !errors.Is(err, tc.wantErr) {
				t.Errorf("got %v, %v; want %v, %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// The manager's stop cancels run's context, and supervise waits for run to
// return (the agent drains) before it reports.
func TestSuperviseWaitsForRun(t *testing.T) {
	stop := make(chan struct{})
	cancelled, finish := make(chan struct{}), make(chan struct{})
	returned := false
	type result struct {
		how serviceEnd
		err error
	}
	done := make(chan result, 1)
	go func() {
		how, err := supervise(func(ctx context.Context) error {
			<-ctx.Done()
			close(cancelled)
			<-finish
			returned = true
			return nil
		}, stop)
		done <- result{how, err}
	}()
	close(stop)
	<-cancelled
	select {
	case r := <-done:
		t.Fatalf("supervise reported %v before run returned", r.how)
	default:
	}
	close(finish)
	if r := <-done; r.how != endStopped || r.err != nil || !returned {
		t.Fatalf("got %v, %v (run returned: %v); want stopped after run returned", r.how, r.err, returned)
	}
}
