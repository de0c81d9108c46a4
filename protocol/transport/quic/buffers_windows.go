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

const raiseHint = "on Windows a program normally gets the size it asks for, so something on this system caps it"
