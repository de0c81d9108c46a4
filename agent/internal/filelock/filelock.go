// Package filelock takes exclusive locks on files that go with the
// process: the system releases one when the process ends, however it
// ends (a kill, a crash), and a program the process execs does not
// inherit it (the file is opened close-on-exec, as os.OpenFile always
// does).
package filelock

import (
	"errors"
	"os"
)

// ErrLocked means that another process holds the lock (or another open
// file in this process: the lock belongs to the open file, not to the
// process).
var ErrLocked = errors.New("locked by another process")

// File is a file locked by Lock. Its content is free for the holder to
// write and for others to read (on Windows the locked byte lies far
// beyond any content: a locked range cannot be read through other
// handles).
type File struct {
	f *os.File
}

// Lock opens path read-write, creating it (mode 0600) when missing, and
// takes an exclusive lock on it without waiting: a lock held elsewhere is
// ErrLocked (wrapped). The lock is held until Unlock, or until the
// process ends.
func Lock(path string) (*File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := lock(f); err != nil {
		f.Close()
		return nil, err
	}
	return &File{f: f}, nil
}

// File is the open locked file.
func (l *File) File() *os.File { return l.f }

// Unlock releases the lock and closes the file.
func (l *File) Unlock() {
	unlock(l.f)
	l.f.Close()
}
