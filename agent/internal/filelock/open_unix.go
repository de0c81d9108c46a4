//go:build unix

package filelock

import (
	"errors"
	"os"
	"syscall"
)

// open opens path with flag (and mode 0600 when it creates it) without
// following a symbolic link at path, without blocking on a named pipe,
// and only when it is a regular file with no other hard link.
func open(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		if fi, lerr := os.Lstat(path); lerr == nil && fi.Mode()&os.ModeSymlink != 0 {
			return nil, notLockFile(path, "a symbolic link")
		}
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, notLockFile(path, "not a regular file ("+fi.Mode().Type().String()+")")
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
		f.Close()
		return nil, notLockFile(path, "a file with other hard links")
	}
	return f, nil
}
