package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
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
