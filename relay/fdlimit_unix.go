//go:build unix

package relay

import "syscall"

// fdLimit is the process's limit on open file descriptors (the soft
// RLIMIT_NOFILE), or 0 when it cannot be read.
func fdLimit() uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0
	}
	return uint64(l.Cur)
}
