//go:build !linux

package transport

import "net"

// Direct returns c unchanged: raw-system-call I/O (direct_linux.go) is for
// Linux only.
func Direct(c net.Conn) net.Conn { return c }
