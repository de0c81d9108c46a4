//go:build !unix

package filelock

import "os"

// open opens path with flag (and mode 0600 when it creates it), only
// when it is a regular file and not a symbolic link (or another reparse
// point): it is checked before it is opened, and the file opened must be
// the one checked.
func open(path string, flag int) (*os.File, error) {
	before, lerr := os.Lstat(path)
	if lerr == nil && !before.Mode().IsRegular() {
		return nil, notLockFile(path, "not a regular file ("+before.Mode().Type().String()+")")
	}
	f, err := os.OpenFile(path, flag, 0o600)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() || (lerr == nil && !os.SameFile(before, fi)) {
		f.Close()
		return nil, notLockFile(path, "not the regular file it was a moment before")
	}
	return f, nil
}
