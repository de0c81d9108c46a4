//go:build unix

package filelock

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lock takes flock(2)'s exclusive lock, which belongs to the open file
// description: a second open of the file, in this process or another,
// cannot take it while f is open.
func lock(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EWOULDBLOCK):
			return fmt.Errorf("%s: %w", f.Name(), ErrLocked)
		default:
			return fmt.Errorf("lock %s: %w", f.Name(), err)
		}
	}
}

func unlock(f *os.File) { syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }
