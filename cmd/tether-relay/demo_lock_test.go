package main

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent"
)

// lockedBuffer is a bytes.Buffer safe for a writer and a reader at once.
type lockedBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestDemoAgentHoldsItsStateDir: the demo's agent holds the lock of its
// state directory, as tether-agent run does, so that an agent started on
// the directory demo --keep printed is refused, naming the demo, rather
// than run beside it with its identity. (The demo's agent used to run
// without the lock: only its enrolment took it.)
func TestDemoAgentHoldsItsStateDir(t *testing.T) {
	tmp := t.TempDir()
	for _, v := range []string{"TMPDIR", "TMP", "TEMP"} {
		t.Setenv(v, tmp)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr lockedBuffer
	done := make(chan error, 1)
	go func() {
		done <- demo(ctx, demoOptions{keep: true, socks: "127.0.0.1:0", connect: "127.0.0.1:0"}, "dev", &stdout, &stderr)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(stdout.String(), "Press Ctrl-C") {
		select {
		case err := <-done:
			t.Fatalf("demo ended: %v\n%s\n%s", err, stdout.String(), stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("the demo did not get through its request in 60s:\n%s\n%s", stdout.String(), stderr.String())
		}
	}
	var dataDir string
	for _, line := range strings.Split(stderr.String(), "\n") {
		if d, ok := strings.CutPrefix(line, "data directory: "); ok {
			dataDir = d
		}
	}
	if dataDir == "" {
		t.Fatalf("demo --keep did not print its data directory:\n%s", stderr.String())
	}
	stateDir := filepath.Join(dataDir, "agent")
	l, err := agent.LockStateDir(stateDir, "run")
	if err == nil {
		l.Release()
	}
	var busy *agent.StateDirBusyError
	if !errors.As(err, &busy) || !strings.Contains(err.Error(), "tether-relay demo") {
		cancel()
		<-done
		t.Fatalf("lock the state directory of the demo's running agent: %v; want refused, naming tether-relay demo", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("demo: %v", err)
	}
	// Once the demo has stopped, the directory is free.
	l, err = agent.LockStateDir(stateDir, "run")
	if err != nil {
		t.Fatalf("lock the demo's state directory once it stopped: %v", err)
	}
	l.Release()
}
