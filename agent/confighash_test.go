package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// The config hash in the report is keyed by a secret of the agent's,
// kept in its state directory (0600) and the same at the next start: the
// relay, which sees the hash and the service names, cannot recompute it
// for guesses of the services' internal addresses. Agents with the same
// services report different hashes.
func TestConfigHashKeyed(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	svcs := map[string]Service{"db": {Address: "10.0.37.5:5432"}}
	a.services.Store(&svcs)
	sent := a.Report().ConfigHash
	// What the relay computes for its right guess, as an unkeyed hash of
	// the canonical form would let it.
	raw, _ := json.Marshal(map[string]any{"db": map[string]any{"address": "10.0.37.5:5432", "backends": []string{}}})
	sum := sha256.Sum256(raw)
	if guess := hex.EncodeToString(sum[:]); sent == guess {
		t.Fatalf("config_hash %s is the unkeyed SHA-256 of the services: the relay can test guesses of their addresses offline", sent)
	}
	if len(sent) != 64 {
		t.Errorf("config_hash %q: want 64 hex digits", sent)
	}
	keyPath := filepath.Join(a.cfg.StateDir, configHashKeyFile)
	fi, err := os.Stat(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", keyPath, fi.Mode().Perm())
	}
	again, err := New(a.cfg) // the next start
	if err != nil {
		t.Fatal(err)
	}
	again.services.Store(&svcs)
	if h := again.Report().ConfigHash; h != sent {
		t.Errorf("after a restart the hash is %s, was %s", h, sent)
	}
	other := enrolled(t, root, root)
	other.services.Store(&svcs)
	if h := other.Report().ConfigHash; h == sent {
		t.Error("two agents with the same services report the same hash")
	}
	// A key file cut short by a crash is replaced (once), not fatal.
	if err := os.WriteFile(keyPath, []byte("12ab"), 0o600); err != nil {
		t.Fatal(err)
	}
	if key, err := readOrMakeConfigHashKey(keyPath); err != nil || len(key) != sha256.Size {
		t.Fatalf("broken key file: %x, %v", key, err)
	}
	if key, err := readOrMakeConfigHashKey(keyPath); err != nil || ConfigHash(key, svcs) == sent {
		t.Errorf("after replacing a broken key: %v, or the old hash", err)
	}
}

// The report tells the relay that the config file has errors and where
// (lines, top-level settings), never the file's values; the status, on
// the tenant's machine, keeps the whole message.
func TestConfigErrorForRelayHasNoValues(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	path := filepath.Join(t.TempDir(), "agent.yaml")
	for _, c := range []struct {
		name, file string
		where      []string
	}{
		{"parse", "state_dir: /x\nservices:\n  db: 10.0.37.5\n  hr: {address: hr.corp.internal:443, backends: [Payroll]}\nreconnect: {initial: hunter2}\n", []string{"does not parse", "line 5"}},
		{"validate", "state_dir: /x\nservices:\n  db: 10.0.37.5\n  hr: {address: hr.corp.internal:443, backends: [\"Pay*roll*\"]}\nlog: {level: hunter2}\n", []string{"does not validate", "services", "log"}},
	} {
		a.reloadConfig(path, []byte(c.file))
		full := a.Status().ConfigError
		sent := a.Report().ConfigError
		t.Logf("%s: the relay is told %q", c.name, sent)
		if full == "" || sent == "" {
			t.Fatalf("%s: status %q, report %q: want the error in both", c.name, full, sent)
		}
		for _, secret := range []string{"10.0.37.5", "hr.corp.internal", "Payroll", "Pay*roll*", "hunter2"} {
			if strings.Contains(sent, secret) {
				t.Errorf("%s: the report's config_error %q carries %q from the tenant's file", c.name, sent, secret)
			}
		}
		for _, w := range c.where {
			if !strings.Contains(sent, w) {
				t.Errorf("%s: the report's config_error %q does not say %q", c.name, sent, w)
			}
		}
		if !strings.Contains(full, "hunter2") {
			t.Errorf("%s: the status's config_error %q lost the detail", c.name, full)
		}
	}
	a.reloadConfig(path, []byte("state_dir: /x\nservices:\n  db: 10.0.37.5:5432\n"))
	if e := a.Report().ConfigError; e != "" {
		t.Errorf("after a valid file: %q", e)
	}
}
