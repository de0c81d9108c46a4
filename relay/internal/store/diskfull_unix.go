//go:build unix

package store

import sys "golang.org/x/sys/unix"

// availableBytes is the space of dir's file system available to this
// process's user, or -1 when it cannot be told.
func availableBytes(dir string) int64 {
	var st sys.Statfs_t
	if err := sys.Statfs(dir, &st); err != nil {
		return -1
	}
	return int64(st.Bavail) * int64(st.Bsize)
}
