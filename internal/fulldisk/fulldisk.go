// Package fulldisk gives a test a directory on a file system that really
// fills up: a small tmpfs, mounted in a user and mount namespace of its
// own (unshare -r -m), so an ordinary user can run it. The test runs
// again in a child process of its test binary inside that namespace;
// there Dir returns the directory, and Fill fills it to the last byte.
package fulldisk

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// dirEnv names, in the child process, the directory of the tmpfs.
const dirEnv = "TETHER_FULLDISK_DIR"

// Dir returns, in the child process, the directory of a tmpfs of size
// bytes (a mount option such as "2m"). In the test's own process it runs
// the test in that child, fails t when the child fails, and returns "":
// the caller returns then. It skips t, saying why, where unshare -r -m
// cannot make the namespaces (no unshare, or unprivileged user
// namespaces are off).
func Dir(t *testing.T, size string) string {
	t.Helper()
	if d := os.Getenv(dirEnv); d != "" {
		return d
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skipf("needs unshare (util-linux) to mount a small tmpfs as an ordinary user: %v", err)
	}
	if out, err := exec.Command("unshare", "-r", "-m", "true").CombinedOutput(); err != nil {
		t.Skipf("needs unprivileged user and mount namespaces to mount a small tmpfs (unshare -r -m: %v: %s)", err, strings.TrimSpace(string(out)))
	}
	dir := t.TempDir()
	parts := strings.Split(t.Name(), "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	args := []string{"-test.run=" + strings.Join(parts, "/"), "-test.count=1", "-test.v"}
	cmd := exec.Command("unshare", append([]string{"-r", "-m", "sh", "-c",
		`mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"`, "sh", size, dir, os.Args[0]}, args...)...)
	cmd.Env = append(os.Environ(), dirEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	t.Logf("on a %s tmpfs, in a namespace of its own:\n%s", size, out)
	if err != nil {
		t.Fatalf("the test on a small tmpfs failed: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("the test on a small tmpfs did not pass (skipped?)")
	}
	return ""
}

// Fill writes dir/filler until the file system is full, to the last
// byte, and returns a function that removes it.
func Fill(t *testing.T, dir string) (free func()) {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for n := len(buf); n > 0; {
		if _, err := f.Write(buf[:n]); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			n /= 2
		}
	}
	return func() {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
}
