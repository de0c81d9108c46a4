//go:build linux && !386

package transport

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// Direct I/O: a TCP socket read and written with raw system calls.
//
// Every read and write of a net.TCPConn goes through syscall.Syscall, which
// tells the Go scheduler that the thread is entering the kernel. The first
// such call after the process was idle wakes the runtime's monitor thread
// (sysmon) to watch it; a call that takes longer than 20 µs of wall time
// (on a busy machine the kernel often runs the woken peer before the writer
// returns) gets its scheduler slot handed to another thread, which wakes up
// only to find nothing to do. Forwarding one small message then costs the
// process three or four context switches instead of one or two. For a
// tunnel, whose job is to forward small messages between sockets, that is a
// large part of the added latency: with every process on one CPU, a plain
// Go forwarder adds 90–100 µs to a 64-byte round trip and the same
// forwarder with raw system calls 40–65 µs, and Tether's own round trip
// over TLS+yamux went from +300 to +140 µs over direct
// (docs/performance.md, round trips).
//
// A raw read or write of a non-blocking socket never waits (it returns
// EAGAIN instead): at worst it holds its thread while the kernel copies
// the data. Waiting for the socket is still the runtime poller's job,
// through syscall.RawConn: deadlines, Close from another goroutine and
// SetLinger work as on the wrapped connection.

// maxRW caps one system call's length, as the standard library does.
const maxRW = 1 << 30

// directConn is a TCP connection whose Read and Write use raw system
// calls. Every other method is the wrapped connection's.
type directConn struct {
	*net.TCPConn
	rc syscall.RawConn
}

// Direct returns c with Read and Write done by raw system calls when c is
// a *net.TCPConn; any other connection comes back unchanged.
func Direct(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &directConn{TCPConn: tc, rc: rc}
}

func (c *directConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(p) > maxRW {
		p = p[:maxRW]
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
			switch e {
			case 0:
				n = int(r)
				return true
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // the poller waits for data
			default:
				errno = e
				return true
			}
		}
	})
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p. It sends with MSG_NOSIGNAL: a write to a peer
// that has gone away returns EPIPE, as with net.TCPConn, and the kernel
// does not raise a SIGPIPE for the runtime to ignore.
func (c *directConn) Write(p []byte) (int, error) { return c.send(p, true) }

// TryWrite writes what the socket's send buffer takes of p now, without
// waiting for room (TryWriter): n < len(p) with a nil error means the
// buffer is full.
func (c *directConn) TryWrite(p []byte) (int, error) { return c.send(p, false) }

// send writes p; when the socket's buffer is full, it waits for room if
// wait is set, else returns what it wrote.
func (c *directConn) send(p []byte, wait bool) (int, error) {
	var n int
	var errno syscall.Errno
	err := c.rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			chunk := p[n:]
			if len(chunk) > maxRW {
				chunk = chunk[:maxRW]
			}
			r, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(unsafe.SliceData(chunk))), uintptr(len(chunk)), syscall.MSG_NOSIGNAL, 0, 0)
			switch e {
			case 0:
				n += int(r)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return !wait // false: the poller waits for room
			default:
				errno = e
				return true
			}
		}
		return true
	})
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// opError wraps err as the standard library wraps a connection's errors,
// so errors.Is finds net.ErrClosed, os.ErrDeadlineExceeded and the errno.
func (c *directConn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok { // from RawConn: "raw-read", no peer address
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
