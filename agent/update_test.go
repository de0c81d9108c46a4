package agent

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
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

// TestUpdateProbation: a new binary that confirmed itself is on probation.
// A clean stop is not counted; each start after a stop without a clean
// exit is, and the maxUncleanStops-th brings the previous binary back and
// restarts into it, which records the version as failed. One process that
// runs through the probation makes the update final.
func TestUpdateProbation(t *testing.T) {
	u, p := trialUpdater(t, "new binary")
	u.a.cfg.Version = "2.0.0" // this process is the new version
	u.a.cfg.Update.Probation = time.Hour
	p.State = "applied"
	if err := u.savePending(p); err != nil {
		t.Fatal(err)
	}
	u.connected = make(chan struct{})
	close(u.connected)
	var restarts []*RestartError
	u.restart = func(e *RestartError) { restarts = append(restarts, e) }
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond) // bounds the report, which finds no relay
	defer cancel()
	start := func() bool { // a start of the agent: begin, then confirm
		u.begin()
		return u.confirm(ctx)
	}
	state := func(when string) *pending {
		t.Helper()
		got, err := u.loadPending()
		if err != nil || got == nil {
			t.Fatalf("%s: pending update %+v, %v", when, got, err)
		}
		return got
	}

	if !start() {
		t.Fatal("the first start of the new version is not on probation")
	}
	if got := state("first start"); got.State != "probation" || !got.Running || got.Unclean != 0 {
		t.Fatalf("after the first start: %+v; want on probation, running, no unclean stop", got)
	}
	if st := u.state(); st == nil || *st != (UpdateState{Version: "2.0.0", From: "1.0.0", State: "probation", UncleanStopsMax: maxUncleanStops}) {
		t.Fatalf("the status's update after the first start: %+v", st)
	}
	u.stoppedCleanly()
	if got := state("clean stop"); got.Running {
		t.Fatalf("after a clean stop: %+v; want not running", got)
	}
	if !start() || state("start after a clean stop").Unclean != 0 {
		t.Fatalf("the start after a clean stop: %+v; want on probation, no unclean stop counted", state("start"))
	}
	// The process ends without stoppedCleanly: a crash.
	for i := 1; i < maxUncleanStops; i++ {
		if !start() {
			t.Fatalf("start after unclean stop %d: not on probation", i)
		}
		if got := state("unclean stop"); got.Unclean != i || !got.Running || got.State != "probation" {
			t.Fatalf("after unclean stop %d: %+v", i, got)
		}
		if st := u.state(); st == nil || st.UncleanStops != i {
			t.Fatalf("the status's update after unclean stop %d: %+v", i, st)
		}
		if b, _ := os.ReadFile(u.exe); string(b) != "new binary" || len(restarts) != 0 {
			t.Fatalf("after unclean stop %d: binary %q, restarts %v; want the new binary still", i, b, restarts)
		}
	}
	if start() {
		t.Fatalf("start after unclean stop %d: still on probation", maxUncleanStops)
	}
	got := state("rollback")
	if got.State != "rolled_back" || got.Reason != release.ReasonUnhealthy || !strings.Contains(got.Message, "stopped without a clean exit") || got.Running {
		t.Fatalf("after %d unclean stops: %+v; want rolled back for stops without a clean exit", maxUncleanStops, got)
	}
	if len(restarts) != 1 || !strings.Contains(restarts[0].Why, "1.0.0") {
		t.Fatalf("restarts %+v; want one, into 1.0.0", restarts)
	}
	// The previous binary starts, and settles the rollback.
	if st := u.state(); st != nil {
		t.Fatalf("the status's update after the rollback: %+v; want none", st)
	}
	u.a.cfg.Version = "1.0.0"
	stopped, stop := context.WithCancel(context.Background())
	stop()
	u.confirm(stopped)
	if !checkRestored(t, u) {
		t.Fatalf("2.0.0 not recorded as failed: %v", u.failed())
	}
}

