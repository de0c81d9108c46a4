//go:build !unix

package store

// availableBytes cannot tell the space available here: -1.
func availableBytes(string) int64 { return -1 }
