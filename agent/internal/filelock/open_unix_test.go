//go:build unix

package filelock

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestLockRefusesWhatIsNotALockFile: a symbolic link, a file with another
// hard link and a named pipe at a lock file's path are refused with
// ErrNotLockFile, by Lock and by ReadFile, without blocking, and the
// file a link leads to is not locked (Lock used to follow them).
func TestLockRefusesWhatIsNotALockFile(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(target, path string) error
	}{
		{"symbolic link", os.Symlink},
		{"hard link", os.Link},
		{"named pipe", func(_, path string) error { return syscall.Mkfifo(path, 0o600) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			target := filepath.Join(dir, "target")
			if err := os.WriteFile(target, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "x.lock")
			if err := tc.make(target, path); err != nil {
				t.Skipf("%s: %v", tc.name, err)
			}
			l, err := Lock(path)
			if err == nil {
				l.Unlock()
			}
			if !errors.Is(err, ErrNotLockFile) {
				t.Fatalf("Lock of a %s: %v, want ErrNotLockFile", tc.name, err)
			}
			if _, err := ReadFile(path, 10); !errors.Is(err, ErrNotLockFile) {
				t.Fatalf("ReadFile of a %s: %v, want ErrNotLockFile", tc.name, err)
			}
			// The target was not locked by the refused Lock.
			l, err = Lock(target)
			if tc.name == "hard link" {
				// Itself a file with another hard link now.
				if !errors.Is(err, ErrNotLockFile) {
					t.Fatalf("Lock of the target of a hard link: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("lock the target after the refused Lock: %v", err)
			}
			l.Unlock()
		})
	}
}
