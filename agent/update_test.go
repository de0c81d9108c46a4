package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/release"
)

// trialUpdater is an updater of an enrolled agent whose binary, at exe,
// is the shell script newBin as just applied by an update from 1.0.0 to
// 2.0.0: the previous binary is at exe.previous and pending.json says
// the trial runs.
func trialUpdater(t *testing.T, newBin string) (*updater, *pending) {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("the fake binary is a shell script")
	}
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	a.cfg.Version = "1.0.0"
	a.cfg.Update.HealthTimeout = time.Minute
	dir := t.TempDir()
	exe := filepath.Join(dir, "tether-agent")
	if err := os.WriteFile(exe, []byte(newBin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe+previousSuffix, []byte("previous binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	u := &updater{a: a, log: slog.New(slog.DiscardHandler), dir: filepath.Join(a.cfg.StateDir, updateDirName), exe: exe,
		restart: func(*RestartError) { t.Error("restart after a trial that did not pass") }}
	if err := os.MkdirAll(u.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	p := &pending{ID: "offer-1", From: "1.0.0", To: "2.0.0", State: "trial", Binary: exe, Previous: exe + previousSuffix}
	if err := u.savePending(p); err != nil {
		t.Fatal(err)
	}
	return u, p
}

// checkRestored checks that the previous binary is back and no update is
// pending, and returns whether version 2.0.0 is recorded as failed.
func checkRestored(t *testing.T, u *updater) bool {
	t.Helper()
	if b, err := os.ReadFile(u.exe); err != nil || string(b) != "previous binary" {
		t.Errorf("binary after the trial: %q, %v; want the previous binary back", b, err)
	}
	if _, err := os.Stat(u.exe + previousSuffix); !os.IsNotExist(err) {
		t.Errorf("%s still there after the rollback: %v", u.exe+previousSuffix, err)
	}
	if p, err := u.loadPending(); p != nil || err != nil {
		t.Errorf("pending update after the trial: %+v, %v", p, err)
	}
	return u.failed()["2.0.0"]
}

// TestUpdateTrialStopped: the agent stopping during the trial of a new
// binary (a service stop, a reboot) puts the previous binary back without
// recording the version as failed, so that a later offer of it is taken.
func TestUpdateTrialStopped(t *testing.T) {
	for _, tc := range []struct {
		name, bin string
	}{
		// The trial child is still trying to connect when the agent stops.
		{name: "child running", bin: "#!/bin/sh\nexec sleep 30\n"},
		// The stop signal reached the child too, which stopped (exit 0,
		// not connected) just before the agent saw its own.
		{name: "child stopped first", bin: "#!/bin/sh\nexit 0\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, p := trialUpdater(t, tc.bin)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			time.AfterFunc(300*time.Millisecond, cancel)
			start := time.Now()
			if u.tryApplied(ctx, nil, p) {
				t.Fatal("a trial cut short by a stop passed")
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("the trial took %v after the stop", d)
			}
			if checkRestored(t, u) {
				t.Errorf("version 2.0.0 recorded as failed after a stop during its trial: %v", u.failed())
			}
			if err := u.target().Check(release.Manifest{Version: "2.0.0", OS: runtime.GOOS, Arch: runtime.GOARCH, Channel: u.a.cfg.Update.Channel, Expires: time.Now().Add(time.Hour)}); err != nil {
				t.Errorf("a later offer of 2.0.0 is refused: %v", err)
			}
		})
	}
}

// TestUpdateTrialFails: a new binary that fails its trial while the agent
// runs on is rolled back and recorded as failed.
func TestUpdateTrialFails(t *testing.T) {
	u, p := trialUpdater(t, "#!/bin/sh\nexit 3\n")
	// Without a relay connection the report of the rollback waits for one
	// until ctx ends; the trial and its grace for a stop end long before.
	ctx, cancel := context.WithTimeout(context.Background(), trialStopGrace+8*time.Second)
	defer cancel()
	if u.tryApplied(ctx, nil, p) {
		t.Fatal("a failing trial passed")
	}
	if !checkRestored(t, u) {
		t.Errorf("version 2.0.0 not recorded as failed after a failed trial: %v", u.failed())
	}
}

// TestRestorePreviousFailureKeepsABinary: when the previous binary cannot
// be put back (a rename refused by the file system or an antivirus lock),
// the new binary is still at the binary's path (on Windows, where it is
// moved aside first, it goes back), so the service still has a binary to
// start, and the previous one is kept.
func TestRestorePreviousFailureKeepsABinary(t *testing.T) {
	u, p := trialUpdater(t, "new binary")
	refused := errors.New("rename refused")
	rename = func(from, to string) error {
		if from == p.Previous {
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: refused}
		}
		return os.Rename(from, to)
	}
	defer func() { rename = os.Rename }()
	err := u.restorePrevious(p)
	if !errors.Is(err, refused) {
		t.Fatalf("restorePrevious: %v; want the refused rename", err)
	}
	if b, err := os.ReadFile(u.exe); err != nil || string(b) != "new binary" {
		t.Errorf("binary after the failed restore: %q, %v; want the new binary still there", b, err)
	}
	if b, err := os.ReadFile(p.Previous); err != nil || string(b) != "previous binary" {
		t.Errorf("previous binary after the failed restore: %q, %v; want it kept", b, err)
	}
}

// TestUpdateInterruptedBeforeVerdict: the agent killed during an update,
// before the trial of the new binary gave its verdict (pending.json still
// says "trial"), starts again on the previous binary. That is no verdict
// on the new one: it is not recorded as failed and is taken when offered
// again, until such stops recur (maxInterruptedTrials).
func TestUpdateInterruptedBeforeVerdict(t *testing.T) {
	u, p := trialUpdater(t, "#!/bin/sh\nexit 0\n")
	offer := release.Manifest{Version: "2.0.0", OS: runtime.GOOS, Arch: runtime.GOARCH, Channel: u.a.cfg.Update.Channel, Expires: time.Now().Add(time.Hour)}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // no relay: the report would wait for one
	for i := 1; i <= maxInterruptedTrials; i++ {
		if i > 1 {
			if err := u.savePending(p); err != nil {
				t.Fatal(err)
			}
		}
		u.confirm(ctx) // the previous binary, 1.0.0, starts
		if got, err := u.loadPending(); got != nil || err != nil {
			t.Fatalf("stop %d: pending update after the start: %+v, %v", i, got, err)
		}
		failed := u.failed()["2.0.0"]
		if i < maxInterruptedTrials {
			if failed {
				t.Fatalf("stop %d before the trial's verdict recorded 2.0.0 as failed: %v", i, u.failed())
			}
			if err := u.target().Check(offer); err != nil {
				t.Fatalf("stop %d: a later offer of 2.0.0 is refused: %v", i, err)
			}
		} else if !failed {
			t.Fatalf("%d stops before the trial's verdict: 2.0.0 not recorded as failed", i)
		}
	}
}
