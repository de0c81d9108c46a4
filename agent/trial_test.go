package agent

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// runLoneTrial runs the trial of a new binary (cfg.UpdateTrial set) that
// cannot reach its relay, and returns how long its Run took to return on
// its own, failing t if it did not within limit.
func runLoneTrial(t *testing.T, cfg Config, limit time.Duration) time.Duration {
	t.Helper()
	ca := newTestCA(t)
	cfg.Logger = slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.Relays = []string{"127.0.0.1:1"} // nothing listens: the trial never connects
	cfg.Transport = TransportTCP
	cfg.Reconnect = Backoff{Initial: 50 * time.Millisecond, Max: 200 * time.Millisecond}
	cfg.NoFileWatch = true
	cfg.UpdateTrial = filepath.Join(t.TempDir(), "trial-ok")
	cfg.Version = "v2.0.0"
	a := enrolledWith(t, cfg, ca.root, ca.root)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	began := time.Now()
	go func() { done <- a.Run(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the trial's Run: %v", err)
		}
		if _, err := os.Stat(cfg.UpdateTrial); err == nil {
			t.Fatalf("a trial that never connected wrote its marker")
		}
		return time.Since(began)
	case <-time.After(limit):
		cancel()
		<-done
		t.Fatalf("a trial that cannot connect still ran %v after its start (health timeout %v, parent pid %d): nothing ends a trial whose agent is gone, and it runs unlocked as the agent's identity", limit, cfg.Update.HealthTimeout, cfg.TrialParent)
		return 0
	}
}

// TestTrialStopsPastItsHealthTimeout: a trial that never connects stops
// on its own once it has run for its health timeout and as long again,
// by when the agent that started it has given up on it (killed it, or is
// gone itself). It used to run until it connected, for ever if it never
// did.
func TestTrialStopsPastItsHealthTimeout(t *testing.T) {
	hc := 300 * time.Millisecond
	d := runLoneTrial(t, Config{Update: UpdateConfig{HealthTimeout: hc}}, 15*time.Second)
	if d < hc {
		t.Fatalf("the trial stopped %v after its start, before its health timeout %v", d, hc)
	}
}

// TestTrialStopsWhenItsParentIsGone: a trial whose parent agent (the one
// that started it, and holds the state directory's lock) is gone stops
// at once, well within its health timeout.
func TestTrialStopsWhenItsParentIsGone(t *testing.T) {
	parent := exec.Command(os.Args[0], "-test.run=^$")
	if err := parent.Run(); err != nil {
		t.Fatal(err)
	}
	runLoneTrial(t, Config{Update: UpdateConfig{HealthTimeout: time.Minute}, TrialParent: parent.Process.Pid}, 15*time.Second)
}
