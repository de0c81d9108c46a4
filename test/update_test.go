package test

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// agentBuilds caches agent binaries built with a given version.
var agentBuilds struct {
	mu   sync.Mutex // guards bins
	bins map[string]string
	dir  string
}

// agentOfVersion builds tether-agent with -X main.version=version (once per
// test run) and returns a copy of it in a temporary directory of t, which
// the agent may replace when it updates itself.
func agentOfVersion(t *testing.T, version string) string {
	t.Helper()
	agentBuilds.mu.Lock()
	defer agentBuilds.mu.Unlock()
	if agentBuilds.bins == nil {
		agentBuilds.bins = map[string]string{}
		agentBuilds.dir = filepath.Dir(bins.agent)
	}
	built, ok := agentBuilds.bins[version]
	if !ok {
		built = filepath.Join(agentBuilds.dir, "tether-agent-"+version)
		args := []string{"build", "-o", built, "-ldflags", "-X main.version=" + version}
		if os.Getenv("TETHER_E2E_RACE") == "1" {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "../cmd/tether-agent")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build agent %s: %v\n%s", version, err, out)
		}
		agentBuilds.bins[version] = built
	}
	dst := filepath.Join(t.TempDir(), "tether-agent")
	copyFile(t, built, dst, 0o755)
	return dst
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// updateEnv is a relay offering updates quickly, a release key pair, and
// helpers to publish and roll out.
type updateEnv struct {
	relay  *relayProc
	keyDir string
	pub    string
}

