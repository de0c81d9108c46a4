package datadir

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tetherhq/tether/relay/internal/atomicfile"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/store"
)

// A backup of a relay on its own is a directory laid out as a data
// directory — the store (tether.db), the CA (ca/), the relay's id and
// the cached OIDC keys — with a manifest, backup.json, which says when
// it was taken and what it holds. Restoring it is starting a relay on
// it: a data directory holding a manifest is a restored one, whose
// first start knows it is a step back in time (Restore).
//
// Left out, as a relay makes them again or they are not its state: the
// lock file, the roster of connected tenants (stale the moment the copy
// is taken), the releases' copies (written again from the store) and
// the audit file, which may be large, holds nothing the store does not,
// and on a restore is the record of what happened since the backup.

// BackupManifestFile is a backup's manifest, written last: a directory
// without one is no complete backup.
const BackupManifestFile = "backup.json"

// backupFormat is the version of a backup's layout and manifest.
const backupFormat = 1

// maxManifest bounds what is read of a backup's manifest.
const maxManifest = 1 << 20

// ErrSharedStore refuses a backup of a relay whose store is PostgreSQL.
var ErrSharedStore = errors.New("the relay's store is PostgreSQL, shared by a cluster: back it up with PostgreSQL's tools (pg_dump), and keep the CA key-encryption key (--ca-kek-file) safe apart from the dumps: the CA's private keys in the store are sealed under it (README, \"One CA for a cluster of relays\")")

// BackupManifest describes a backup.
type BackupManifest struct {
	Format int `json:"format"`
	// ID names this backup: a relay restored from it handles the step
	// back once (Restore).
	ID string `json:"id"`
	// TakenAt is when the store's copy was begun: it holds what was
	// committed before, none of what was committed after.
	TakenAt time.Time `json:"taken_at"`
	// RelayVersion is the version of the binary that took it.
	RelayVersion string `json:"relay_version,omitempty"`
	// Store is what the store's copy holds; Store.LatestChange is the
	// change feed's position.
	Store store.Summary `json:"store"`
	// TrustDomain and CARoots (printable fingerprints, oldest first) are
	// the CA's.
	TrustDomain string   `json:"trust_domain"`
	CARoots     []string `json:"ca_roots"`
	// Files lists every file of the backup but the manifest, by path
	// relative to the backup (slashes), with size and SHA-256.
	Files []BackupFile `json:"files"`
}

// BackupFile is a file of a backup.
type BackupFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// BackupOptions are Backup's.
type BackupOptions struct {
	// Force replaces an existing destination, but only one that is a
	// backup (holding a manifest) or an empty directory.
	Force bool
	// RelayVersion goes into the manifest.
	RelayVersion string
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// interrupt, a test hook, is called before the backup is made
	// complete; an error from it ends the backup as a crash would.
	interrupt func(tmp string) error
}

