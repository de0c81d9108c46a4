package test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/tetherhq/tether/test/internal/e2e"
)

// stopProcess stops the process pid (SIGSTOP) and returns once the kernel
// reports it stopped, so nothing it does can follow (e2e.StopPID).
func stopProcess(pid int) error { return e2e.StopPID(pid) }

// continueProcess resumes a process stopProcess stopped.
func continueProcess(pid int) error { return syscall.Kill(pid, syscall.SIGCONT) }

// errNoStop is never returned on Linux.
var errNoStop = errors.New("stopping a process is implemented on Linux only")

// allRead waits until the process at the far end of c (on this machine)
// has read everything c sent: its socket's receive queue in
// /proc/net/tcp is empty.
func allRead(c net.Conn) error {
	local, remote := c.RemoteAddr().(*net.TCPAddr), c.LocalAddr().(*net.TCPAddr)
	hexAddr := func(a *net.TCPAddr) string {
		ip := a.IP.To4()
		if ip == nil {
			return ""
		}
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], a.Port)
	}
	want := hexAddr(local) + " " + hexAddr(remote)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		b, err := os.ReadFile("/proc/net/tcp")
		if err != nil {
			return err
		}
		found := false
		for _, line := range strings.Split(string(b), "\n") {
			// sl local_address rem_address st tx_queue:rx_queue …
			f := strings.Fields(line)
			if len(f) < 5 || f[1]+" "+f[2] != want {
				continue
			}
			found = true
			if _, rx, ok := strings.Cut(f[4], ":"); ok && strings.TrimLeft(rx, "0") == "" {
				return nil
			}
		}
		if !found {
			return fmt.Errorf("no socket %s in /proc/net/tcp", want)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s has not read what %s sent after 10 s", local, remote)
		}
	}
}
