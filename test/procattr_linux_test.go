package test

import "syscall"

// childAttr makes the kernel kill a relay or agent the tests started when
// the test process dies, so an interrupted run leaves nothing behind.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
