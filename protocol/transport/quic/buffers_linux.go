package quic

import "golang.org/x/sys/unix"

// forceBuffers raises the buffers past net.core.rmem_max and wmem_max,
// which only a process with CAP_NET_ADMIN may do; quic-go tries the same.
func forceBuffers(fd uintptr, size int) {
	_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
	_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size)
}

const raiseHint = "raise the system's limits with `sysctl -w net.core.rmem_max=7500000 net.core.wmem_max=7500000` (and a file in /etc/sysctl.d to keep them)"
