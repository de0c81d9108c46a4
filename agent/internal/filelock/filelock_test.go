package filelock

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// holdEnv makes the test binary a child that locks the file it names,
// says "locked" on stdout, and waits for its standard input to close.
const holdEnv = "FILELOCK_TEST_HOLD"

// execEnv makes the test binary a child that locks the file it names and
// then execs itself as a holdEnv child of the same file (execChild).
const execEnv = "FILELOCK_TEST_EXEC"

func TestMain(m *testing.M) {
	if path := os.Getenv(execEnv); path != "" {
		if _, err := Lock(path); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		execChild(path)
		os.Exit(1)
	}
	if path := os.Getenv(holdEnv); path != "" {
		if _, err := Lock(path); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("locked")
		os.Stdin.Read(make([]byte, 1))
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

func skipWithoutLocks(t *testing.T) {
	switch runtime.GOOS {
	case "js", "wasip1", "plan9":
		t.Skip("no file locks here (lock_other.go)")
	}
}

// TestLockExclusive: a second Lock of a locked file fails with ErrLocked,
// from this process as from another, and succeeds once the holder lets go.
func TestLockExclusive(t *testing.T) {
	skipWithoutLocks(t)
	path := filepath.Join(t.TempDir(), "x.lock")
	l, err := Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Lock(path); !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock in this process: %v, want ErrLocked", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdEnv+"="+path)
	got, err := cmd.Output()
	if err == nil || !strings.Contains(string(got), ErrLocked.Error()) {
		t.Fatalf("a lock from another process while held: %q, %v; want refused", got, err)
	}
	l.Unlock()
	l2, err := Lock(path)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	l2.Unlock()
}

// holder starts a child process that takes the lock on path and returns
// it once it holds it; closing its stdin ends it.
func holder(t *testing.T, path string) (*exec.Cmd, func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdEnv+"="+path)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "locked\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child holder: %q, %v", line, err)
	}
	return cmd, func() { in.Close() }
}

// TestLockGoesWithTheProcess: a process killed while it holds the lock
// (SIGKILL: no unlock) leaves the file unlocked.
func TestLockGoesWithTheProcess(t *testing.T) {
	skipWithoutLocks(t)
	path := filepath.Join(t.TempDir(), "x.lock")
	cmd, _ := holder(t, path)
	if _, err := Lock(path); !errors.Is(err, ErrLocked) {
		t.Fatalf("lock while a child holds it: %v, want ErrLocked", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	l, err := Lock(path)
	if err != nil {
		t.Fatalf("lock after the holder was killed: %v", err)
	}
	l.Unlock()
}
