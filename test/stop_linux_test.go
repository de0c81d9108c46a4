package test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// stopProcess stops the process pid (SIGSTOP) and returns once the kernel
// reports it stopped, so nothing it does can follow.
func stopProcess(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return err
	}
	stat := fmt.Sprintf("/proc/%d/stat", pid)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		b, err := os.ReadFile(stat)
		if err != nil {
			return err
		}
		// pid (comm) state …: comm may hold spaces and parentheses.
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'T' {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d not stopped 5 s after SIGSTOP", pid)
		}
	}
}

// continueProcess resumes a process stopProcess stopped.
func continueProcess(pid int) error { return syscall.Kill(pid, syscall.SIGCONT) }

// errNoStop is never returned on Linux.
var errNoStop = errors.New("stopping a process is implemented on Linux only")
