//go:build linux

package agent

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/release"
)

// Crash tests. The real code runs in a child process (this test binary,
// TestFileOpChild), which strace kills with SIGKILL as it enters its Nth
// rename, its Nth link or its Nth unlink (strace counts each system call
// apart): for each of the three, once for every N up to the one where the
// operation completes, so at every point between two changes of the
// directory. What each kill leaves must be a state the agent can start
// from. The same children run under strace without a kill show the order
// in which the changes are made durable (fsync), and under a 1 MiB tmpfs
// what a full disk leaves.

const (
	childOpEnv  = "TETHER_FILE_OP"
	childDirEnv = "TETHER_FILE_OP_DIR"
)

// dirCallSets are the system calls that change a directory, by kind (Go
// uses one call of each set); "?" accepts their absence on architectures
// that have only the *at forms (arm64).
var dirCallSets = []string{"?rename,renameat,renameat2", "?link,linkat", "?unlink,unlinkat"}

var dirCalls = strings.Join(dirCallSets, ",")

// childInput is what a test hands its child, in DIR/input.json.
type childInput struct {
	AgentID   string           `json:"agent_id"`
	Key       []byte           `json:"key"`
	Cert      []byte           `json:"cert"`
	CA        []byte           `json:"ca"`
	Manifest  release.Manifest `json:"manifest"`
	PublicKey string           `json:"public_key"`
	Signature []byte           `json:"signature"`
}

// Paths in a child's directory.
func childState(dir string) string  { return filepath.Join(dir, "state") }
func childUpdate(dir string) string { return filepath.Join(dir, "update") }
func childBin(dir string) string    { return filepath.Join(dir, "bin") }
func childExe(dir string) string    { return filepath.Join(dir, "bin", "tether-agent") }

func writeChildInput(t *testing.T, dir string, in childInput) {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "input.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestFileOpChild is no test of its own: it is the child the tests here and
// in update_crash_linux_test.go run, doing the operation TETHER_FILE_OP on
// TETHER_FILE_OP_DIR.
func TestFileOpChild(t *testing.T) {
	op := os.Getenv(childOpEnv)
	if op == "" {
		t.Skip("the child process of the crash, durability and full-disk tests")
	}
	// Every call strace counts is made by this one thread, so that its
	// count (per thread) is the operation's.
	runtime.LockOSThread()
	dir := os.Getenv(childDirEnv)
	raw, err := os.ReadFile(filepath.Join(dir, "input.json"))
	if err != nil {
		t.Fatal(err)
	}
	var in childInput
	if err := json.Unmarshal(raw, &in); err != nil {
		t.Fatal(err)
	}
	u := &updater{log: slog.New(slog.DiscardHandler), dir: childUpdate(dir), exe: childExe(dir)}
	switch op {
	case "enrol":
		s := &State{Dir: childState(dir), AgentID: in.AgentID, Tenant: "acme", TrustDomain: "tether.internal", Relay: "relay:7443", EnrolledAt: time.Now().UTC()}
		err = s.save(in.Key, in.Cert, in.CA)
	case "renew":
		var s *State
		if s, err = LoadState(childState(dir)); err == nil {
			err = s.replaceKeyPair(in.Key, in.Cert, in.CA)
		}
	case "apply":
		err = applyChild(u, in)
	case "rollback":
		err = u.restorePrevious(&pending{Binary: u.exe, Previous: u.exe + previousSuffix})
	case "pending":
		if err = os.MkdirAll(u.dir, 0o700); err == nil {
			err = u.savePending(&pending{ID: "offer-1", From: "1.0.0", To: "2.0.0", State: "trial", Binary: u.exe, Previous: u.exe + previousSuffix})
		}
	case "apply-full-disk":
		// DIR/bin is a 1 MiB tmpfs here: fill it, then apply.
		if err := os.WriteFile(u.exe, []byte("old binary"), 0o755); err != nil {
			t.Fatal(err)
		}
		fillDisk(t, filepath.Join(childBin(dir), "filler"))
		err = applyChild(u, in)
		if !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("apply on a full disk: %v; want ENOSPC", err)
		}
		if b, rerr := os.ReadFile(u.exe); rerr != nil || string(b) != "old binary" {
			t.Errorf("binary after the failed apply: %.20q, %v; want the old binary", b, rerr)
		}
		ents, _ := os.ReadDir(childBin(dir))
		for _, e := range ents {
			if e.Name() != "tether-agent" && e.Name() != "filler" {
				t.Errorf("%s left in the binary's directory by the failed apply", e.Name())
			}
		}
		return
	default:
		t.Fatalf("unknown operation %q", op)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func applyChild(u *updater, in childInput) error {
	keys, err := release.ParseKeys([]string{in.PublicKey})
	if err != nil {
		return err
	}
	return u.apply(filepath.Join(u.dir, unverifiedFile), in.Manifest, keys[0], in.Signature)
}

func fillDisk(t *testing.T, path string) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
}

// needStrace returns strace's path, or skips the test.
func needStrace(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace is not installed (scripts/deps.sh installs it): this test kills the operation with it at each change of its files")
	}
	if out, err := exec.Command(path, "-f", "-qq", "-o", "/dev/null", "true").CombinedOutput(); err != nil {
		t.Skipf("strace cannot trace processes here (%v: %s): this test kills the operation with it at each change of its files", err, bytes.TrimSpace(out))
	}
	return path
}

