package agent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLockStateDirRefusesASecondHolder: while a process holds a state
// directory, a second LockStateDir fails at once, naming the directory,
// the lock file and the holder's pid, and leaves the holder's record as it
// was; once the holder lets go, the directory can be locked again.
func TestLockStateDirRefusesASecondHolder(t *testing.T) {
	dir := t.TempDir()
	l, err := LockStateDir(dir, "run")
	if err != nil {
		t.Fatal(err)
	}
	record, _ := os.ReadFile(filepath.Join(dir, StateLockFile))
	if h := parseHolder(record); h.PID != os.Getpid() || h.Command != "run" || h.State != holderRunning {
		t.Fatalf("lock file record %q: want this process, run, running", record)
	}
	for _, cmd := range []string{"run", "enroll"} {
		began := time.Now()
		_, err = LockStateDir(dir, cmd)
		var busy *StateDirBusyError
		if !errors.As(err, &busy) {
			t.Fatalf("%s on a held state directory: %v, want a *StateDirBusyError", cmd, err)
		}
		if d := time.Since(began); d > time.Second {
			t.Fatalf("%s on a held state directory failed after %v, want at once", cmd, d)
		}
		msg := err.Error()
		for _, want := range []string{dir, filepath.Join(dir, StateLockFile), fmt.Sprintf("pid %d", os.Getpid()), "tether-agent run", "Stop th"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: error %q does not say %q", cmd, msg, want)
			}
		}
		if busy.Stopping {
			t.Errorf("%s: holder reported stopping: %v", cmd, err)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(dir, StateLockFile)); string(got) != string(record) {
		t.Fatalf("the refused process changed the lock file: %q, was %q", got, record)
	}
	l.Release()
	l.Release() // idempotent
	l2, err := LockStateDir(dir, "run")
	if err != nil {
		t.Fatalf("lock after the holder let go: %v", err)
	}
	l2.Release()
}

// TestLockStateDirWaitsForAStoppingHolder: a holder that has recorded
// that it is stopping (a restart under way) is waited for, within the
// bound; one that does not let go within it fails the wait, saying so.
func TestLockStateDirWaitsForAStoppingHolder(t *testing.T) {
	dir := t.TempDir()
	l, err := LockStateDir(dir, "service")
	if err != nil {
		t.Fatal(err)
	}
	l.Stopping()
	began := time.Now()
	_, err = lockStateDir(dir, "service", 300*time.Millisecond, 20*time.Millisecond)
	var busy *StateDirBusyError
	if !errors.As(err, &busy) || !busy.Stopping {
		t.Fatalf("lock held by a stopping holder that never lets go: %v, want a *StateDirBusyError, stopping", err)
	}
	if d := time.Since(began); d < 300*time.Millisecond {
		t.Fatalf("gave up on a stopping holder after %v, want a wait of 300ms", d)
	}
	if !strings.Contains(err.Error(), "stopping, but still holding it") {
		t.Fatalf("error %q does not say the holder is stopping", err)
	}

	// The clock starts before the holder's timer: the holder lets go no
	// sooner than 200 ms after began, however late this goroutine runs.
	began = time.Now()
	released := time.AfterFunc(200*time.Millisecond, l.Release)
	defer released.Stop()
	l2, err := lockStateDir(dir, "service", 10*time.Second, 20*time.Millisecond)
	if err != nil {
		t.Fatalf("lock after a stopping holder let go: %v", err)
	}
	defer l2.Release()
	if d := time.Since(began); d < 200*time.Millisecond {
		t.Fatalf("took the lock of a stopping holder after %v, before it let go (200ms)", d)
	}
}

// TestLockStateDirWaitsForAGoneHolder: a lock whose record names a
// process that no longer exists (Windows releases a dead process's locks
// a little after it ends) is waited for rather than refused at once.
func TestLockStateDirWaitsForAGoneHolder(t *testing.T) {
	dir := t.TempDir()
	l, err := LockStateDir(dir, "run")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	gone := exec.Command(os.Args[0], "-test.run=^$")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	l.h.PID = gone.Process.Pid
	if err := l.write(); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	_, err = lockStateDir(dir, "run", 300*time.Millisecond, 20*time.Millisecond)
	if d := time.Since(began); d < 300*time.Millisecond {
		t.Fatalf("gave up on a gone holder after %v, want a wait of 300ms", d)
	}
	var busy *StateDirBusyError
	if !errors.As(err, &busy) || busy.PID != gone.Process.Pid {
		t.Fatalf("lock recorded by a gone process: %v, want a *StateDirBusyError after waiting", err)
	}
	// The holder never said it was stopping: the message must not say so
	// (it used to), but what was found.
	if msg := err.Error(); strings.Contains(msg, "stopping") || !strings.Contains(msg, "does not exist here") {
		t.Fatalf("error for a holder whose process is gone, which never recorded stopping: %q; want it to say the process does not exist here, not that it was stopping", msg)
	}
}

