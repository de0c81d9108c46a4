package datadir

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/internal/ca"
)

// A backup is a data directory with a manifest: owner-only, complete,
// verifiable, and a relay's data directory once restored.
func TestBackup(t *testing.T) {
	src := t.TempDir()
	d, c := open(t, src, Options{TrustDomain: "tether.example"})
	if err := d.Store.AddTenant(ctx, "acme", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := d.RelayID(""); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(t.TempDir(), "b1")
	m, err := d.Backup(ctx, dest, BackupOptions{RelayVersion: "1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	// The data directory records when it was taken, for the audit
	// file's rotation.
	if at, err := d.LastBackup(); err != nil || !at.Equal(m.TakenAt) {
		t.Fatalf("LastBackup = %v, %v; want the backup's time %v", at, err, m.TakenAt)
	}
	if m.Store.Tenants != 1 || len(m.CARoots) != 1 || m.CARoots[0] != c.Serving().ID() || m.TrustDomain != "tether.example" || m.ID == "" {
		t.Fatalf("manifest %+v", m)
	}
	var paths []string
	for _, f := range m.Files {
		paths = append(paths, f.Path)
	}
	if got, want := strings.Join(paths, " "), "ca/ca.crt ca/ca.key relay-id tether.db"; got != want {
		t.Fatalf("files %q, want %q", got, want)
	}
	err = filepath.WalkDir(dest, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		want := os.FileMode(0o600)
		if e.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyBackup(ctx, dest); err != nil {
		t.Fatal(err)
	}
	// No second backup over it without Force; with it, a backup is
	// replaced.
	if _, err := d.Backup(ctx, dest, BackupOptions{}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("backup over an existing one: %v, want fs.ErrExist", err)
	}
	m2, err := d.Backup(ctx, dest, BackupOptions{Force: true})
	if err != nil || m2.ID == m.ID {
		t.Fatalf("forced backup: %+v, %v", m2, err)
	}
	if got, err := ReadBackupManifest(dest); err != nil || got.ID != m2.ID {
		t.Fatalf("manifest after --force: %+v, %v", got, err)
	}
	// Force replaces nothing but a backup or an empty directory.
	notBackup := t.TempDir()
	if err := os.WriteFile(filepath.Join(notBackup, "precious"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Backup(ctx, notBackup, BackupOptions{Force: true}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("forced backup over a directory that is no backup: %v", err)
	}
	if _, err := d.Backup(ctx, filepath.Join(src, "inside"), BackupOptions{}); err == nil {
		t.Fatal("backup inside the data directory accepted")
	}
	entries, _ := os.ReadDir(filepath.Dir(dest))
	if len(entries) != 1 {
		t.Fatalf("beside the backup: %v; want only it (no partial or old directory left)", entries)
	}

	// A file changed, added or missing fails verification.
	for _, tc := range []struct {
		name   string
		damage func(dir string) error
	}{
		{"changed", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, "relay-id"), []byte("other-1\n"), 0o600)
		}},
		{"added", func(dir string) error { return os.WriteFile(filepath.Join(dir, "ca", "ca-2.key"), []byte("x"), 0o600) }},
		{"missing", func(dir string) error { return os.Remove(filepath.Join(dir, "ca", "ca.key")) }},
		{"no manifest", func(dir string) error { return os.Remove(filepath.Join(dir, BackupManifestFile)) }},
		{"manifest damaged", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, BackupManifestFile), []byte(`{"format":1,"id":"x","unknown":1}`), 0o600)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			copyDest := filepath.Join(t.TempDir(), "b")
			if _, err := d.Backup(ctx, copyDest, BackupOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := tc.damage(copyDest); err != nil {
				t.Fatal(err)
			}
			if _, err := VerifyBackup(ctx, copyDest); err == nil {
				t.Fatal("a damaged backup verified")
			}
		})
	}
}

// An interrupted backup leaves no destination: neither a complete-looking
// one nor its partial directory (which a crash would leave, and which
// does not verify).
func TestBackupInterrupted(t *testing.T) {
	d, _ := open(t, t.TempDir(), Options{TrustDomain: "tether.example"})
	parent := t.TempDir()
	dest := filepath.Join(parent, "b")
	crashed := filepath.Join(t.TempDir(), "crashed")
	_, err := d.Backup(ctx, dest, BackupOptions{interrupt: func(tmp string) error {
		// What a crash at this point leaves behind.
		if err := copyTree(crashed, tmp); err != nil {
			return err
		}
		return errors.New("interrupted")
	}})
	if err == nil || err.Error() != "interrupted" {
		t.Fatalf("interrupted backup: %v", err)
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 0 {
		t.Fatalf("an interrupted backup left %v", entries)
	}
	if _, err := VerifyBackup(ctx, crashed); err == nil || !strings.Contains(err.Error(), "not a complete backup") {
		t.Fatalf("verify the directory a crash left: %v", err)
	}
	// A relay started on it would not take it for a restored backup
	// either: it is not one, and the operator is told so by verify.
	if _, err := d.Backup(ctx, dest, BackupOptions{}); err != nil {
		t.Fatalf("backup after an interrupted one: %v", err)
	}
}

// A backup killed after its manifest and before its rename leaves a
// complete copy under its working name; verify refuses it by that name,
// and the same files renamed by the operator verify.
func TestBackupPartialDirRefused(t *testing.T) {
	d, _ := open(t, t.TempDir(), Options{TrustDomain: "tether.example"})
	parent := t.TempDir()
	dest := filepath.Join(parent, "b")
	if _, err := d.Backup(ctx, dest, BackupOptions{}); err != nil {
		t.Fatal(err)
	}
	partial := filepath.Join(parent, ".b.partial-123456")
	if err := os.Rename(dest, partial); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyBackup(ctx, partial); err == nil || !strings.Contains(err.Error(), "interrupted backup") {
		t.Fatalf("verify a complete copy under the working name: %v", err)
	}
	if _, err := VerifyBackup(ctx, partial+string(filepath.Separator)); err == nil {
		t.Fatal("verify the working directory named with a trailing separator: accepted")
	}
	for _, name := range []string{"b", ".b", "b.partial-1", ".partial-1", ".b.partial-"} {
		if isPartialDir(filepath.Join(parent, name)) {
			t.Errorf("%q taken for a backup's working directory", name)
		}
	}
	if err := os.Rename(partial, dest); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyBackup(ctx, dest); err != nil {
		t.Fatalf("verify the backup renamed into place: %v", err)
	}
}

// A data directory restored from a backup knows it until a relay marks
// the restore handled; the same backup restored again is handled again.
func TestRestored(t *testing.T) {
	d, _ := open(t, t.TempDir(), Options{TrustDomain: "tether.example"})
	if _, restored, _, err := d.Restored(ctx); err != nil || restored {
		t.Fatalf("a data directory never restored: restored %v, %v", restored, err)
	}
	dest := filepath.Join(t.TempDir(), "b")
	m, err := d.Backup(ctx, dest, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	again := filepath.Join(t.TempDir(), "again")
	if err := copyTree(again, dest); err != nil {
		t.Fatal(err)
	}
	r, _ := open(t, dest, Options{Existing: true})
	got, restored, first, err := r.Restored(ctx)
	if err != nil || !restored || !first || got.ID != m.ID {
		t.Fatalf("restored %v first %v %+v, %v", restored, first, got, err)
	}
	if err := r.MarkRestored(ctx, got); err != nil {
		t.Fatal(err)
	}
	if _, restored, first, err := r.Restored(ctx); err != nil || !restored || first {
		t.Fatalf("after MarkRestored: restored %v first %v, %v", restored, first, err)
	}
	r2, _ := open(t, again, Options{Existing: true})
	if _, _, first, err := r2.Restored(ctx); err != nil || !first {
		t.Fatalf("the same backup restored again: first %v, %v", first, err)
	}
	// The CA's key of a restored copy is owner-only, as the CA requires.
	if _, err := ca.Load(ctx, ca.Dir(filepath.Join(dest, caDir))); err != nil {
		t.Fatal(err)
	}
}

// A relay whose store is PostgreSQL is not backed up by Backup.
func TestBackupRefusesSharedStore(t *testing.T) {
	d, _ := open(t, t.TempDir(), Options{TrustDomain: "tether.example", Store: pgtest.Shared(t).CreateDatabase(t), CAKEK: newKEK()})
	dest := filepath.Join(t.TempDir(), "b")
	if _, err := d.Backup(ctx, dest, BackupOptions{}); !errors.Is(err, ErrSharedStore) {
		t.Fatalf("backup of a PostgreSQL store: %v, want ErrSharedStore", err)
	}
	if _, err := os.Stat(dest); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("destination after a refused backup: %v", err)
	}
}

// copyTree copies the directory src to dst as an operator's cp -a would
// (directories 0700, files 0600, as in a backup).
func copyTree(dst, src string) error {
	return filepath.WalkDir(src, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if e.IsDir() {
			return os.Mkdir(filepath.Join(dst, rel), 0o700)
		}
		return copyFile(path, filepath.Join(dst, rel))
	})
}

// A backup's manifest is read from a file anyone with the backup could
// have changed: any content is an error or a manifest, never a panic.
func FuzzReadBackupManifest(f *testing.F) {
	f.Add([]byte(`{"format":1,"id":"X","taken_at":"2026-12-07T03:45:01Z","store":{"schema_version":19},"trust_domain":"t","ca_roots":["sha256:00"],"files":[{"path":"tether.db","size":1,"sha256":"00"}]}`))
	f.Add([]byte(`{"format":2}`))
	f.Add([]byte(`{"format":1,"id":"","unknown":true}`))
	f.Add([]byte("\x00\xff"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, BackupManifestFile), raw, 0o600); err != nil {
			t.Fatal(err)
		}
		m, err := ReadBackupManifest(dir)
		if err == nil && (m.Format != backupFormat || m.ID == "" || m.TakenAt.IsZero()) {
			t.Fatalf("accepted a manifest without format, id or time: %+v", m)
		}
		// VerifyBackup of the same directory fails (no store) without
		// panicking.
		if _, err := VerifyBackup(ctx, dir); err == nil {
			t.Fatal("a directory with only a manifest verified")
		}
	})
}

// FuzzParseLastBackup: the data directory's last-backup file is read
// without panicking, and a time read back is the one written.
func FuzzParseLastBackup(f *testing.F) {
	f.Add([]byte("2026-12-07T19:56:33.123456789Z\n"))
	f.Add([]byte("2026-12-07T19:56:33+02:00"))
	f.Add([]byte(""))
	f.Add([]byte("yesterday\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		at, err := parseLastBackup(raw)
		if err != nil {
			return
		}
		back, err := parseLastBackup([]byte(at.Format(time.RFC3339Nano) + "\n"))
		if err != nil || !back.Equal(at) {
			t.Fatalf("parseLastBackup(%q) = %v; written back and read again: %v, %v", raw, at, back, err)
		}
	})
}
