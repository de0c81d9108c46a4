//go:build !linux

package e2e

import "errors"

// StopPID is implemented on Linux only.
func StopPID(int) error { return errors.New("stopping a process is implemented on Linux only") }

// Freeze stops the process with SIGSTOP and returns once it is stopped
// (StopPID); SIGCONT resumes it.
func (p *Proc) Freeze() error { return StopPID(p.Pid()) }
