//go:build unix

package agent

import (
	"errors"
	"syscall"
)

// processGone reports whether no process pid exists (on this host, in
// this process's pid namespace).
func processGone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}
