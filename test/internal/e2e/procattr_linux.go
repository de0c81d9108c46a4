package e2e

import "syscall"

// childAttr makes the kernel kill a process the tests started when the
// test process dies, so an interrupted run leaves nothing behind. (The
// signal follows the death of the thread that started the child: no
// process is started from a goroutine locked to a thread that ends.)
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
