//go:build unix

package test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tetherhq/tether/test/internal/e2e"
)

// TestSelfUpdateTrialOutlivesNoParent: the trial of a new binary
// (TETHER_UPDATE_TRIAL) runs without the state directory's lock, under
// the lock of the agent that started it; when that agent is gone (killed,
// crashed) before the trial connected, the trial stops at once, whether
// the agent went while the trial ran or before it had started (then the
// trial knows its parent from TETHER_UPDATE_TRIAL_PARENT, which the agent
// sets). It used to run on, unlocked, connecting as the agent's identity
// for as long as it could not reach a relay, beside the agent the service
// manager started next on the same state directory.
func TestSelfUpdateTrialOutlivesNoParent(t *testing.T) {
	t.Run("parent exits during the trial", func(t *testing.T) {
		trialWithoutParent(t, `"$0" run --config "$1" & echo "trial pid $!"; read x`)
	})
	t.Run("parent gone before the trial starts", func(t *testing.T) {
		trialWithoutParent(t, `TETHER_UPDATE_TRIAL_PARENT=$$ "$0" run --config "$1" & echo "trial pid $!"; exit 0`)
	})
}

// trialWithoutParent runs a trial of tether-agent from a shell running
// script ($0 the agent, $1 its config), which exits when its standard
// input closes or before, and checks that the trial stops once the shell
// has exited.
func trialWithoutParent(t *testing.T, script string) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	stateDir, _ := enroll(t, r.agentAddr, r.token(t, "acme"))
	// A relay address nothing listens on: the trial never connects.
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	yaml := e2e.AgentConfig(stateDir, fmt.Sprintf("127.0.0.1:%d", freePort(t)), e2e.AgentOptions{Transport: "tcp", LogLevel: "info",
		Extra: "update: {health_timeout: 10m}\n"})
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}

	// The parent: a shell that starts the trial as the agent does, and
	// exits when its standard input closes.
	out, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	parent := exec.Command("/bin/sh", "-c", script, bins.agent, cfg)
	parent.Env = append(os.Environ(), "TETHER_UPDATE_TRIAL="+filepath.Join(t.TempDir(), "trial-ok"))
	parent.Stdout, parent.Stderr = w, w
	in, err := parent.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close() // the parent and the trial hold it: EOF once both have exited
	var mu sync.Mutex
	var lines []string
	trialPID := 0
	started := make(chan struct{})
	eof := make(chan struct{})
	go func() {
		defer close(eof)
		sc := bufio.NewScanner(out)
		once := sync.Once{}
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			fmt.Sscanf(sc.Text(), "trial pid %d", &trialPID)
			mu.Unlock()
			if strings.Contains(sc.Text(), `"msg":"agent starting"`) {
				once.Do(func() { close(started) })
			}
		}
	}()
	output := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(lines, "\n")
	}
	t.Cleanup(func() {
		select {
		case <-eof:
		default:
			mu.Lock()
			pid := trialPID
			mu.Unlock()
			if pid > 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			in.Close()
			parent.Wait()
			<-eof
		}
		out.Close()
	})
	select {
	case <-started:
	case <-eof:
		select {
		case <-started: // and stopped already
		default:
			t.Fatalf("the trial exited before it started:\n%s", output())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the trial did not start:\n%s", output())
	}

	in.Close() // the parent exits, as a killed agent does
	parent.Wait()
	select {
	case <-eof:
	case <-time.After(15 * time.Second):
		t.Fatalf("the trial of a new binary still runs 15s after the agent that started it exited, without the state directory's lock (health timeout 10m); its output:\n%s", output())
	}
	if !strings.Contains(output(), "the agent that started this trial is gone") {
		t.Fatalf("the trial stopped without saying why:\n%s", output())
	}
}
