package atomicfile

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f.json")
	for _, content := range []string{"first", "second, longer"} {
		if err := Write(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != content {
			t.Fatalf("read back %q, %v; want %q", got, err, content)
		}
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
	if err := Write(filepath.Join(dir, "missing", "f"), nil, 0o600); err == nil {
		t.Fatal("wrote into a directory that does not exist")
	}
}

// helperEnv, in a child process of the test binary, names the file
// TestWriteSyncsDir's child writes.
const helperEnv = "ATOMICFILE_HELPER_PATH"

// TestWriteSyncsDir runs Write in a child process under strace and checks
// that the directory is synced after the rename: without it, a power
// loss after Write returned can undo the rename.
func TestWriteSyncsDir(t *testing.T) {
	if p := os.Getenv(helperEnv); p != "" {
		if err := Write(p, []byte("relay-1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return
	}
	if _, err := exec.LookPath("strace"); err != nil {
		t.Skipf("needs strace to see the system calls of Write: %v", err)
	}
	if out, err := exec.Command("strace", "-o", os.DevNull, "true").CombinedOutput(); err != nil {
		t.Skipf("strace cannot trace here (ptrace refused?): %v: %s", err, out)
	}
	dir := t.TempDir()
	path, trace := filepath.Join(dir, "relay-id"), filepath.Join(t.TempDir(), "trace")
	cmd := exec.Command("strace", "-f", "-qq", "-o", trace, "-e", "trace=openat,rename,renameat,renameat2,fsync,fdatasync",
		os.Args[0], "-test.run=^TestWriteSyncsDir$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	raw, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	renamed, synced := false, false
	dirFDs := map[string]bool{}
	openDir := regexp.MustCompile(`openat\(AT_FDCWD, "` + regexp.QuoteMeta(dir) + `", [^)]*\) = (\d+)`)
	fsync := regexp.MustCompile(`f(?:data)?sync\((\d+)\)\s+= 0`)
	for _, line := range strings.Split(string(raw), "\n") {
		if m := openDir.FindStringSubmatch(line); m != nil {
			dirFDs[m[1]] = true
		}
		if strings.Contains(line, "rename") && strings.Contains(line, `"`+path+`"`) && strings.HasSuffix(line, "= 0") {
			renamed = true
		}
		if m := fsync.FindStringSubmatch(line); m != nil && renamed && dirFDs[m[1]] {
			synced = true
		}
	}
	if !renamed {
		t.Fatalf("no rename to %s in the trace:\n%s", path, raw)
	}
	if !synced {
		t.Errorf("the directory %s was not synced after the rename; trace:\n%s", dir, raw)
	}
}

// TestWriteRemovesStaleTemps: the temporary files that writes cut short
// by a crash left beside a file (one per crash, each holding a whole
// copy: a CA key, the roster) are removed by the next write of that file
// once older than StaleTemp; a younger one (another process's write in
// progress) and other files stay.
func TestWriteRemovesStaleTemps(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "roster.json")
	old := time.Now().Add(-StaleTemp - time.Minute)
	var stale []string
	for range 20 { // twenty writes cut short, as os.CreateTemp named them
		f, err := os.CreateTemp(dir, ".roster.json.tmp*")
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if err := os.Chtimes(f.Name(), old, old); err != nil {
			t.Fatal(err)
		}
		stale = append(stale, filepath.Base(f.Name()))
	}
	young, err := os.CreateTemp(dir, ".roster.json.tmp*")
	if err != nil {
		t.Fatal(err)
	}
	young.Close()
	keep := []string{filepath.Base(young.Name()), ".roster.json.tmp-not-ours", ".other.json.tmp123", "roster.json.tmp1"}
	for _, name := range keep[1:] {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(filepath.Join(dir, name), old, old); err != nil {
			t.Fatal(err)
		}
	}
	if err := Write(p, []byte("tenants"), 0o600); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	want := append([]string{"roster.json"}, keep...)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("after a write the directory holds %v, want %v (the %d stale temporary files removed)", got, want, len(stale))
	}
}
