//go:build !linux || 386

package transport

import "net"

// Direct returns c unchanged: raw-system-call I/O (direct_linux.go) is for
// Linux only, and not for linux/386, whose socket calls go through
// socketcall(2) rather than a sendto of their own.
func Direct(c net.Conn) net.Conn { return c }
