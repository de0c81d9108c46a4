package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// stateFiles reads the files of an agent's state directory that a second
// process must leave alone: everything but the access log, which the
// running agent writes.
func stateFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if d.IsDir() {
			if rel == "access-log" {
				return filepath.SkipDir
			}
			return nil
		}
		b, err := os.ReadFile(path)
		files[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func sameFiles(t *testing.T, what string, got, want map[string][]byte) {
	t.Helper()
	for _, name := range slices.Sorted(maps.Keys(want)) {
		if !bytes.Equal(got[name], want[name]) {
			t.Errorf("%s changed %s:\n%s\nwas\n%s", what, name, got[name], want[name])
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s added %s", what, name)
		}
	}
}

// echoLineOn writes a line on c and checks that it comes back.
func echoLineOn(t *testing.T, c net.Conn, s string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(c, s); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(s)+1)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != s+"\n" {
		t.Fatalf("echo through the agent: got %q, %v", got, err)
	}
}

// wantRefusedAtOnce waits for p, a second agent process on a held state
// directory, to exit with status 1 within a few seconds, and returns its
// output. (A second agent used to run alongside the first.)
func wantRefusedAtOnce(t *testing.T, p *proc, began time.Time, stateDir string, holderPID int) string {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("a second agent on the held state directory %s still runs 10s after its start, want it refused at once; its output:\n%s", stateDir, p.Output())
	}
	wantExit(t, p, 1, time.Second)
	// At once: it did not wait for the lock (the message would say the
	// holder was stopping), and exited well before the 10 s above (a
	// loaded machine may take a few seconds to start a process).
	if d := time.Since(began); d > 8*time.Second {
		t.Fatalf("the second agent exited %v after its start, want at once", d)
	}
	out := p.Output()
	if strings.Contains(out, "stopping, but still holding it") {
		t.Fatalf("the second agent waited for the lock of a running agent:\n%s", out)
	}
	for _, want := range []string{"the state directory " + stateDir + " is in use by", fmt.Sprintf("pid %d", holderPID), "Stop the other agent", "state_dir of its own"} {
		if !strings.Contains(out, want) {
			t.Fatalf("the second agent's message does not say %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, `"msg":"agent starting"`) {
		t.Fatalf("the second agent started before it was refused:\n%s", out)
	}
	return out
}

// TestSecondAgentOnAStateDirRefused: a second tether-agent run on the
// state directory of a running agent exits 1 at once, naming the
// directory and the running agent's pid and saying what to do, and
// touches none of its files; the first agent serves on, its open stream
// included. Once the first agent is killed (SIGKILL: nothing of it is
// cleaned up), the next start succeeds.
func TestSecondAgentOnAStateDirRefused(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	a := startAgent(t, r, "acme", agentOpts{services: map[string]string{"echo": tcpService(t, echo)}})
	dialer := r.backend(t, "billing", "acme")
	conn := waitDial(t, dialer, "echo.acme.tether:1", 20*time.Second)
	defer conn.Close()
	echoLineOn(t, conn, "before")
	before := stateFiles(t, a.stateDir)

	began := time.Now()
	second := start(t, "second agent", bins.agent, "run", "--config", a.config)
	wantRefusedAtOnce(t, second, began, a.stateDir, a.Pid())
	sameFiles(t, "the refused second agent", stateFiles(t, a.stateDir), before)
	if _, ok := before["agent.lock"]; !ok {
		t.Fatalf("no agent.lock in the state directory of a running agent: %v", slices.Sorted(maps.Keys(before)))
	}
	select {
	case <-a.Done():
		t.Fatalf("the first agent exited: %v", a.Err())
	default:
	}
	echoLineOn(t, conn, "after the second agent") // the first serves on
	c2 := waitDial(t, dialer, "echo.acme.tether:1", 10*time.Second)
	echoLineOn(t, c2, "a new stream")
	c2.Close()

	// The lock goes with the process.
	a.kill()
	second.restart()
	second.waitOutput(`"msg":"connected to relay"`, 20*time.Second)
	c3 := waitDial(t, dialer, "echo.acme.tether:1", 20*time.Second)
	echoLineOn(t, c3, "through the second agent")
	c3.Close()
}

// TestEnrollRefusedUnderARunningAgent: enroll --force on the state
// directory of a running agent is refused before it reaches the relay
// (the join token stays unspent), naming the agent's pid and saying what
// to do, and leaves the identity as it was; the agent serves on. (It used
// to replace the identity under the running agent, which went on serving
// as the old one and renewing into the new one's files.)
func TestEnrollRefusedUnderARunningAgent(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	a := startAgent(t, r, "acme", agentOpts{services: map[string]string{"echo": tcpService(t, echo)}})
	dialer := r.backend(t, "billing", "acme")
	conn := waitDial(t, dialer, "echo.acme.tether:1", 20*time.Second)
	defer conn.Close()
	before := stateFiles(t, a.stateDir)

	tok := r.token(t, "acme")
	_, stderr, err := runCmdEnv(t, []string{"TETHER_JOIN_TOKEN=" + tok}, bins.agent, "enroll", "--relay", r.agentAddr, "--state-dir", a.stateDir, "--force")
	if err == nil || !strings.Contains(stderr, "the state directory "+a.stateDir+" is in use by") || !strings.Contains(stderr, fmt.Sprintf("pid %d", a.Pid())) ||
		!strings.Contains(stderr, "Stop that agent first") {
		t.Fatalf("enroll --force into the state directory of a running agent: %v, %s; want refused, naming the agent's pid", err, stderr)
	}
	sameFiles(t, "the refused enroll --force", stateFiles(t, a.stateDir), before)
	enroll(t, r.agentAddr, tok) // the token was not spent by the refused enrolment
	echoLineOn(t, conn, "after the enrolment")

	// Once the agent has stopped, enroll --force goes ahead. (The agent
	// marked itself stopping as it stopped: a start meanwhile would
	// have waited for it.)
	conn.Close()
	pid := a.Pid()
	if err := a.stop(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	var rec struct {
		PID   int    `json:"pid"`
		State string `json:"state"`
	}
	if b, err := os.ReadFile(filepath.Join(a.stateDir, "agent.lock")); err != nil || json.Unmarshal(b, &rec) != nil || rec.PID != pid || rec.State != "stopping" {
		t.Fatalf("agent.lock after the agent stopped: %+v, %v; want pid %d, stopping", rec, err, pid)
	}
	_, stderr, err = runCmdEnv(t, []string{"TETHER_JOIN_TOKEN=" + r.token(t, "acme")}, bins.agent, "enroll", "--relay", r.agentAddr, "--state-dir", a.stateDir, "--force")
	if err != nil {
		t.Fatalf("enroll --force once the agent stopped: %v, %s", err, stderr)
	}
}

// TestSecondAgentDuringProbationNotCounted: while a new version is on
// probation (update/pending.json: running mark set), a second tether-agent
// run on the state directory is refused without touching pending.json:
// its start is not counted as a stop without a clean exit of the running
// agent (a second agent used to find the running agent's mark set, count
// it, and run alongside), and later stops are counted as before.
func TestSecondAgentDuringProbationNotCounted(t *testing.T) {
	_, stateDir, _, a, v1 := startOnProbation(t)
	pendingPath := filepath.Join(stateDir, "update", "pending.json")
	pending, err := os.ReadFile(pendingPath)
	if err != nil || !bytes.Contains(pending, []byte(`"state":"probation"`)) || !bytes.Contains(pending, []byte(`"running":true`)) || bytes.Contains(pending, []byte(`"unclean"`)) {
		t.Fatalf("pending.json on probation: %s, %v; want on probation, running, no unclean stop", pending, err)
	}
	before := stateFiles(t, stateDir)

	// v1's path holds 2.0.0 now: the same binary as the running agent's.
	for i := range 2 {
		began := time.Now()
		second := start(t, fmt.Sprintf("second agent %d", i), v1, "run", "--config", a.config)
		select {
		case <-second.Done():
		case <-time.After(10 * time.Second):
			got, _ := os.ReadFile(pendingPath)
			t.Fatalf("a second agent on the state directory of an agent on probation still runs 10s after its start; pending.json now: %s (was %s)", got, pending)
		}
		wantRefusedAtOnce(t, second, began, stateDir, a.Pid())
	}
	sameFiles(t, "the refused second agents", stateFiles(t, stateDir), before)
	if got, _ := os.ReadFile(pendingPath); !bytes.Equal(got, pending) {
		t.Fatalf("pending.json after two refused starts: %s, was %s", got, pending)
	}

	// The running agent's own stops are counted as before: a kill is.
	a.kill()
	a.restart()
	waitCount(t, a.proc, onProbation, 2, 20*time.Second)
	if got, _ := os.ReadFile(pendingPath); !bytes.Contains(got, []byte(`"unclean":1`)) {
		t.Fatalf("pending.json after a kill of the agent on probation: %s; want one unclean stop", got)
	}
}
