//go:build !(linux && (amd64 || arm64))

package quic

import "net"

// PacketConn returns the connection quic-go should be given for c: c
// itself here (receive offload is used on Linux only).
func PacketConn(c *net.UDPConn) net.PacketConn { return c }