func newUpdateEnv(t *testing.T) *updateEnv {
	t.Helper()
	e := &updateEnv{relay: startRelay(t, relayOpts{extra: []string{"--update-interval", "300ms"}}), keyDir: t.TempDir()}
	e.relay.addTenant(t, "acme")
	mustRun(t, bins.relay, "release", "keygen", "--out", e.keyDir)
	fi, err := os.Stat(filepath.Join(e.keyDir, "release.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("release.key: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	pub, err := os.ReadFile(filepath.Join(e.keyDir, "release.pub"))
	if err != nil {
		t.Fatal(err)
	}
	e.pub = string(pub)
	return e
}

// updateYAML is the agent config's update section trusting e's key.
func (e *updateEnv) updateYAML(extra string) string {
	return fmt.Sprintf("update: {public_keys: [%q], restart: exec%s}\n", e.pub, extra)
}

// publish signs bin as version for this platform (unless overridden in
// flags) with key (default e's) and publishes it.
func (e *updateEnv) publish(t *testing.T, bin, version string, flags ...string) {
	t.Helper()
	args := []string{"release", "publish", "--file", bin, "--version", version, "--key", filepath.Join(e.keyDir, "release.key")}
	has := func(f string) bool { return strings.Contains(strings.Join(flags, " "), f) }
	if !has("--os") {
		args = append(args, "--os", runtime.GOOS)
	}
	if !has("--arch") {
		args = append(args, "--arch", runtime.GOARCH)
	}
	e.relay.admin(t, append(args, flags...)...)
}

// releaseDir is where the relay keeps a release's files.
func (e *updateEnv) releaseDir(version, goos, goarch, channel string) string {
	return filepath.Join(e.relay.dataDir, "releases", version, goos+"-"+goarch+"-"+channel)
}

type updateStatus struct {
	Rollouts []struct {
		ID      int64  `json:"id"`
		Version string `json:"version"`
		State   string `json:"state"`
		Reason  string `json:"reason"`
	} `json:"rollouts"`
	Agents []struct {
		Agent   string `json:"agent"`
		Version string `json:"version"`
		From    string `json:"from"`
		State   string `json:"state"`
		Reason  string `json:"reason"`
		Message string `json:"message"`
	} `json:"agents"`
}

func (e *updateEnv) status(t *testing.T) updateStatus {
	t.Helper()
	var st updateStatus
	if err := json.Unmarshal([]byte(e.relay.admin(t, "release", "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitState waits until agent's state for version is one of states and
// returns its reason and message.
func (e *updateEnv) waitState(t *testing.T, agent, version string, d time.Duration, states ...string) (reason, message string) {
	t.Helper()
	deadline := time.Now().Add(d)
	last := ""
	for time.Now().Before(deadline) {
		for _, a := range e.status(t).Agents {
			if a.Agent == agent && a.Version == version {
				last = a.State + " " + a.Reason + " " + a.Message
				for _, s := range states {
					if a.State == s {
						return a.Reason, a.Message
					}
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("agent %s, version %s: state still %q after %v, want %v", agent, version, last, d, states)
	return "", ""
}

// checkRolledBack waits for agent's rollback of version (reason
// unhealthy, a message containing why), then checks that the binary at
// bin is version running again and that failed.json, in the agent's
// stateDir, names version.
func (e *updateEnv) checkRolledBack(t *testing.T, agent, stateDir, version, why, bin, running string) {
	t.Helper()
	reason, msg := e.waitState(t, agent, version, 60*time.Second, "rolled_back")
	if reason != "unhealthy" || !strings.Contains(msg, why) {
		t.Fatalf("rollback of %s: reason %q message %q", version, reason, msg)
	}
	if got := binVersion(t, bin); got != running {
		t.Fatalf("agent binary version after the rollback of %s: got %q, want %s", version, got, running)
	}
	failed, err := os.ReadFile(filepath.Join(stateDir, "update", "failed.json"))
	if err != nil || !bytes.Contains(failed, []byte(`"`+version+`"`)) {
		t.Fatalf("failed.json after the rollback of %s: %s, %v", version, failed, err)
	}
}

func binVersion(t *testing.T, bin string) string {
	t.Helper()
	return mustRun(t, bin, "version", "--short")
}

// TestSelfUpdate: a v1 agent updates itself to v2 during a rollout while a
// stream is open to another agent of the same tenant; then a v3 that
// cannot start is rolled back to v2 and never offered again. The agent
// has status and debug listeners, whose addresses the trial of the new
// binary, which runs with the same config while the agent holds them,
// must leave alone.
func TestSelfUpdate(t *testing.T) {
	v1 := agentOfVersion(t, "1.0.0")
	v2 := agentOfVersion(t, "2.0.0")
	e := newUpdateEnv(t)
	r := e.relay
	other := startAgent(t, r, "acme", agentOpts{services: map[string]string{"echo": tcpService(t, echo)}})
	_ = other
	stateDir, id := enroll(t, r.agentAddr, r.token(t, "acme"))
	status := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	a := runAgent(t, stateDir, id, r.agentAddr, agentOpts{bin: v1, extra: e.updateYAML(", health_timeout: 30s, probation: 1s") +
		fmt.Sprintf("status_listen: %q\ndebug_listen: %q\n", status, fmt.Sprintf("127.0.0.1:%d", freePort(t)))})
	dialer := r.backend(t, "billing", "acme")
	conn := waitDial(t, dialer, "echo.acme.tether:1", 20*time.Second)
	defer conn.Close()
	echoLine := func(s string) {
		t.Helper()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintln(conn, s); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(s)+1)
		if _, err := io.ReadFull(conn, got); err != nil || string(got) != s+"\n" {
			t.Fatalf("echo through the other agent: got %q, %v", got, err)
		}
	}
	echoLine("before")

	e.publish(t, v2, "2.0.0")
	r.admin(t, "release", "rollout", "2.0.0", "--tenants", "acme")
	e.waitState(t, id, "2.0.0", 90*time.Second, "succeeded", "rolled_back", "refused", "failed")
	if reason, msg := e.waitState(t, id, "2.0.0", time.Second, "succeeded"); reason != "" {
		t.Fatalf("update to 2.0.0: %s %s", reason, msg)
	}
	if got := binVersion(t, v1); got != "2.0.0" {
		t.Fatalf("agent binary version after the update: got %q, want 2.0.0", got)
	}
	if _, err := os.Stat(v1 + ".previous"); err != nil {
		t.Fatalf("previous binary not kept: %v", err)
	}
	a.waitOutput(`"msg":"update succeeded"`, 10*time.Second)
	r.waitOutput(`"agent_version":"2.0.0"`, 10*time.Second)
	// The new binary, exec'd in place (the same pid), holds the state
	// directory's lock again: the old image's lock file was not passed on
	// to it, and it took the lock at its start.
	began := time.Now()
	wantRefusedAtOnce(t, start(t, "second agent", v1, "run", "--config", a.config), began, stateDir, a.Pid())
	if out := mustRun(t, v1, "status", "--addr", status); !strings.Contains(out, "2.0.0") {
		t.Fatalf("tether-agent status from the updated agent: %s", out)
	}
	echoLine("during and after") // the other agent's stream never noticed
	// The other agent (version "dev") is not offered 2.0.0: it has no keys
	// and refuses, and that is recorded too.
	if reason, _ := e.waitState(t, other.id, "2.0.0", 30*time.Second, "refused"); reason != "no_keys" {
		t.Fatalf("agent without keys: refused with %q, want no_keys", reason)
	}

	// A v3 that exits at once is rolled back; v2 keeps running. (Offered
	// once 2.0.0's probation, 1 s here, is over: during it the agent
	// refuses offers as busy.)
	a.waitOutput("ran through its probation", 20*time.Second)
	broken := filepath.Join(t.TempDir(), "broken")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho broken agent >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.publish(t, broken, "3.0.0")
	r.admin(t, "release", "rollout", "3.0.0", "--agents", id)
	e.checkRolledBack(t, id, stateDir, "3.0.0", "exit status 3", v1, "2.0.0")
	// Never offered again, even to a new session of the agent.
	a.stop(20 * time.Second)
	a.restart()
	a.waitOutput(`"msg":"connected to relay"`, 20*time.Second)
	time.Sleep(2 * time.Second) // several offer rounds
	if n := strings.Count(r.admin(t, "audit", "--agent", id, "--kind", "update.offer"), "3.0.0"); n != 1 {
		t.Fatalf("3.0.0 offered %d times, want once", n)
	}
	echoLine("end")
}

// TestSelfUpdateCrashLoopRolledBack: a new binary that passes its trial
// and confirms itself, then stops without a clean exit (killed here, as a
// crash ends it) at every start, is replaced by the previous binary at
// its third such stop within its probation: the version is recorded as
// failed and reported rolled_back, and the previous version serves. A
// clean stop in between is not counted. Before, nothing watched the binary
// once it had confirmed itself: the service manager restarted it for ever.
func TestSelfUpdateCrashLoopRolledBack(t *testing.T) {
	e, stateDir, id, a, v1 := startOnProbation(t)
	r := e.relay
	pendingOf := func() map[string]any {
		t.Helper()
		var p map[string]any
		raw, err := os.ReadFile(filepath.Join(stateDir, "update", "pending.json"))
		if err != nil || json.Unmarshal(raw, &p) != nil {
			t.Fatalf("pending.json on probation: %s, %v", raw, err)
		}
		return p
	}
	if p := pendingOf(); p["state"] != "probation" || p["running"] != true {
		t.Fatalf("pending.json after the update: %v; want on probation, running", p)
	}

	// A clean stop: not counted.
	if err := a.stop(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	if p := pendingOf(); p["running"] == true {
		t.Fatalf("pending.json after a clean stop: %v; want not running", p)
	}
	a.restart()
	waitCount(t, a.proc, onProbation, 2, 20*time.Second)
	if p := pendingOf(); p["unclean"] != nil {
		t.Fatalf("pending.json after a clean stop and a start: %v; want no unclean stop", p)
	}

	// Stops without a clean exit.
	for i := 1; i <= 3; i++ {
		a.kill()
		a.restart()
		if i < 3 {
			waitCount(t, a.proc, onProbation, 2+i, 20*time.Second)
			if p := pendingOf(); p["unclean"] != float64(i) {
				t.Fatalf("pending.json after unclean stop %d: %v", i, p)
			}
			if got := binVersion(t, v1); got != "2.0.0" {
				t.Fatalf("binary after unclean stop %d: %s, want 2.0.0 still", i, got)
			}
		}
	}
	e.checkRolledBack(t, id, stateDir, "2.0.0", "stopped without a clean exit", v1, "1.0.0")
	r.waitOutput(`"agent_version":"1.0.0"`, 10*time.Second)
}

// TestSelfUpdateRefusals: each hostile or unusable release is refused with
// a clear reason, and the running binary is never touched.
func TestSelfUpdateRefusals(t *testing.T) {
	v1 := agentOfVersion(t, "1.0.0")
	v2src := agentOfVersion(t, "2.0.0")
	e := newUpdateEnv(t)
	r := e.relay
	stateDir, id := enroll(t, r.agentAddr, r.token(t, "acme"))
	a := runAgent(t, stateDir, id, r.agentAddr, agentOpts{bin: v1, extra: e.updateYAML(", download_timeout: 3s")})
	sum := fileSum(t, v1)
	otherKey := t.TempDir()
	mustRun(t, bins.relay, "release", "keygen", "--out", otherKey)
	otherArch := "arm64"
	if runtime.GOARCH == "arm64" {
		otherArch = "amd64"
	}
	here := func(v string) string { return e.releaseDir(v, runtime.GOOS, runtime.GOARCH, "stable") }
	copyManifest := func(t *testing.T, from, to string) {
		for _, f := range []string{"manifest.json", "manifest.json.minisig", "tether-agent.minisig"} {
			copyFile(t, filepath.Join(from, f), filepath.Join(to, f), 0o600)
		}
	}
	for _, tc := range []struct {
		name, version, reason, msg string
		setup                      func(t *testing.T, version string) (cleanup func())
	}{
		{"unsigned", "1.1.1", "signature", "not signed", func(t *testing.T, v string) func() {
			e.publish(t, v2src, v)
			os.WriteFile(filepath.Join(here(v), "manifest.json.minisig"), nil, 0o600)
			return nil
		}},
		{"wrong key", "1.1.2", "key", "does not trust", func(t *testing.T, v string) func() {
			e.publish(t, v2src, v, "--key", filepath.Join(otherKey, "release.key"))
			return nil
		}},
		{"tampered binary", "1.1.3", "hash", "altered", func(t *testing.T, v string) func() {
			e.publish(t, v2src, v)
			p := filepath.Join(here(v), "tether-agent")
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 0xff
			os.WriteFile(p, b, 0o600)
			return nil
		}},
		{"tampered manifest", "1.1.4", "signature", "altered", func(t *testing.T, v string) func() {
			e.publish(t, v2src, v)
			p := filepath.Join(here(v), "manifest.json")
			b, _ := os.ReadFile(p)
			os.WriteFile(p, bytes.Replace(b, []byte(`"size":`), []byte(`"size":1`), 1), 0o600)
			return nil
		}},
		// Not offered at all: the agent's own refusal of an older version
		// (not_newer) is covered by protocol/release's tests.
		{"older version", "0.9.0", "", "", func(t *testing.T, v string) func() {
			e.publish(t, v2src, v)
			return nil
		}},
		{"expired manifest", "1.1.6", "expired", "expired", func(t *testing.T, v string) func() {
			e.publish(t, v2src, v, "--expires", "1s")
			time.Sleep(1500 * time.Millisecond)
			return nil
		}},
		{"other architecture", "1.1.7", "platform", "built for", func(t *testing.T, v string) func() {
			e.publish(t, v2src, v)
			e.publish(t, v2src, v, "--arch", otherArch)
			copyManifest(t, e.releaseDir(v, runtime.GOOS, otherArch, "stable"), here(v))
			return nil
		}},
		{"other channel", "1.1.8", "channel", "channel", func(t *testing.T, v string) func() {
			e.publish(t, v2src, v)
			e.publish(t, v2src, v, "--channel", "beta")
			copyManifest(t, e.releaseDir(v, runtime.GOOS, runtime.GOARCH, "beta"), here(v))
			return nil
		}},
		{"endless download", "1.1.9", "size", "more than", func(t *testing.T, v string) func() {
			e.publish(t, v2src, v)
			f, _ := os.OpenFile(filepath.Join(here(v), "tether-agent"), os.O_WRONLY|os.O_APPEND, 0)
			f.Write(make([]byte, 4<<20))
			f.Close()
			return nil
		}},
		{"very slow download", "1.1.10", "download", "too slow", func(t *testing.T, v string) func() {
			e.publish(t, v2src, v)
			p := filepath.Join(here(v), "tether-agent")
			os.Remove(p)
			if err := syscall.Mkfifo(p, 0o600); err != nil {
				t.Skipf("mkfifo: %v", err)
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				f, err := os.OpenFile(p, os.O_WRONLY, 0) // blocks until the relay reads
				if err != nil {
					return
				}
				defer f.Close()
				for {
					select {
					case <-stop:
						return
					case <-time.After(100 * time.Millisecond):
					}
					if _, err := f.Write([]byte{0}); err != nil {
						return
					}
				}
			})
			return func() {
				close(stop)
				// Unblock a writer still waiting for a reader.
				if f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
					defer f.Close()
				}
				wg.Wait()
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if cleanup := tc.setup(t, tc.version); cleanup != nil {
				defer cleanup()
			}
			r.admin(t, "release", "rollout", tc.version, "--agents", id)
			if tc.reason == "" {
				// An agent on a newer version is not offered the release:
				// ten offer rounds (--update-interval 300ms) pass without one.
				time.Sleep(3 * time.Second)
				for _, a := range e.status(t).Agents {
					if a.Agent == id && a.Version == tc.version {
						t.Fatalf("agent on 1.0.0 offered %s: state %q %q", tc.version, a.State, a.Reason)
					}
				}
				return
			}
			reason, msg := e.waitState(t, id, tc.version, 60*time.Second, "refused", "rolled_back", "failed", "succeeded")
			if reason != tc.reason || !strings.Contains(msg, tc.msg) {
				t.Fatalf("got %q %q, want reason %q and a message with %q", reason, msg, tc.reason, tc.msg)
			}
			if fileSum(t, v1) != sum {
				t.Fatal("the agent's binary changed")
			}
			select {
			case <-a.Done():
				t.Fatalf("agent exited: %v", a.Err())
			default:
			}
		})
	}
	if got := binVersion(t, v1); got != "1.0.0" {
		t.Fatalf("agent version: got %q, want 1.0.0", got)
	}
}

// TestRolloutHalts: a rollout of a release that fails on its first agent
// halts at its failure fraction before reaching the others.
func TestRolloutHalts(t *testing.T) {
	e := newUpdateEnv(t)
	r := e.relay
	var ids []string
	for range 3 {
		a := startAgent(t, r, "acme", agentOpts{bin: agentOfVersion(t, "1.0.0"), extra: e.updateYAML(", health_timeout: 5s")})
		ids = append(ids, a.id)
	}
	hang := filepath.Join(t.TempDir(), "hang")
	if err := os.WriteFile(hang, []byte("#!/bin/sh\nexec sleep 600\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.publish(t, hang, "1.5.0")
	r.admin(t, "release", "rollout", "1.5.0", "--tenants", "acme", "--halt-at", "0.5", "--batch", "1")
	deadline := time.Now().Add(60 * time.Second)
	var st updateStatus
	for {
		st = e.status(t)
		if len(st.Rollouts) > 0 && st.Rollouts[0].State == "halted" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout not halted: %+v", st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(st.Agents) != 1 || st.Agents[0].State != "rolled_back" || !strings.Contains(st.Agents[0].Message, "did not connect") {
		t.Fatalf("agents after the halt: %+v, want one rolled back", st.Agents)
	}
	if !slices.Contains(ids, st.Agents[0].Agent) {
		t.Fatalf("rolled-back agent %s is not one of %v", st.Agents[0].Agent, ids)
	}
	if !strings.Contains(st.Rollouts[0].Reason, "1 of 1") {
		t.Fatalf("halt reason %q", st.Rollouts[0].Reason)
	}
	time.Sleep(time.Second) // a few offer rounds
	if n := len(e.status(t).Agents); n != 1 {
		t.Fatalf("%d agents offered after the halt, want 1", n)
	}
	if out := r.admin(t, "audit", "--kind", "release.halt"); !strings.Contains(out, "1.5.0") {
		t.Fatalf("halt not audited: %s", out)
	}
}

// onProbation is what an agent logs as it starts a new version on
// probation.
const onProbation = "update: the new version is on probation"

// startOnProbation runs an agent of 1.0.0 (whose binary, at v1, a
// self-update replaces), rolls 2.0.0 out to it, and waits until 2.0.0
// runs on probation: the update environment, the agent's state directory
// and id, the running agent, and v1, which holds 2.0.0 now.
func startOnProbation(t *testing.T) (e *updateEnv, stateDir, id string, a *agentProc, v1 string) {
	t.Helper()
	v1 = agentOfVersion(t, "1.0.0")
	v2 := agentOfVersion(t, "2.0.0")
	e = newUpdateEnv(t)
	r := e.relay
	stateDir, id = enroll(t, r.agentAddr, r.token(t, "acme"))
	a = runAgent(t, stateDir, id, r.agentAddr, agentOpts{bin: v1, extra: e.updateYAML(", health_timeout: 30s")})
	e.publish(t, v2, "2.0.0")
	r.admin(t, "release", "rollout", "2.0.0", "--agents", id)
	if reason, msg := e.waitState(t, id, "2.0.0", 90*time.Second, "succeeded", "rolled_back", "refused", "failed"); reason != "" {
		t.Fatalf("update to 2.0.0: %s %s", reason, msg)
	}
	waitCount(t, a.proc, onProbation, 1, 20*time.Second)
	return e, stateDir, id, a, v1
}

// TestSelfUpdateReleaseRemoved: an agent told to update to a release that
// the relay no longer has when the agent asks for it (release remove
// landed between the offer and the fetch: here the copy's binary is gone,
// as a removal leaves it) is told so at once, and ends that update well
// within its download_timeout (2m here) with reason removed, saying the
// release was removed, in one log line and in its recorded state; it
// keeps its binary and runs on, does not record the version as failed
// (a later offer is taken), and is not offered the release again by the
// same rollout. Before, the relay sent nothing and the agent waited for
// the binary until its download_timeout ran out.
func TestSelfUpdateReleaseRemoved(t *testing.T) {
	const downloadTimeout = 2 * time.Minute
	v1 := agentOfVersion(t, "1.0.0")
	v2src := agentOfVersion(t, "2.0.0")
	e := newUpdateEnv(t)
	r := e.relay
	stateDir, id := enroll(t, r.agentAddr, r.token(t, "acme"))
	a := runAgent(t, stateDir, id, r.agentAddr, agentOpts{bin: v1, extra: e.updateYAML(fmt.Sprintf(", download_timeout: %v", downloadTimeout))})
	a.waitOutput(`"msg":"connected to relay"`, 20*time.Second)
	sum := fileSum(t, v1)

	e.publish(t, v2src, "1.2.0")
	if err := os.Remove(filepath.Join(e.releaseDir("1.2.0", runtime.GOOS, runtime.GOARCH, "stable"), "tether-agent")); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	r.admin(t, "release", "rollout", "1.2.0", "--agents", id)
	// Waited for as it happens, at most a tenth of the download timeout.
	reason, msg := e.waitState(t, id, "1.2.0", downloadTimeout/10, "refused", "failed", "rolled_back", "succeeded")
	took := time.Since(began)
	if reason != "removed" || !strings.Contains(msg, "release 1.2.0 was removed") {
		t.Fatalf("update to the removed release: reason %q, message %q; want removed, saying release 1.2.0 was removed", reason, msg)
	}
	t.Logf("the agent gave up on the removed release %v after the rollout started (download_timeout %v)", took.Round(time.Millisecond), downloadTimeout)
	a.waitOutput(`"reason":"removed"`, 10*time.Second)
	if n := strings.Count(a.Output(), `"msg":"update refused"`); n != 1 {
		t.Errorf("agent logged %d 'update refused' lines, want 1", n)
	}
	if fileSum(t, v1) != sum || binVersion(t, v1) != "1.0.0" {
		t.Fatal("the agent's binary changed")
	}
	if failed, _ := os.ReadFile(filepath.Join(stateDir, "update", "failed.json")); bytes.Contains(failed, []byte(`"1.2.0"`)) {
		t.Fatalf("failed.json names the removed release, which would refuse it when published again: %s", failed)
	}
	time.Sleep(2 * time.Second) // several offer rounds (--update-interval 300ms)
	if n := strings.Count(r.admin(t, "audit", "--agent", id, "--kind", "update.offer"), "1.2.0"); n != 1 {
		t.Fatalf("1.2.0 offered %d times by its rollout, want once", n)
	}
	select {
	case <-a.Done():
		t.Fatalf("agent exited: %v", a.Err())
	default:
	}
}
