//go:build unix

package quic

import "golang.org/x/sys/unix"

func socketBuffers(fd uintptr) (recv, send int, err error) {
	if recv, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF); err != nil {
		return 0, 0, err
	}
	send, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
	return recv, send, err
}
