package datadir

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tetherhq/tether/protocol/release"
	"github.com/tetherhq/tether/relay/internal/atomicfile"
	"github.com/tetherhq/tether/relay/internal/store"
)

// ReleaseFiles returns the directory holding rel's four files, writing
// them from the store first if this host has no copy yet. It is where a
// relay keeps the files of the releases it offers, in its data directory:
// releases/<version>/<os>-<arch>-<channel>/ with the
// four files of a signed release (see protocol/release). The store holds
// the release (the binary by its SHA-256); this directory is each relay's
// copy, written from the store when the release is published on this host
// or first offered, and served from there. The relay never holds the
// signing key: it stores and serves what was signed elsewhere, and agents
// verify every file.
//
// The binary is checked against its SHA-256 as it is written, and the
// files are synced before the directory is renamed into place, so that a
// power loss leaves either no copy or a whole one. A copy is served as it
// is found: one damaged on disk afterwards (by a hand, a failing disk) is
// refused by every agent, which checks the manifest's signature and the
// binary's SHA-256 before it uses anything, and the rollout halts; remove
// the copy and the relay writes it again from the store.
func (d *Dir) ReleaseFiles(ctx context.Context, rel store.Release) (string, error) {
	dest := filepath.Join(d.Path, ReleasesDir, rel.Version, rel.OS+"-"+rel.Arch+"-"+rel.Channel)
	if _, err := os.Stat(dest); err == nil {
		return dest, nil
	}
	full, err := d.Store.Release(ctx, rel.Version, rel.OS, rel.Arch, rel.Channel)
	if err != nil {
		return "", err
	}
	if err := d.writeRelease(ctx, dest, full); err != nil {
		return "", err
	}
	return dest, nil
}

// writeRelease writes full's files from the store into a temporary
// directory beside dest, syncs them, and renames it to dest.
func (d *Dir) writeRelease(ctx context.Context, dest string, full store.Release) error {
	bin, err := d.Store.OpenBlob(ctx, full.SHA256)
	if err != nil {
		return err
	}
	parent := filepath.Dir(dest)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, ".release-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for name, data := range releaseSmallFiles(full) {
		if err := writeSynced(filepath.Join(tmp, name), bytes.NewReader(data), nil); err != nil {
			return err
		}
	}
	h := sha256.New()
	if err := writeSynced(filepath.Join(tmp, release.BinaryFile), bin, h); err != nil {
		return fmt.Errorf("write release binary: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != full.SHA256 {
		return fmt.Errorf("release %s %s/%s %s: the stored binary hashes to %s, not %s", full.Version, full.OS, full.Arch, full.Channel, got, full.SHA256)
	}
	if err := atomicfile.SyncDir(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, dest); err != nil {
		if _, serr := os.Stat(dest); serr != nil {
			return fmt.Errorf("store release files: %w", err)
		}
		// Another process wrote its copy first: keep that one.
	}
	// The rename, and the version's directory if it is new.
	if err := atomicfile.SyncDir(parent); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(parent))
}

// releaseSmallFiles are the files of full besides the binary.
func releaseSmallFiles(full store.Release) map[string][]byte {
	return map[string][]byte{release.BinarySignatureFile: full.BinarySignature, release.ManifestFile: full.Manifest, release.ManifestSignatureFile: full.ManifestSignature}
}

// writeSynced writes what r holds to a new file at path (0600), also to
// h when not nil, and syncs it.
func writeSynced(path string, r io.Reader, h io.Writer) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	w := io.Writer(f)
	if h != nil {
		w = io.MultiWriter(f, h)
	}
	_, err = io.Copy(w, r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// RemoveReleaseFiles removes this host's copy of the files of version
// (releases/<version>/, every platform and channel), if there is one. The
// directory is first renamed out of the way, so that an offer never finds
// a copy half removed: it finds the whole copy or none (and then writes
// one from the store, or fails if the store has none). A download already
// under way keeps its open file to the end. It reports whether there was
// a copy.
func (d *Dir) RemoveReleaseFiles(version string) (bool, error) {
	if !release.ValidVersion(version) {
		return false, fmt.Errorf("release version %q is not a semantic version", version)
	}
	root := filepath.Join(d.Path, ReleasesDir)
	src := filepath.Join(root, version)
	if _, err := os.Lstat(src); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	gone, err := os.MkdirTemp(root, ".removed-")
	if err != nil {
		return false, err
	}
	dst := filepath.Join(gone, version)
	if err := os.Rename(src, dst); err != nil {
		os.Remove(gone)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil // another process removed it first
		}
		return false, fmt.Errorf("remove release files of %s: %w", version, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		return true, fmt.Errorf("remove release files of %s: %w", version, err)
	}
	return true, atomicfile.SyncDir(root)
}

// SweepReleaseFiles removes this host's copies of the releases the store
// no longer has (removed while this relay was stopped, or while its change
// feed was pruned past the removal), and what a removal cut short left. It
// returns the versions whose copies it removed.
func (d *Dir) SweepReleaseFiles(ctx context.Context) ([]string, error) {
	root := filepath.Join(d.Path, ReleasesDir)
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	have, err := d.Store.ReleaseVersions(ctx)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, ".removed-"):
			if err := os.RemoveAll(filepath.Join(root, name)); err != nil {
				errs = append(errs, err)
			}
		case !e.IsDir() || !release.ValidVersion(name) || slices.Contains(have, name):
			// Not a copy of a release (left as it is), or one the store has.
		default:
			ok, err := d.RemoveReleaseFiles(name)
			if err != nil {
				errs = append(errs, err)
			}
			if ok {
				removed = append(removed, name)
			}
		}
	}
	return removed, errors.Join(errs...)
}
