//go:build !unix && !windows

package filelock

import "os"

// lock does nothing where the system has no file locks.
func lock(*os.File) error { return nil }

func unlock(*os.File) {}
