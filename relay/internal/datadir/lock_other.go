//go:build !unix

package datadir

import "context"

// lockDir is a no-op where advisory locks are not available: the relay is
// supported on Unix; elsewhere, do not run admin commands while it starts.
func lockDir(ctx context.Context, path string) (func(), error) { return func() {}, nil }
