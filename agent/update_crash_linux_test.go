//go:build linux

package agent

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/release"
)

// Crash, durability and full-disk tests of the self-update's replacement
// of the binary; the children and helpers are in crash_linux_test.go.

// signedRelease is a signed release binary and the input of a child that
// applies it.
func signedRelease(t *testing.T) ([]byte, childInput) {
	t.Helper()
	privText, pubText, err := release.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	priv, err := release.ParsePrivateKey(privText)
	if err != nil {
		t.Fatal(err)
	}
	bin := bytes.Repeat([]byte("new binary "), 16<<10)
	sum := sha256.Sum256(bin)
	m := release.Manifest{Version: "2.0.0", OS: runtime.GOOS, Arch: runtime.GOARCH, Channel: "stable", Size: int64(len(bin)), SHA256: hex.EncodeToString(sum[:]), Expires: time.Now().Add(time.Hour)}
	signed, err := release.Sign(priv, m, bin)
	if err != nil {
		t.Fatal(err)
	}
	return bin, childInput{Manifest: m, PublicKey: string(pubText), Signature: signed.BinarySignature}
}

// prepareApply puts the old binary at DIR/bin/tether-agent and the
// verified download of bin in DIR/update.
func prepareApply(t *testing.T, dir string, bin []byte, in childInput, binary bool) {
	t.Helper()
	for _, d := range []string{childBin(dir), childUpdate(dir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if binary {
		if err := os.WriteFile(childExe(dir), []byte("old binary"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(childUpdate(dir), unverifiedFile), bin, 0o600); err != nil {
		t.Fatal(err)
	}
	writeChildInput(t, dir, in)
}

// TestUpdateApplyCrash: an update killed at any point while it replaces
// the binary leaves a whole executable binary at the service's path, the
// old one or the new one, and with the new one the old one as
// <binary>.previous for a rollback. (Renaming the binary away and the new
// one in left, killed between the two, no binary at all.)
func TestUpdateApplyCrash(t *testing.T) {
	bin, in := signedRelease(t)
	crashEverywhere(t, "apply", func(t *testing.T, dir string) {
		prepareApply(t, dir, bin, in, true)
	}, func(t *testing.T, dir, at string, done bool) {
		exe := childExe(dir)
		b, err := os.ReadFile(exe)
		fi, serr := os.Stat(exe)
		switch {
		case err != nil || serr != nil:
			t.Errorf("update killed at %s: no binary at %s: %v", at, exe, err)
			return
		case fi.Mode().Perm() != 0o755:
			t.Errorf("update killed at %s: binary mode %v, want 0755", at, fi.Mode().Perm())
		case string(b) == "old binary" && !done:
		case bytes.Equal(b, bin):
			if p, err := os.ReadFile(exe + previousSuffix); err != nil || string(p) != "old binary" {
				t.Errorf("update killed at %s (completed: %v): the new binary is in place but %s holds %.20q, %v; want the old binary", at, done, exe+previousSuffix, p, err)
			}
		default:
			t.Errorf("update killed at %s (completed: %v): the binary holds %d bytes %.20q; want the old or the new binary", at, done, len(b), b)
		}
		if _, err := os.Stat(newBinaryPath(exe)); done && err == nil {
			t.Errorf("%s left after the update", newBinaryPath(exe))
		}
	})
}

// TestUpdateRollbackCrash: putting the previous binary back, killed at any
// point, leaves the new binary or the previous one at the service's path.
func TestUpdateRollbackCrash(t *testing.T) {
	crashEverywhere(t, "rollback", func(t *testing.T, dir string) {
		prepareRollback(t, dir)
	}, func(t *testing.T, dir, at string, done bool) {
		b, err := os.ReadFile(childExe(dir))
		switch {
		case err != nil:
			t.Errorf("rollback killed at %s: no binary at %s: %v", at, childExe(dir), err)
		case string(b) == "new binary" && !done, string(b) == "previous binary":
		default:
			t.Errorf("rollback killed at %s (completed: %v): the binary holds %q", at, done, b)
		}
	})
}

func prepareRollback(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(childBin(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(childExe(dir), []byte("new binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(childExe(dir)+previousSuffix, []byte("previous binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeChildInput(t, dir, childInput{})
}

// TestUpdateChangesDurableInOrder: an update syncs the new binary before
// it renames it in and the binary's directory after each rename or link
// into it; putting the previous binary back syncs the directory too, and
// so does writing pending.json (before the binary is replaced: a power
// loss must not keep the new binary and lose the record that makes it
// confirm itself or roll back).
func TestUpdateChangesDurableInOrder(t *testing.T) {
	bin, in := signedRelease(t)
	t.Run("apply", func(t *testing.T) {
		checkDurableOrder(t, "apply", "bin", func(t *testing.T, dir string) { prepareApply(t, dir, bin, in, true) },
			func(dir string) string { return newBinaryPath(childExe(dir)) })
	})
	t.Run("rollback", func(t *testing.T) { checkDurableOrder(t, "rollback", "bin", prepareRollback, nil) })
	// pending.json, written before the binary is replaced.
	t.Run("pending", func(t *testing.T) {
		checkDurableOrder(t, "pending", "update", func(t *testing.T, dir string) { writeChildInput(t, dir, childInput{}) }, nil)
	})
}

// TestUpdateApplyFullDisk: an update that finds the binary's disk full
// fails with ENOSPC, leaves the old binary in place and leaves no partial
// new binary beside it. The binary's directory is a 1 MiB tmpfs, mounted
// in a user and mount namespace of the child (no root needed).
func TestUpdateApplyFullDisk(t *testing.T) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("unshare (util-linux) is not installed: this test mounts a small tmpfs with it")
	}
	probe := t.TempDir()
	if out, err := exec.Command(unshare, "-r", "-m", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs in a user namespace here (%v: %s)", err, bytes.TrimSpace(out))
	}
	bin, in := signedRelease(t)
	dir := t.TempDir()
	prepareApply(t, dir, bin, in, false)
	cmd := childCommand("apply-full-disk", dir, unshare, "-r", "-m", "sh", "-c", `mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"`, childBin(dir))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("apply on a full disk: %v\n%s", err, out)
	}
}
