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

// TestUninstallPurgeRefusedWhileHeld: the purge's check refuses a state
// directory another agent process holds (an open file of its own here:
// the lock belongs to the open file), saying what to do, and lets a free
// or missing one go.
func TestUninstallPurgeRefusedWhileHeld(t *testing.T) {
	dir := t.TempDir()
	held, err := agent.LockStateDir(dir, "run")
	if err != nil {
		t.Fatal(err)
	}
	err = stateDirFree(dir)
	if busy, ok := errors.AsType[*agent.StateDirBusyError](err); !ok || busy.PID != os.Getpid() ||
		!strings.Contains(err.Error(), "not removing the identity of an agent that is running") || !strings.Contains(err.Error(), "uninstall --purge again") {
		t.Fatalf("purge of a held state directory: %v", err)
	}
	held.Release()
	if err := stateDirFree(dir); err != nil {
		t.Fatalf("purge of a free state directory: %v", err)
	}
	if err := stateDirFree(filepath.Join(dir, "missing")); err != nil {
		t.Fatalf("purge of a missing state directory: %v", err)
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
	err := stateDirFree(strange)
	if err == nil || !strings.Contains(err.Error(), "holds no agent identity (agent.json)") || !strings.Contains(err.Error(), "apt, dpkg, postgresql") {
		t.Fatalf("purge of a directory that is not an agent's: %v", err)
	}
	if _, err := os.Stat(filepath.Join(strange, agent.StateLockFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the check left %s in a directory that is not an agent's (%v)", agent.StateLockFile, err)
	}
	state := t.TempDir()
	for _, name := range []string{agent.IdentityFile, "agent.key", "update"} {
		if err := os.WriteFile(filepath.Join(state, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := stateDirFree(state); err != nil {
		t.Fatalf("purge of an agent's state directory: %v", err)
	}
	if err := stateDirFree(t.TempDir()); err != nil {
		t.Fatalf("purge of an empty state directory: %v", err)
	}
}
