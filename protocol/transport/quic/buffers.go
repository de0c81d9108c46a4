package quic

import (
	"fmt"
	"log/slog"
	"net"
)

// WantedBuffer is the UDP socket buffer size, each way, that quic-go asks
// for when it takes over a socket (its desiredBufferSize). With less, a
// burst of packets — a bulk transfer, or a relay's many agents handshaking
// at once after a restart — overflows the socket and is dropped, and the
// senders wait for a retransmission timer.
const WantedBuffer = 7 << 20

// SocketBuffers reports the receive and send buffer sizes of c as the
// operating system reports them (Linux reports twice the size asked for,
// its bookkeeping included, and so does quic-go's check).
func SocketBuffers(c *net.UDPConn) (recv, send int, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { recv, send, serr = socketBuffers(fd) }); err != nil {
		return 0, 0, err
	}
	if serr != nil {
		return 0, 0, fmt.Errorf("read UDP socket buffer sizes: %w", serr)
	}
	return recv, send, nil
}

// ProbeBuffers opens a UDP socket, raises its buffers the way quic-go
// raises those of the sockets it dials from (up to the system's limit, or
// past it where the process has the privilege), and reports what it got.
// An agent dials each QUIC connection from a socket of its own (Dial),
// which quic-go raises the same way, so this is how it learns at start
// what they will get.
func ProbeBuffers() (recv, send int, err error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	// Errors are left to the read-back below, as quic-go does.
	_ = c.SetReadBuffer(WantedBuffer)
	_ = c.SetWriteBuffer(WantedBuffer)
	if rc, err := c.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { forceBuffers(fd, WantedBuffer) })
	}
	return SocketBuffers(c)
}

// BufferAdvice says which of the buffers is smaller than WantedBuffer and
// how to raise the system's limit; it is "" when both are big enough.
func BufferAdvice(recv, send int) string {
	var small []string
	if recv < WantedBuffer {
		small = append(small, fmt.Sprintf("receive %d KiB", recv>>10))
	}
	if send < WantedBuffer {
		small = append(small, fmt.Sprintf("send %d KiB", send>>10))
	}
	if len(small) == 0 {
		return ""
	}
	what := small[0]
	if len(small) == 2 {
		what += ", " + small[1]
	}
	return fmt.Sprintf("QUIC UDP socket buffers are smaller than the %d KiB quic-go wants (%s): bulk transfers and bursts of handshakes lose packets and wait for retransmissions; %s",
		WantedBuffer>>10, what, raiseHint)
}

// LogBuffers logs buffer sizes read by SocketBuffers or ProbeBuffers: a
// warning with BufferAdvice when they are small, at debug level otherwise.
func LogBuffers(log *slog.Logger, recv, send int, err error) {
	switch advice := BufferAdvice(recv, send); {
	case err != nil:
		log.Debug("QUIC UDP socket buffer sizes unknown", "err", err)
	case advice != "":
		log.Warn(advice, "receive_bytes", recv, "send_bytes", send)
	default:
		log.Debug("QUIC UDP socket buffers", "receive_bytes", recv, "send_bytes", send)
	}
}
