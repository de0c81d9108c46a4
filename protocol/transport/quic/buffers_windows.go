package quic

import "golang.org/x/sys/windows"

func socketBuffers(fd uintptr) (recv, send int, err error) {
	if recv, err = windows.GetsockoptInt(windows.Handle(fd), windows.SOL_SOCKET, windows.SO_RCVBUF); err != nil {
		return 0, 0, err
	}
	send, err = windows.GetsockoptInt(windows.Handle(fd), windows.SOL_SOCKET, windows.SO_SNDBUF)
	return recv, send, err
}

func forceBuffers(uintptr, int) {}

const raiseHint = "Windows grants what a program asks for unless a policy limits it"
