//go:build !unix && !windows

package accesslog

// lockFile does nothing where the system has no file locks.
func lockFile(string) (unlock func(), err error) { return func() {}, nil }