// childCommand runs TestFileOpChild for op on dir, under the command
// line wrap (strace, unshare …) followed by the test binary.
func childCommand(op, dir string, wrap ...string) *exec.Cmd {
	args := append(wrap, os.Args[0], "-test.run=^TestFileOpChild$", "-test.count=1", "-test.v")
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), childOpEnv+"="+op, childDirEnv+"="+dir)
	return cmd
}

// crashEverywhere runs op in a child killed as it enters its first rename,
// then its second, and so on until one run completes; then the same with
// its links, and with its unlinks. prepare fills a new directory for each
// run; check judges what the run left (done: the operation completed;
// at: the call it was killed at).
func crashEverywhere(t *testing.T, op string, prepare func(t *testing.T, dir string), check func(t *testing.T, dir, at string, done bool)) {
	strace := needStrace(t)
	for _, calls := range dirCallSets {
		kind := strings.Trim(strings.Split(calls, ",")[0], "?")
		for n := 1; ; n++ {
			if n > 100 {
				t.Fatalf("%s: still killed at %s %d", op, kind, n)
			}
			dir := t.TempDir()
			prepare(t, dir)
			cmd := childCommand(op, dir, strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace="+calls,
				"-e", "inject="+calls+":signal=KILL:when="+strconv.Itoa(n))
			out, err := cmd.CombinedOutput()
			at := kind + " " + strconv.Itoa(n)
			var ee *exec.ExitError
			switch {
			case err == nil:
				check(t, dir, at, true)
			case errors.As(err, &ee) && killed(ee):
				check(t, dir, at, false)
			default:
				t.Fatalf("%s child, to be killed at %s: %v\n%s", op, at, err, out)
			}
			if t.Failed() {
				return
			}
			if err == nil {
				t.Logf("%s: killed at each of its %d %ss, then completed", op, n-1, kind)
				break
			}
		}
	}
}