// TestLockStateDirRereadsAnUnreadableRecord: a record that does not parse
// (the holder has just taken the lock and not yet written it, or is
// rewriting it) is read again for a moment before the holder counts as
// unknown; a holder found stopping then is waited for. (A start that read
// the record while it was being written used to fail at once, without
// naming the holder.)
func TestLockStateDirRereadsAnUnreadableRecord(t *testing.T) {
	dir := t.TempDir()
	// A holder that has taken the lock, its record not written yet, marks
	// itself stopping 50 ms later: within the moment (unknownHolderWait)
	// the record is read again. Its timer can run late on a loaded
	// machine; a mark that came after that moment tests nothing, and the
	// case is tried again.
	for attempt := 1; ; attempt++ {
		l, err := LockStateDir(dir, "service")
		if err != nil {
			t.Fatal(err)
		}
		if err := l.f.File().Truncate(0); err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		var markedAfter time.Duration
		stopMarking := runAfter(50*time.Millisecond, func() {
			markedAfter = time.Since(began)
			l.Stopping()
		})
		stopReleasing := runAfter(400*time.Millisecond, l.Release)
		l2, err := lockStateDir(dir, "service", 5*time.Second, 20*time.Millisecond)
		returned := time.Since(began)
		marked, _ := stopMarking(), stopReleasing()
		if err == nil {
			l2.Release()
			break
		}
		l.Release()
		// When the holder was not marked stopping by the time the lock
		// was refused, the mark would have come later still.
		late := returned
		if marked {
			late = markedAfter
		}
		if late >= unknownHolderWait && attempt < 5 {
			t.Logf("attempt %d: the holder was marked stopping %v after the start, past the moment its record is read again (%v): again", attempt, late, unknownHolderWait)
			continue
		}
		t.Fatalf("lock held by a holder whose record was being written, then stopping: %v; want the record read again and the stopping holder waited for", err)
	}

	// A holder whose record never parses is refused, after the moment.
	l, err := LockStateDir(dir, "run")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if _, err := l.f.File().WriteAt([]byte("garbage garbage garbage garbage garbage garbage garbage garbage garbage garbage"), 0); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	_, err = lockStateDir(dir, "run", 5*time.Second, 20*time.Millisecond)
	var busy *StateDirBusyError
	if !errors.As(err, &busy) || busy.PID != 0 || busy.Stopping || busy.Gone {
		t.Fatalf("lock held with a record that never parses: %v; want a *StateDirBusyError for an unknown holder", err)
	}
	if d := time.Since(began); d > 2*time.Second {
		t.Fatalf("an unknown holder was refused after %v; want after a moment", d)
	}
}

// runAfter calls f after d, on a goroutine of its own, unless stopped
// first. stop returns whether f ran, once it has returned.
func runAfter(d time.Duration, f func()) (stop func() bool) {
	cancel, done := make(chan struct{}), make(chan bool, 1)
	go func() {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			f()
			done <- true
		case <-cancel:
			done <- false
		}
	}()
	return func() bool {
		close(cancel)
		return <-done
	}
}

// TestLockStateDirMissing: a state directory that does not exist is not
// enrolled (and is not created).
func TestLockStateDirMissing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nothing")
	if _, err := LockStateDir(dir, "run"); !errors.Is(err, ErrNotEnrolled) {
		t.Fatalf("lock of a missing state directory: %v, want ErrNotEnrolled", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the missing state directory was created: %v", err)
	}
}

// FuzzParseHolder: any lock file content is a holder or an unknown one,
// never a panic, and never a pid out of range or a command or state not
// among the known ones.
func FuzzParseHolder(f *testing.F) {
	f.Add([]byte(`{"pid":123,"host":"h","command":"run","state":"running","since":"2026-01-02T03:04:05Z"}`))
	f.Add([]byte(`{"pid":-1}`))
	f.Add([]byte(`{"pid":99999999999,"command":"rm -rf /"}`))
	f.Add([]byte("\x00\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h := parseHolder(b)
		if h.PID < 0 || h.PID > 1<<31-1 || (h.PID == 0 && h != holder{}) {
			t.Fatalf("holder %+v", h)
		}
		switch h.Command {
		case "", "run", "service", "enroll", "demo":
		default:
			t.Fatalf("command %q", h.Command)
		}
		switch h.State {
		case "", holderRunning, holderStopping:
		default:
			t.Fatalf("state %q", h.State)
		}
		_ = (&StateDirBusyError{Dir: "d", PID: h.PID, Host: h.Host, HolderCommand: h.Command, Since: h.Since}).Error()
	})
}

// TestLockStateDirLinkNotFollowed: an agent.lock that is a symbolic link
// or a hard link to another file (left by a restore, or planted by
// whoever can write the state directory) is refused with an error naming
// it, and the file it leads to is left as it was. (Lock used to follow
// the link, lock the file it leads to, then truncate it and write its
// record over it: the agent's key, or any file the agent's user may
// write.)
func TestLockStateDirLinkNotFollowed(t *testing.T) {
	for _, kind := range []string{"symbolic link", "hard link"} {
		t.Run(strings.ReplaceAll(kind, " ", "_"), func(t *testing.T) {
			dir := t.TempDir()
			victim := filepath.Join(t.TempDir(), "precious")
			const content = "a file the agent must never write\n"
			if err := os.WriteFile(victim, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			link := filepath.Join(dir, StateLockFile)
			var err error
			if kind == "symbolic link" {
				err = os.Symlink(victim, link)
			} else {
				err = os.Link(victim, link)
			}
			if err != nil {
				t.Skipf("%s: %v", kind, err)
			}
			l, err := LockStateDir(dir, "run")
			if err == nil {
				l.Release()
			}
			if got, rerr := os.ReadFile(victim); rerr != nil || string(got) != content {
				t.Fatalf("the file an agent.lock %s leads to: %q, %v after LockStateDir; want it untouched (%q)", kind, got, rerr, content)
			}
			if err == nil || !strings.Contains(err.Error(), link) || !strings.Contains(err.Error(), "remove it") {
				t.Fatalf("LockStateDir with agent.lock a %s: %v; want refused, naming %s and what to do", kind, err, link)
			}
		})
	}
}
