//go:build unix

package agent

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestKeepPreviousWithoutHardLink: where the file system refuses a hard
// link, the running binary is kept as a copy, with its bytes and mode. The
// link is refused here because the two names are on different file
// systems (EXDEV), which the updater never asks for but which makes the
// real os.Link fail without privileges.
func TestKeepPreviousWithoutHardLink(t *testing.T) {
	other, err := os.MkdirTemp("/dev/shm", "tether-keep-previous")
	if err != nil {
		t.Skipf("no second file system at /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(other) })
	dir := t.TempDir()
	var a, b syscall.Stat_t
	if syscall.Stat(dir, &a) != nil || syscall.Stat(other, &b) != nil || a.Dev == b.Dev {
		t.Skipf("%s and %s are on one file system: a hard link between them would not fail", dir, other)
	}
	exe, previous := filepath.Join(dir, "tether-agent"), filepath.Join(other, "tether-agent"+previousSuffix)
	if err := os.WriteFile(exe, []byte("running binary"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(previous, []byte("an older previous binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(exe, filepath.Join(other, "probe")); err == nil {
		t.Skip("the hard link across file systems did not fail")
	}
	if err := keepPrevious(exe, previous); err != nil {
		t.Fatalf("keepPrevious: %v", err)
	}
	b2, err := os.ReadFile(previous)
	if err != nil || string(b2) != "running binary" {
		t.Errorf("%s: %q, %v; want a copy of the running binary", previous, b2, err)
	}
	if fi, err := os.Stat(previous); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm() != 0o750 {
		t.Errorf("%s: mode %v; want the binary's 0750", previous, fi.Mode().Perm())
	}
	if b, err := os.ReadFile(exe); err != nil || string(b) != "running binary" {
		t.Errorf("the binary after keepPrevious: %q, %v", b, err)
	}
}