func killed(ee *exec.ExitError) bool {
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// crashIdentity is an identity for the crash tests: key, certificate for
// agent id from root, and the root.
func crashIdentity(t *testing.T, root testRoot, id string) (keyPEM, certPEM []byte, cert *x509.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	cert = root.issue(t, identity.Agent{TrustDomain: "tether.internal", Tenant: "acme", ID: id}, key)
	return pemBlock("PRIVATE KEY", kder), pemBlock("CERTIFICATE", cert.Raw), cert
}

// enrolledDir writes the identity of agent a1 into DIR/state, as an
// enrolment does.
func enrolledDir(t *testing.T, dir string, keyPEM, certPEM, caPEM []byte) {
	t.Helper()
	s := &State{Dir: childState(dir), AgentID: "a1", Tenant: "acme", TrustDomain: "tether.internal", Relay: "relay:7443", EnrolledAt: time.Now().UTC()}
	if err := s.save(keyPEM, certPEM, caPEM); err != nil {
		t.Fatal(err)
	}
}

// TestEnrolForceCrash: `enroll --force` over an enrolled agent (a1), killed
// at any point, leaves one whole identity, a1's or the new agent a2's;
// once the new one is complete on disk it is the one that loads. Enrolling
// again afterwards works. (Files written one after another left a1's
// identity with a2's key, or a2's certificate with a1's agent.json.)
func TestEnrolForceCrash(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	ca := pemBlock("CERTIFICATE", root.cert.Raw)
	k1, c1, cert1 := crashIdentity(t, root, "a1")
	k2, c2, cert2 := crashIdentity(t, root, "a2")
	k3, c3, _ := crashIdentity(t, root, "a3")
	crashEverywhere(t, "enrol", func(t *testing.T, dir string) {
		enrolledDir(t, dir, k1, c1, ca)
		writeChildInput(t, dir, childInput{AgentID: "a2", Key: k2, Cert: c2, CA: ca})
	}, func(t *testing.T, dir, at string, done bool) {
		st, err := LoadState(childState(dir))
		if err != nil {
			t.Errorf("enrolment killed at %s: the state does not load: %v", at, err)
			return
		}
		switch {
		case st.AgentID == "a1" && st.Cert.Leaf.Equal(cert1) && !done:
		case st.AgentID == "a2" && st.Cert.Leaf.Equal(cert2):
		default:
			t.Errorf("enrolment killed at %s (completed: %v): agent %s with certificate %x loads; want a1's whole identity or a2's", at, done, st.AgentID, st.Cert.Leaf.SerialNumber)
		}
		if again, err := LoadState(childState(dir)); err != nil || again.AgentID != st.AgentID {
			t.Errorf("enrolment killed at %s: loaded %s, then %v, %v", at, st.AgentID, again, err)
		}
		s := &State{Dir: childState(dir), AgentID: "a3", Tenant: "acme", TrustDomain: "tether.internal", Relay: "relay:7443"}
		if err := s.save(k3, c3, ca); err != nil {
			t.Errorf("enrolling again after a kill at %s: %v", at, err)
		} else if st, err := LoadState(childState(dir)); err != nil || st.AgentID != "a3" {
			t.Errorf("enrolling again after a kill at %s: %v, %v", at, st, err)
		}
	})
}

// TestRenewCrash: a renewal killed at any point leaves agent a1 with its
// old key and certificate or its new ones.
func TestRenewCrash(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	ca := pemBlock("CERTIFICATE", root.cert.Raw)
	k1, c1, cert1 := crashIdentity(t, root, "a1")
	k2, c2, cert2 := crashIdentity(t, root, "a1")
	crashEverywhere(t, "renew", func(t *testing.T, dir string) {
		enrolledDir(t, dir, k1, c1, ca)
		writeChildInput(t, dir, childInput{AgentID: "a1", Key: k2, Cert: c2, CA: ca})
	}, func(t *testing.T, dir, at string, done bool) {
		st, err := LoadState(childState(dir))
		if err != nil {
			t.Errorf("renewal killed at %s: the state does not load: %v", at, err)
			return
		}
		if !(st.Cert.Leaf.Equal(cert1) && !done) && !st.Cert.Leaf.Equal(cert2) {
			t.Errorf("renewal killed at %s (completed: %v): certificate %x loads; want the old or the new one", at, done, st.Cert.Leaf.SerialNumber)
		}
	})
}

// traceLine is one system call in strace's output (-y: descriptors with
// their paths).
var traceLine = regexp.MustCompile(`^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)`)

var quoted = regexp.MustCompile(`"((?:[^"\\]|\\.)*)"`)

var fdPath = regexp.MustCompile(`^\d+<(.*)>$`)

// checkDurableOrder runs op in a child under strace and checks, in the
// system calls it made, that the directory watch (under the child's
// directory) is synced after every rename or link into it, before the
// next one and before op returns, so that a power loss cannot keep a
// later change and lose an earlier one; and that the file named by
// syncedFirst (when not empty) is synced before it is renamed.
func checkDurableOrder(t *testing.T, op, watch string, prepare func(t *testing.T, dir string), syncedFirst func(dir string) string) {
	t.Helper()
	strace := needStrace(t)
	dir := t.TempDir()
	prepare(t, dir)
	log := filepath.Join(t.TempDir(), "trace")
	cmd := childCommand(op, dir, strace, "-f", "-qq", "-y", "-o", log, "-e", "trace="+dirCalls+",fsync,fdatasync")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s child: %v\n%s", op, err, out)
	}
	f, err := os.Open(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	watch = filepath.Join(dir, watch)
	first := ""
	if syncedFirst != nil {
		first = syncedFirst(dir)
	}
	var unsynced []string // renames and links into watch since its last sync
	firstSynced, changes := false, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := traceLine.FindStringSubmatch(sc.Text())
		if m == nil || m[3] != "0" {
			continue
		}
		call, args := m[1], m[2]
		switch {
		case strings.HasPrefix(call, "rename") || strings.HasPrefix(call, "link"):
			q := quoted.FindAllStringSubmatch(args, -1)
			if len(q) < 2 {
				t.Fatalf("cannot read %s", sc.Text())
			}
			from, to := q[0][1], q[len(q)-1][1]
			if filepath.Dir(to) != watch {
				continue
			}
			if len(unsynced) > 0 {
				t.Errorf("%s: %s %s → %s while %v is not yet synced to disk", op, call, filepath.Base(from), filepath.Base(to), unsynced)
			}
			if from == first && !firstSynced {
				t.Errorf("%s: %s is renamed before its bytes are synced to disk", op, filepath.Base(first))
			}
			unsynced = append(unsynced, filepath.Base(from)+" → "+filepath.Base(to))
			changes++
		case call == "fsync" || call == "fdatasync":
			if p := fdPath.FindStringSubmatch(args); p != nil && p[1] == watch {
				unsynced = nil
			} else if p != nil && p[1] == first {
				firstSynced = true
			}
		}
	}
	if len(unsynced) > 0 {
		t.Errorf("%s: returned with %v not synced to disk", op, unsynced)
	}
	if changes == 0 {
		t.Errorf("%s: no rename or link into %s seen in the trace", op, watch)
	}
}

// TestStateChangesDurableInOrder: an enrolment and a renewal sync the
// state directory after each rename into it, so that a power loss cannot
// keep a renewal's new certificate and lose its new key, or keep an
// enrolment's agent.json and lose its key.
func TestStateChangesDurableInOrder(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	ca := pemBlock("CERTIFICATE", root.cert.Raw)
	k1, c1, _ := crashIdentity(t, root, "a1")
	t.Run("enrol", func(t *testing.T) {
		k2, c2, _ := crashIdentity(t, root, "a2")
		checkDurableOrder(t, "enrol", "state", func(t *testing.T, dir string) {
			enrolledDir(t, dir, k1, c1, ca)
			writeChildInput(t, dir, childInput{AgentID: "a2", Key: k2, Cert: c2, CA: ca})
		}, nil)
	})
	t.Run("renew", func(t *testing.T) {
		k2, c2, _ := crashIdentity(t, root, "a1")
		checkDurableOrder(t, "renew", "state", func(t *testing.T, dir string) {
			enrolledDir(t, dir, k1, c1, ca)
			writeChildInput(t, dir, childInput{AgentID: "a1", Key: k2, Cert: c2, CA: ca})
		}, nil)
	})
}
