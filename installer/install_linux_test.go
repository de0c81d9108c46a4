package installer

import (
	"bytes"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// TestInstallFilesOnly lays the agent out under a temporary root and checks
// modes and owners. As root it uses the existing user "nobody" as the
// service user, so the ownership hand-over is checked too.
func TestInstallFilesOnly(t *testing.T) {
	root := t.TempDir()
	src := t.TempDir()
	bin := filepath.Join(src, "tether-agent")
	cfg := filepath.Join(src, "agent.yaml")
	mustWrite(t, bin, "binary v1", 0o700)
	mustWrite(t, cfg, "state_dir: /var/lib/tether-agent\n", 0o644)

	l := LinuxLayout(root)
	uid, gid := os.Getuid(), os.Getgid()
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			t.Fatalf("running as root without a user nobody: %v", err)
		}
		l.Name = "nobody"
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
	}
	// An earlier enrolment (as root) left files in the state directory.
	mustWrite(t, filepath.Join(l.StateDir, "agent.key"), "key", 0o600)

	var out bytes.Buffer
	if err := Install(Options{Layout: l, SourceBinary: bin, SourceConfig: cfg, FilesOnly: true, Out: &out}); err != nil {
		t.Fatalf("Install: %v\n%s", err, out.String())
	}
	for _, c := range []struct {
		path     string
		mode     fs.FileMode
		uid, gid int // -1: not checked
	}{
		{l.BinDir(), fs.ModeDir | 0o755, uid, gid},
		{l.BinaryPath, 0o755, -1, -1},
		{l.ConfigDir(), fs.ModeDir | 0o750, -1, gid},
		{l.ConfigPath, 0o640, -1, gid},
		{l.StateDir, fs.ModeDir | 0o700, uid, gid},
		{l.UpdateDir, fs.ModeDir | 0o700, uid, gid},
		{filepath.Join(l.StateDir, "agent.key"), 0o600, uid, gid},
	} {
		fi, err := os.Lstat(c.path)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if fi.Mode() != c.mode {
			t.Errorf("%s: mode %v, want %v", c.path, fi.Mode(), c.mode)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if c.uid >= 0 && int(st.Uid) != c.uid {
			t.Errorf("%s: uid %d, want %d", c.path, st.Uid, c.uid)
		}
		if c.gid >= 0 && int(st.Gid) != c.gid {
			t.Errorf("%s: gid %d, want %d", c.path, st.Gid, c.gid)
		}
	}
	if b, _ := os.ReadFile(l.BinaryPath); string(b) != "binary v1" {
		t.Errorf("binary: got %q", b)
	}

	// A second install (an upgrade) replaces the binary and keeps state.
	mustWrite(t, bin, "binary v2", 0o700)
	if err := Install(Options{Layout: l, SourceBinary: bin, SourceConfig: cfg, FilesOnly: true}); err != nil {
		t.Fatalf("second Install: %v", err)
	}
	if b, _ := os.ReadFile(l.BinaryPath); string(b) != "binary v2" {
		t.Errorf("binary after reinstall: got %q", b)
	}
	if _, err := os.Stat(filepath.Join(l.StateDir, "agent.key")); err != nil {
		t.Errorf("state after reinstall: %v", err)
	}
	// Installing the installed config onto itself leaves it alone.
	if err := Install(Options{Layout: l, SourceBinary: l.BinaryPath, SourceConfig: l.ConfigPath, FilesOnly: true}); err != nil {
		t.Fatalf("Install from the installed files: %v", err)
	}
	if b, _ := os.ReadFile(l.ConfigPath); string(b) != "state_dir: /var/lib/tether-agent\n" {
		t.Errorf("config: got %q", b)
	}
}

func TestInstallNeedsConfig(t *testing.T) {
	if err := Install(Options{Layout: LinuxLayout(t.TempDir()), FilesOnly: true}); err == nil {
		t.Error("Install without a config: want an error")
	}
}

func mustWrite(t *testing.T, p, s string, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}
