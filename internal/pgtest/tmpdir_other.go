//go:build unix && !linux

package pgtest

// memoryTempDir returns "": clusters are created in the ordinary temp
// directory outside Linux.
func memoryTempDir() string { return "" }