// TestUpdateProbationEnds: a process of the new version that runs through
// its probation makes the update final: nothing pending, the binary kept,
// and a stop after it is no longer counted.
func TestUpdateProbationEnds(t *testing.T) {
	u, p := trialUpdater(t, "new binary")
	u.a.cfg.Version = "2.0.0"
	u.a.cfg.Update.Probation = 50 * time.Millisecond
	p.State, p.Running, p.Unclean = "probation", true, maxUncleanStops-2
	if err := u.savePending(p); err != nil {
		t.Fatal(err)
	}
	u.restart = func(e *RestartError) { t.Errorf("restart %+v", e) }
	u.offers = make(chan offerOn)
	u.begin()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		u.run(ctx)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := u.loadPending()
		if err != nil {
			t.Fatal(err)
		}
		if got == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still pending 10 s into a probation of 50 ms: %+v", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if b, _ := os.ReadFile(u.exe); string(b) != "new binary" {
		t.Fatalf("binary after the probation: %q", b)
	}
}

// TestUpdateRefusedOnProbation: an offer while the version runs on
// probation is refused as busy (not final: offered again), saying why,
// and the probation record stays as it was.
func TestUpdateRefusedOnProbation(t *testing.T) {
	u, p := trialUpdater(t, "new binary")
	u.a.cfg.Version = "2.0.0"
	u.a.cfg.Update.Probation = time.Hour
	p.State, p.Running, p.Unclean = "probation", true, 1
	if err := u.savePending(p); err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	u.log = slog.New(slog.NewJSONHandler(&logged, nil))
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // no relay: the report would wait for one
	u.handle(ctx, nil, &protocol.UpdateOffer{ID: "offer-2", Version: "3.0.0"})
	if !strings.Contains(logged.String(), `"reason":"busy"`) || !strings.Contains(logged.String(), "version 2.0.0 is on probation") {
		t.Fatalf("offer during the probation: logged %s; want refused busy, saying 2.0.0 is on probation", logged.String())
	}
	if got, err := u.loadPending(); err != nil || got == nil || *got != *p {
		t.Fatalf("pending after the refused offer: %+v, %v; want %+v", got, err, p)
	}
}

// TestUpdateStartFailureCounted: a new version on probation whose every
// start fails with an error (here its status listener's address is
// taken) is counted as stopping without a clean exit, and the fourth
// start brings the previous binary back and asks to restart into it.
// Before, the mark was set only once the updater's goroutine ran, after
// the listeners: such starts were never counted.
func TestUpdateStartFailureCounted(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	root := newTestRoot(t, "tether.internal", "root")
	exe := filepath.Join(t.TempDir(), "tether-agent")
	if err := os.WriteFile(exe, []byte("new binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe+previousSuffix, []byte("previous binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	a := enrolledWith(t, Config{Services: map[string]Service{}, Logger: slog.New(slog.DiscardHandler), Version: "2.0.0",
		Relays: []string{"127.0.0.1:1"}, StatusListen: busy.Addr().String(), Executable: exe, NoFileWatch: true}, root, root)
	u := &updater{dir: filepath.Join(a.cfg.StateDir, updateDirName)}
	if err := os.MkdirAll(u.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := u.savePending(&pending{ID: "o", From: "1.0.0", To: "2.0.0", State: "probation", Binary: exe, Previous: exe + previousSuffix}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= maxUncleanStops; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := a.Run(ctx)
		cancel()
		var re *RestartError
		if errors.As(err, &re) {
			t.Fatalf("start %d: restart %+v; want the start to fail", i, re)
		}
		p, _ := u.loadPending()
		if p == nil || p.Unclean != i-1 || !p.Running {
			t.Fatalf("after failed start %d: pending %+v; want %d unclean stops counted and the mark set", i, p, i-1)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = a.Run(ctx)
	var re *RestartError
	if !errors.As(err, &re) || !strings.Contains(re.Why, "1.0.0") {
		t.Fatalf("start %d: %v; want a restart into 1.0.0", maxUncleanStops+1, err)
	}
	if b, _ := os.ReadFile(exe); string(b) != "previous binary" {
		t.Fatalf("binary after %d failed starts: %q; want the previous one back", maxUncleanStops, b)
	}
	if p, _ := u.loadPending(); p == nil || p.State != "rolled_back" || !strings.Contains(p.Message, "without a clean exit") {
		t.Fatalf("pending after the rollback: %+v", p)
	}
}
