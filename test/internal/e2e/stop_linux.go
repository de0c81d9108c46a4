package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// StopPID stops the process pid (SIGSTOP) and returns once the kernel
// reports every one of its threads stopped, so that nothing it does can
// follow. kill(2) only queues the signal: on a busy machine the process
// runs on for a while (it may answer a request sent after the kill).
func StopPID(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return err
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		stopped, err := allStopped(pid)
		if err != nil || stopped {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d not stopped 5 s after SIGSTOP", pid)
		}
	}
}

// allStopped reports whether every thread of pid is stopped (state T).
func allStopped(pid int) (bool, error) {
	stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(stats) == 0 {
		return false, fmt.Errorf("threads of process %d: %v", pid, err)
	}
	for _, stat := range stats {
		b, err := os.ReadFile(stat)
		if err != nil {
			return false, err
		}
		// tid (comm) state …: comm may hold spaces and parentheses.
		if i := bytes.LastIndexByte(b, ')'); i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false, nil
		}
	}
	return true, nil
}

// Freeze stops the process with SIGSTOP and returns once it is stopped
// (StopPID); SIGCONT resumes it.
func (p *Proc) Freeze() error { return StopPID(p.Pid()) }
