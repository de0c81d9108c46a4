// Package filelock takes exclusive locks on files that go with the
// process: the system releases one when the process ends, however it
// ends (a kill, a crash), and a program the process execs does not
// inherit it (the file is opened close-on-exec, as os.OpenFile always
// does).
//
// A lock file is written by its holder, so it is opened only when it is
// a regular file of its own: a symbolic link, a file with other hard
// links, or a special file (a named pipe, a device) at its path is
// refused with ErrNotLockFile rather than followed, so that a link
// planted or left there cannot make the holder truncate and overwrite
// another file (the agent's key, or any file its user may write).
package filelock

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrLocked means that another process holds the lock (or another open
// file in this process: the lock belongs to the open file, not to the
// process).
var ErrLocked = errors.New("locked by another process")

// ErrNotLockFile means that the path of a lock file holds something else
// than a regular file of its own: a symbolic link, a file with other hard
// links, or a special file.
var ErrNotLockFile = errors.New("refused as a lock file, whose holder would write through it to another file; remove it")

// File is a file locked by Lock. Its content is free for the holder to
// write and for others to read (on Windows the locked byte lies far
// beyond any content: a locked range cannot be read through other
// handles).
type File struct {
	f *os.File
}

// Lock opens path read-write, creating it (mode 0600) when missing, and
// takes an exclusive lock on it without waiting: a lock held elsewhere is
// ErrLocked (wrapped), and a path that is not a regular file of its own
// is ErrNotLockFile (wrapped). The lock is held until Unlock, or until
// the process ends.
func Lock(path string) (*File, error) {
	f, err := open(path, os.O_RDWR|os.O_CREATE)
	if err != nil {
		return nil, err
	}
	if err := lock(f); err != nil {
		f.Close()
		return nil, err
	}
	return &File{f: f}, nil
}

// ReadFile reads at most limit bytes of the lock file at path, which may
// be locked by another process; a path that is not a regular file of its
// own is ErrNotLockFile (wrapped), and is not read (a named pipe would
// block the reader).
func ReadFile(path string, limit int64) ([]byte, error) {
	f, err := open(path, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}

// notLockFile is the error for path, which holds what, not a lock file.
func notLockFile(path, what string) error {
	return fmt.Errorf("%s is %s: %w", path, what, ErrNotLockFile)
}

// File is the open locked file.
func (l *File) File() *os.File { return l.f }

// Unlock releases the lock and closes the file.
func (l *File) Unlock() {
	unlock(l.f)
	l.f.Close()
}
