//go:build unix && !linux

package quic

func forceBuffers(uintptr, int) {}

const raiseHint = "raise the system's socket buffer limit (kern.ipc.maxsockbuf on BSD and macOS)"
