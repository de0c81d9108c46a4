package main

import (
	"bytes"
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
// service, not the default one; without an installed config, or with one
// that cannot be read (said), the default stays.
func TestUninstallPurgesTheInstalledStateDir(t *testing.T) {
	dir := t.TempDir()
	l := installer.LinuxLayout(dir)
	if err := os.MkdirAll(filepath.Dir(l.ConfigPath), 0o700); err != nil {
		t.Fatal(err)
	}
	var w bytes.Buffer
	if got := installedLayout(l, &w); got != l || w.Len() != 0 {
		t.Fatalf("no installed config: %+v (%q), want the default layout", got, w.String())
	}
	custom := filepath.Join(dir, "srv", "tether-state")
	cfg := "relays: [relay.example:443]\nstate_dir: " + custom + "\nservices:\n  web: 127.0.0.1:8080\n"
	if err := os.WriteFile(l.ConfigPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	got := installedLayout(l, &w)
	if got.StateDir != custom || got.UpdateDir != filepath.Join(custom, "update") || got.ConfigPath != l.ConfigPath || got.BinaryPath != l.BinaryPath {
		t.Fatalf("installed config with state_dir %s: layout %+v", custom, got)
	}
	if err := os.WriteFile(l.ConfigPath, []byte("state_dir: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := installedLayout(l, &w); got.StateDir != l.StateDir || !strings.Contains(w.String(), "cannot be read") {
		t.Fatalf("unreadable installed config: %+v (%q)", got, w.String())
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