// Backup writes a consistent backup of d to dest, a directory that must
// not exist (unless o.Force), while relays and admin commands may use d:
// the store through SQLite's online copy (store.BackupTo), the CA's
// files under the data directory's lock, which every change to the CA
// takes, so that the copy's CA is the one its store knows. The backup is
// made in a temporary directory beside dest (mode 0700, every file 0600:
// it holds the CA's private keys), synced, and renamed to dest only once
// complete, its manifest written last: an interrupted backup leaves no
// dest, only a ".NAME.partial-…" directory that Backup removes (or that
// an operator may remove) and VerifyBackup refuses.
//
// Admin commands on d, and a relay starting on it, wait for the backup
// while it copies (the lock); a relay serving does not.
func (d *Dir) Backup(ctx context.Context, dest string, o BackupOptions) (BackupManifest, error) {
	if d.caShared {
		return BackupManifest{}, ErrSharedStore
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	dest = filepath.Clean(dest)
	if abs, err := filepath.Abs(dest); err == nil {
		dest = abs
	}
	if data, err := filepath.Abs(d.Path); err == nil && (dest == data || strings.HasPrefix(dest, data+string(filepath.Separator))) {
		return BackupManifest{}, fmt.Errorf("backup destination %s is inside the data directory %s: give a path outside it", dest, data)
	}
	if err := checkDest(dest, o.Force); err != nil {
		return BackupManifest{}, err
	}
	parent := filepath.Dir(dest)
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dest)+partialInfix)
	if err != nil {
		return BackupManifest{}, fmt.Errorf("backup: %w", err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o700); err != nil {
		return BackupManifest{}, err
	}
	var m BackupManifest
	err = d.Locked(ctx, func() error {
		m.TakenAt = now().UTC()
		if err := d.Store.BackupTo(ctx, filepath.Join(tmp, dbFile)); err != nil {
			return err
		}
		if err := copyDir(filepath.Join(d.Path, caDir), filepath.Join(tmp, caDir)); err != nil {
			return fmt.Errorf("copy the CA: %w", err)
		}
		for _, name := range []string{relayIDFile, JWKSCacheFile} {
			if err := copyFile(d.File(name), filepath.Join(tmp, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("copy %s: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		return BackupManifest{}, err
	}
	// What was copied is checked as a restore would use it.
	if m.Store, err = store.CheckFile(ctx, filepath.Join(tmp, dbFile)); err != nil {
		return BackupManifest{}, fmt.Errorf("check the store's copy: %w", err)
	}
	authority, err := ca.Load(ctx, ca.Dir(filepath.Join(tmp, caDir)))
	if err != nil {
		return BackupManifest{}, fmt.Errorf("check the CA's copy: %w", err)
	}
	m.Format, m.ID, m.RelayVersion = backupFormat, rand.Text(), o.RelayVersion
	m.TrustDomain, m.CARoots = authority.TrustDomain(), rootIDs(authority)
	if m.Files, err = listFiles(tmp); err != nil {
		return BackupManifest{}, err
	}
	if o.interrupt != nil {
		if err := o.interrupt(tmp); err != nil {
			return BackupManifest{}, err
		}
	}
	raw, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return BackupManifest{}, err
	}
	if err := atomicfile.Write(filepath.Join(tmp, BackupManifestFile), append(raw, '\n'), 0o600); err != nil {
		return BackupManifest{}, fmt.Errorf("write the backup's manifest: %w", err)
	}
	for _, dir := range []string{filepath.Join(tmp, caDir), tmp} {
		if err := atomicfile.SyncDir(dir); err != nil {
			return BackupManifest{}, err
		}
	}
	if err := replace(tmp, dest, o.Force); err != nil {
		return BackupManifest{}, err
	}
	done = true
	// For the relay's rotation of the audit file, which keeps what a
	// restore from this backup would replay.
	if err := atomicfile.Write(d.File(LastBackupFile), []byte(m.TakenAt.Format(time.RFC3339Nano)+"\n"), 0o600); err != nil {
		return m, fmt.Errorf("backup written to %s, but its time not recorded in the data directory (the relay's rotation of the audit file may remove what a restore from it needs): %w", dest, err)
	}
	return m, nil
}

// LastBackup returns when the newest backup of the directory was taken
// (the zero time when none was, or none recorded: backups made before
// this was recorded, and stores backed up otherwise, as PostgreSQL is).
func (d *Dir) LastBackup() (time.Time, error) {
	raw, err := os.ReadFile(d.File(LastBackupFile))
	if errors.Is(err, fs.ErrNotExist) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("read the time of the last backup: %w", err)
	}
	t, err := parseLastBackup(raw)
	if err != nil {
		return time.Time{}, fmt.Errorf("read the time of the last backup (%s): %w", d.File(LastBackupFile), err)
	}
	return t, nil
}

// parseLastBackup reads LastBackupFile's content: a time in RFC 3339
// (to the nanosecond), and a newline.
func parseLastBackup(raw []byte) (time.Time, error) {
	if len(raw) > 64 {
		return time.Time{}, errors.New("not a time: too long")
	}
	return time.Parse(time.RFC3339Nano, strings.TrimSpace(string(raw)))
}

// checkDest refuses an existing dest, unless force and dest is a
// backup or an empty directory.
func checkDest(dest string, force bool) error {
	fi, err := os.Lstat(dest)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("backup destination: %w", err)
	}
	if !force {
		return fmt.Errorf("backup destination %s exists: give a new path, or --force to replace a backup there: %w", dest, fs.ErrExist)
	}
	if !fi.IsDir() {
		return fmt.Errorf("backup destination %s exists and is not a directory: --force replaces only a backup or an empty directory: %w", dest, fs.ErrExist)
	}
	if _, err := os.Stat(filepath.Join(dest, BackupManifestFile)); err == nil {
		return nil
	}
	entries, err := os.ReadDir(dest)
	if err != nil {
		return fmt.Errorf("backup destination: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("backup destination %s exists and is not a backup (no %s): --force replaces only a backup or an empty directory: %w", dest, BackupManifestFile, fs.ErrExist)
	}
	return nil
}

// replace renames the complete backup tmp to dest, moving an existing
// dest (allowed by force) aside first and removing it after, and makes
// the renames durable.
func replace(tmp, dest string, force bool) error {
	parent := filepath.Dir(dest)
	var old string
	if _, err := os.Lstat(dest); err == nil {
		if !force {
			return fmt.Errorf("backup destination %s appeared meanwhile: %w", dest, fs.ErrExist)
		}
		old = filepath.Join(parent, "."+filepath.Base(dest)+".old-"+rand.Text()[:8])
		if err := os.Rename(dest, old); err != nil {
			return fmt.Errorf("move the old backup aside: %w", err)
		}
	}
	if err := os.Rename(tmp, dest); err != nil {
		if old != "" {
			os.Rename(old, dest)
		}
		return fmt.Errorf("backup: %w", err)
	}
	if err := atomicfile.SyncDir(parent); err != nil {
		return err
	}
	if old != "" {
		if err := os.RemoveAll(old); err != nil {
			return fmt.Errorf("remove the backup replaced (%s): %w", old, err)
		}
	}
	return nil
}

// copyDir copies the regular files of src (not its subdirectories) into
// dst, made 0700, each file 0600.
func copyDir(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			continue // atomicfile's temporary files, anything not a file
		}
		if err := copyFile(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// copyFile copies src to a new file dst, 0600, synced.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeSynced(dst, in, nil)
}

// listFiles lists the files under root, the manifest excepted, with
// their sizes and hashes, sorted by path.
func listFiles(root string) ([]BackupFile, error) {
	var out []BackupFile
	err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel == BackupManifestFile {
			return nil
		}
		if !e.Type().IsRegular() {
			return fmt.Errorf("%s: not a regular file", path)
		}
		f, err := fileOf(path)
		if err != nil {
			return err
		}
		f.Path = rel
		out = append(out, f)
		return nil
	})
	slices.SortFunc(out, func(a, b BackupFile) int { return strings.Compare(a.Path, b.Path) })
	return out, err
}

// fileOf hashes the file at path.
func fileOf(path string) (BackupFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return BackupFile{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return BackupFile{}, fmt.Errorf("read %s: %w", path, err)
	}
	return BackupFile{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

func rootIDs(c *ca.CA) []string {
	var ids []string
	for _, r := range c.Roots() {
		ids = append(ids, r.ID())
	}
	return ids
}

// ReadBackupManifest reads the manifest of the backup (or restored data
// directory) dir; an error wrapping fs.ErrNotExist when there is none.
// The manifest is checked for shape, not against the files.
func ReadBackupManifest(dir string) (BackupManifest, error) {
	path := filepath.Join(dir, BackupManifestFile)
	f, err := os.Open(path)
	if err != nil {
		return BackupManifest{}, err
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxManifest+1))
	if err != nil {
		return BackupManifest{}, fmt.Errorf("read %s: %w", path, err)
	}
	if len(raw) > maxManifest {
		return BackupManifest{}, fmt.Errorf("%s is larger than %d bytes: not a backup's manifest", path, maxManifest)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var m BackupManifest
	if err := dec.Decode(&m); err != nil {
		return BackupManifest{}, fmt.Errorf("parse %s: %w", path, err)
	}
	switch {
	case m.Format != backupFormat:
		return BackupManifest{}, fmt.Errorf("%s: backup format %d; this binary knows format %d", path, m.Format, backupFormat)
	case m.ID == "" || len(m.ID) > 64:
		return BackupManifest{}, fmt.Errorf("%s: no valid backup id", path)
	case m.TakenAt.IsZero():
		return BackupManifest{}, fmt.Errorf("%s: no time taken", path)
	}
	return m, nil
}

// partialInfix is in the name of the directory a backup is written to
// before its rename: ".DEST.partial-RANDOM".
const partialInfix = ".partial-"

// isPartialDir reports whether dir is named as a backup's working
// directory.
func isPartialDir(dir string) bool {
	base := filepath.Base(filepath.Clean(dir))
	i := strings.LastIndex(base, partialInfix)
	return strings.HasPrefix(base, ".") && i > 0 && i+len(partialInfix) < len(base) && !strings.ContainsAny(base[i+len(partialInfix):], ".")
}

// VerifyBackup checks that the backup dir can be restored: its manifest
// is whole, every file it lists is there unchanged (size and SHA-256)
// and none is missing or added, the store passes SQLite's integrity check
// with a schema this binary opens and holds what the manifest says, and
// the CA loads, with the roots the manifest names. It changes nothing.
func VerifyBackup(ctx context.Context, dir string) (BackupManifest, error) {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return BackupManifest{}, fmt.Errorf("no backup at %s: %w", dir, fs.ErrNotExist)
	}
	if err != nil {
		return BackupManifest{}, err
	}
	if !fi.IsDir() {
		return BackupManifest{}, fmt.Errorf("%s is not a directory: a backup is a directory (tether-relay backup DEST)", dir)
	}
	if isPartialDir(dir) {
		// A backup killed after its manifest and before its rename leaves
		// a whole copy here, but nothing says its last writes reached the
		// disk, and an operator who restores from a hidden directory has
		// picked the wrong one: only the renamed destination is a backup.
		return BackupManifest{}, fmt.Errorf("%s is the working directory of an interrupted backup, not a backup: remove it and take the backup again", dir)
	}
	m, err := ReadBackupManifest(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return m, fmt.Errorf("%s has no %s: not a complete backup (an interrupted one never gets its manifest)", dir, BackupManifestFile)
	}
	if err != nil {
		return m, err
	}
	have, err := listFiles(dir)
	if err != nil {
		return m, err
	}
	if !slices.Equal(have, m.Files) {
		return m, fmt.Errorf("%s: the files differ from the manifest's list: %s", dir, fileDiff(m.Files, have))
	}
	if !slices.ContainsFunc(m.Files, func(f BackupFile) bool { return f.Path == dbFile }) {
		return m, fmt.Errorf("%s: the manifest lists no %s", dir, dbFile)
	}
	sm, err := store.CheckFile(ctx, filepath.Join(dir, dbFile))
	if err != nil {
		return m, err
	}
	if sm != m.Store {
		return m, fmt.Errorf("%s: the store holds %+v, the manifest says %+v", dir, sm, m.Store)
	}
	authority, err := ca.Load(ctx, ca.Dir(filepath.Join(dir, caDir)))
	if err != nil {
		return m, fmt.Errorf("%s: the CA does not load: %w", dir, err)
	}
	if roots := rootIDs(authority); !slices.Equal(roots, m.CARoots) || authority.TrustDomain() != m.TrustDomain {
		return m, fmt.Errorf("%s: the CA has roots %v of trust domain %q, the manifest says %v of %q", dir, roots, authority.TrustDomain(), m.CARoots, m.TrustDomain)
	}
	return m, nil
}

// fileDiff says how have differs from want, briefly.
func fileDiff(want, have []BackupFile) string {
	byPath := map[string]BackupFile{}
	for _, f := range have {
		byPath[f.Path] = f
	}
	var out []string
	for _, w := range want {
		h, ok := byPath[w.Path]
		switch {
		case !ok:
			out = append(out, w.Path+" missing")
		case h != w:
			out = append(out, w.Path+" changed")
		}
		delete(byPath, w.Path)
	}
	for p := range byPath {
		out = append(out, p+" not listed")
	}
	slices.Sort(out)
	if len(out) > 10 {
		out = append(out[:10], "…")
	}
	return strings.Join(out, ", ")
}

// restoredKey is the setting holding the id of the backup whose restore
// a relay has handled (Dir.Restored): in the restored store itself, so
// that restoring the same backup again is handled again.
const restoredKey = "restored_backup"

// Restored reports whether d is a backup restored (it holds a backup's
// manifest) and, with first, whether no relay has handled that restore
// yet (MarkRestored). A manifest that cannot be read is an error: a
// relay must not start on a restored directory unaware.
func (d *Dir) Restored(ctx context.Context) (m BackupManifest, restored, first bool, err error) {
	if d.caShared {
		return m, false, false, nil
	}
	m, err = ReadBackupManifest(d.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return m, false, false, nil
	}
	if err != nil {
		return m, false, false, fmt.Errorf("the data directory was restored from a backup, but its manifest is unreadable: %w", err)
	}
	id, err := d.Store.Setting(ctx, restoredKey)
	if errors.Is(err, store.ErrNotFound) {
		return m, true, true, nil
	}
	if err != nil {
		return m, true, false, fmt.Errorf("read whether the restore was handled: %w", err)
	}
	return m, true, id != m.ID, nil
}

// MarkRestored records that the restore of backup m has been handled.
func (d *Dir) MarkRestored(ctx context.Context, m BackupManifest) error {
	return d.Store.SetSetting(ctx, restoredKey, m.ID)
}
