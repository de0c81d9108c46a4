package e2e

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Proc is a running binary whose output is kept for assertions and shown
// when the test fails.
type Proc struct {
	// Name names the process in failure messages.
	Name string
	// Out is everything the process wrote to stdout and stderr, across
	// restarts.
	Out *SyncBuffer

	t    testing.TB
	argv []string
	env  []string

	mu   sync.Mutex // guards cmd, done and err
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	err  error         // cmd's exit, once done is closed
}

// SyncBuffer is a bytes.Buffer safe for concurrent use.
type SyncBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Start runs argv with env (KEY=value) added to the test's own
// environment; the process is killed when the test ends, and its output
// is logged if the test failed.
func Start(t testing.TB, name string, env []string, argv ...string) *Proc {
	t.Helper()
	p := &Proc{t: t, Name: name, argv: argv, env: env, Out: &SyncBuffer{}}
	p.launch()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("---- output of %s ----\n%s", p.Name, p.Out.String())
		}
	})
	return p
}

func (p *Proc) launch() {
	p.t.Helper()
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.SysProcAttr = childAttr()
	cmd.Stdout = p.Out
	cmd.Stderr = p.Out
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.Name, err)
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done, p.err = cmd, done, nil
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}()
}

// Pid is the process id of the current run.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// Done is closed when the current run has exited.
func (p *Proc) Done() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// Err is how the current run exited (nil while it runs).
func (p *Proc) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Output is everything the process printed so far.
func (p *Proc) Output() string { return p.Out.String() }

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Signal(sig)
}

// Kill stops the process at once (SIGKILL) and waits for it. A process
// stopped with SIGSTOP is killed too.
func (p *Proc) Kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	cmd.Process.Kill()
	<-done
}

// Stop asks the process to stop (SIGTERM) and waits up to d, then kills it
// and fails the test.
func (p *Proc) Stop(d time.Duration) error {
	p.Signal(syscall.SIGTERM)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.Done():
		return p.Err()
	case <-t.C:
		p.t.Errorf("%s did not stop within %v of SIGTERM", p.Name, d)
		p.Kill()
		return errors.New("killed")
	}
}

// Restart starts the same command again after it has exited.
func (p *Proc) Restart() {
	p.t.Helper()
	<-p.Done()
	p.launch()
}

// WaitOutputOrExit waits until the process output contains s (true) or
// the process exits first (false); it fails the test after d.
func (p *Proc) WaitOutputOrExit(s string, d time.Duration) bool {
	p.t.Helper()
	deadline := time.Now().Add(d)
	done := p.Done()
	for !strings.Contains(p.Out.String(), s) {
		if time.Now().After(deadline) {
			p.t.Fatalf("%s did not print %q within %v", p.Name, s, d)
		}
		select {
		case <-done:
			return strings.Contains(p.Out.String(), s)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return true
}

// WaitOutput waits until the process output contains s; it fails the test
// if the process exits first or after d.
func (p *Proc) WaitOutput(s string, d time.Duration) {
	p.t.Helper()
	if !p.WaitOutputOrExit(s, d) {
		p.t.Fatalf("%s exited (%v) before printing %q", p.Name, p.Err(), s)
	}
}

// Run runs argv to completion with env (KEY=value) added to the test's
// own environment, and returns stdout, stderr and the error.
func Run(env []string, argv ...string) (string, string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// MustRun is Run failing the test on error; it returns trimmed stdout.
func MustRun(t testing.TB, argv ...string) string {
	t.Helper()
	out, errOut, err := Run(nil, argv...)
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", filepath.Base(argv[0]), strings.Join(argv[1:], " "), err, out, errOut)
	}
	return strings.TrimSpace(out)
}
