package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay/admin"
)

// release status, in both binaries, names the update states and the page
// size the relay has.
func TestReleaseStatusMatchesTheRelay(t *testing.T) {
	if !slices.Equal(cli.UpdateStates, admin.UpdateStates) {
		t.Errorf("cli.UpdateStates = %v, the relay's %v", cli.UpdateStates, admin.UpdateStates)
	}
	if cli.DefaultUpdatePage != admin.DefaultUpdatePage {
		t.Errorf("cli.DefaultUpdatePage = %d, the relay's %d", cli.DefaultUpdatePage, admin.DefaultUpdatePage)
	}
}

// release remove, against a data directory: refused, naming the rollout,
// while the active rollout offers the version; once another rollout
// supersedes it, it removes the version from the store and the data
// directory's copy, and keeps the binary another release shares.
func TestReleaseRemove(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	run := func(want int, args ...string) string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		root := newRoot(cli.BuildInfo{Program: prog}, &stdout, &stderr)
		if code := cli.Execute(context.Background(), root, append(args, "--data-dir", data), &stderr); code != want {
			t.Fatalf("%v: exit %d, want %d; stderr %q", args, code, want, stderr.String())
		}
		return stdout.String() + stderr.String()
	}
	run(cli.ExitOK, "init")
	bin := filepath.Join(dir, "tether-agent")
	if err := os.WriteFile(bin, []byte("the same agent binary for two versions"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	if err := keygen(filepath.Join(dir, "keys"), &stderr); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"1.0.0", "1.1.0"} {
		run(cli.ExitOK, "release", "publish", "--file", bin, "--version", v, "--os", "linux", "--arch", "amd64", "--key", filepath.Join(dir, "keys", "release.key"))
	}
	copyOf := func(v string) string { return filepath.Join(data, "releases", v, "linux-amd64-stable") }
	for _, v := range []string{"1.0.0", "1.1.0"} {
		if _, err := os.Stat(filepath.Join(copyOf(v), "tether-agent")); err != nil {
			t.Fatalf("copy of %s: %v", v, err)
		}
	}
	run(cli.ExitOK, "release", "rollout", "1.0.0", "--percent", "100")
	if out := run(cli.ExitFailure, "release", "remove", "1.0.0", "--force"); !strings.Contains(out, "rollout 1 offers it") {
		t.Fatalf("removal of the active rollout's release: %q, want a refusal naming rollout 1", out)
	}
	run(cli.ExitOK, "release", "rollout", "1.1.0", "--percent", "100")
	out := run(cli.ExitOK, "release", "remove", "1.0.0")
	if !strings.Contains(out, "removed release 1.0.0 (1 platforms and channels): 0 binaries") {
		t.Errorf("release remove: %q, want 1.0.0 removed with no binary (1.1.0 shares it)", out)
	}
	if _, err := os.Stat(filepath.Join(data, "releases", "1.0.0")); !os.IsNotExist(err) {
		t.Errorf("the data directory's copy of 1.0.0: %v, want it gone", err)
	}
	if _, err := os.Stat(filepath.Join(copyOf("1.1.0"), "tether-agent")); err != nil {
		t.Errorf("copy of 1.1.0: %v", err)
	}
	if list := run(cli.ExitOK, "release", "list"); strings.Contains(list, "1.0.0") || !strings.Contains(list, "1.1.0") {
		t.Errorf("release list after the removal:\n%s", list)
	}
	run(cli.ExitFailure, "release", "remove", "1.0.0")
}
