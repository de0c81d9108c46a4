package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/installer"
)

// TestUninstallPurgesTheInstalledStateDir: uninstall --purge removes the
// state directory the installed config names, as install gave it to the
// service, not the default one; without an installed config, the default.
// A config this version no longer accepts (a key of another version)
// still names it: it used to be purged the default instead, leaving the
// agent's identity behind. One that cannot be parsed, or names no
// absolute state_dir, is refused with what to do, not guessed at.
func TestUninstallPurgesTheInstalledStateDir(t *testing.T) {
	dir := t.TempDir()
	l := installer.LinuxLayout(dir)
	if err := os.MkdirAll(filepath.Dir(l.ConfigPath), 0o700); err != nil {
		t.Fatal(err)
	}
	if got, err := installedLayout(l); got != l || err != nil {
		t.Fatalf("no installed config: %+v, %v; want the default layout", got, err)
	}
	custom := filepath.Join(dir, "srv", "tether-state")
	for name, cfg := range map[string]string{
		"valid":                    "relays: [relay.example:443]\nstate_dir: " + custom + "\nservices:\n  web: 127.0.0.1:8080\n",
		"key of another version":   "relays: [relay.example:443]\nstate_dir: " + custom + "\nservices:\n  web: 127.0.0.1:8080\nsetting_of_another_version: 1\n",
		"not valid for this agent": "relays: [relay.example]\nstate_dir: " + custom + "\n",
	} {
		if err := os.WriteFile(l.ConfigPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := installedLayout(l)
		if err != nil || got.StateDir != custom || got.UpdateDir != filepath.Join(custom, "update") || got.ConfigPath != l.ConfigPath || got.BinaryPath != l.BinaryPath {
			t.Fatalf("installed config (%s) with state_dir %s: layout %+v, %v", name, custom, got, err)
		}
	}
	for name, cfg := range map[string]string{
		"unparseable":        "state_dir: [\n",
		"no state_dir":       "relays: [relay.example:443]\n",
		"relative state_dir": "state_dir: state\n",
	} {
		if err := os.WriteFile(l.ConfigPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		if got, err := installedLayout(l); err == nil || !strings.Contains(err.Error(), "state directory to purge is unknown") ||
			!strings.Contains(err.Error(), "run uninstall --purge again") {
			t.Fatalf("installed config (%s): %+v, %v; want a refusal saying what to do", name, got, err)
		}
	}
}

// TestUninstallPurgeRefusedWhileHeld: the purge refuses a state directory
// another agent process holds (an open file of its own here: the lock
// belongs to the open file), saying what to do and removing nothing, and
// purges a free one whole; a missing one is already purged.
func TestUninstallPurgeRefusedWhileHeld(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	writeStateFiles(t, dir, agent.IdentityFile, "agent.key", "update/pending.json")
	held, err := agent.LockStateDir(dir, "run")
	if err != nil {
		t.Fatal(err)
	}
	err = purgeStateDir(dir, nil)
	if busy, ok := errors.AsType[*agent.StateDirBusyError](err); !ok || busy.PID != os.Getpid() ||
		!strings.Contains(err.Error(), "not removing the identity of an agent that is running") || !strings.Contains(err.Error(), "uninstall --purge again") {
		t.Fatalf("purge of a held state directory: %v", err)
	}
	for _, name := range []string{agent.IdentityFile, "agent.key", "update/pending.json"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("a refused purge removed %s: %v", name, err)
		}
	}
	held.Release()
	if err := purgeStateDir(dir, nil); err != nil {
		t.Fatalf("purge of a free state directory: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the purged state directory is still there (%v)", err)
	}
	if err := purgeStateDir(dir, nil); err != nil {
		t.Fatalf("purge of a missing state directory: %v", err)
	}
}

// TestUninstallPurgeLeavesNothingToRunOn: the purge removes the agent's
// identity while it holds the state directory's lock, so an agent started
// in the moment the purge lets the lock go (by hand, or a service manager
// that had not given up) finds nothing to run on, rather than taking the
// lock, reading the identity and then losing it to the removal while it
// runs. It used to check the lock, let it go, and then remove the
// directory.
func TestUninstallPurgeLeavesNothingToRunOn(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	writeStateFiles(t, dir, agent.IdentityFile, "agent.key", "agent.crt")
	ran := false
	err := purgeStateDir(dir, func() {
		ran = true
		l, err := agent.LockStateDir(dir, "run")
		if err == nil {
			defer l.Release()
		}
		if _, serr := os.Stat(filepath.Join(dir, agent.IdentityFile)); !errors.Is(serr, os.ErrNotExist) {
			t.Errorf("an agent started as the purge let the lock go found its identity (lock: %v, identity: %v)", err, serr)
		}
	})
	if err != nil {
		t.Fatalf("purge: %v", err)
	}
	if !ran {
		t.Fatal("the purge never let the lock go")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the purged state directory is still there (%v)", err)
	}
}

func writeStateFiles(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, name := range names {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestUninstallPurgeRefusesAStrangeDirectory: a state_dir that holds
// files but no agent identity (a system directory named by mistake) is
// not purged, and not written to (no agent.lock left in it); an agent's
// state directory, and an empty one, are.
func TestUninstallPurgeRefusesAStrangeDirectory(t *testing.T) {
	strange := t.TempDir()
	for _, name := range []string{"postgresql", "dpkg", "apt"} {
		if err := os.Mkdir(filepath.Join(strange, name), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	err := purgeStateDir(strange, nil)
	if err == nil || !strings.Contains(err.Error(), "holds no agent identity (agent.json)") || !strings.Contains(err.Error(), "apt, dpkg, postgresql") {
		t.Fatalf("purge of a directory that is not an agent's: %v", err)
	}
	ents, _ := os.ReadDir(strange)
	if len(ents) != 3 {
		t.Errorf("a refused purge changed a directory that is not an agent's: %d entries, want 3 (no %s left in it)", len(ents), agent.StateLockFile)
	}
	state := filepath.Join(t.TempDir(), "state")
	writeStateFiles(t, state, agent.IdentityFile, "agent.key", "update/pending.json")
	if err := purgeStateDir(state, nil); err != nil {
		t.Fatalf("purge of an agent's state directory: %v", err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := purgeStateDir(empty, nil); err != nil {
		t.Fatalf("purge of an empty state directory: %v", err)
	}
	for _, d := range []string{state, empty} {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("purged %s is still there (%v)", d, err)
		}
	}
}
