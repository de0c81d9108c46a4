//go:build unix

package filelock

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// execChild replaces the process with the test binary as a holdEnv child
// of path, as an agent's self-update restarts it in place.
func execChild(path string) {
	env := []string{holdEnv + "=" + path}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, execEnv+"=") {
			env = append(env, kv)
		}
	}
	err := syscall.Exec(os.Args[0], []string{os.Args[0], "-test.run=^$"}, env)
	fmt.Println("exec:", err)
}

// TestLockNotPassedAcrossExec: a process that holds the lock and execs
// (a self-update's restart in place) does not pass it to its new image,
// which takes it again. (A lock file inherited across exec would stay
// locked by a file the new image does not know of, and the new image's
// own Lock would fail for ever.)
func TestLockNotPassedAcrossExec(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), execEnv+"="+path)
	out, err := cmd.Output()
	if err != nil || string(out) != "locked\n" {
		t.Fatalf("the new image of a process that held the lock and exec'd: %q, %v; want it to take the lock", out, err)
	}
}
