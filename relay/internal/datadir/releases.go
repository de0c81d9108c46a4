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
// files are synced before the directory is renamed into place. A copy
// found on disk is checked against the store (the binary's SHA-256 and
// size, the other files' content) the first time this process uses it:
// one cut short or damaged (by a power loss, a full disk, a hand) is
// written again from the store, never served.
func (d *Dir) ReleaseFiles(ctx context.Context, rel store.Release) (string, error) {
	dest := filepath.Join(d.Path, ReleasesDir, rel.Version, rel.OS+"-"+rel.Arch+"-"+rel.Channel)
	d.releasesMu.Lock()
	checked := d.releasesChecked[dest]
	d.releasesMu.Unlock()
	if checked {
		if _, err := os.Stat(dest); err == nil {
			return dest, nil
		}
	}
	full, err := d.Store.Release(ctx, rel.Version, rel.OS, rel.Arch, rel.Channel)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(dest); err == nil {
		cerr := checkRelease(dest, full)
		if cerr == nil {
			d.releaseChecked(dest)
			return dest, nil
		}
		d.log.Warn("release files damaged; written again from the store", "dir", dest, "err", cerr)
		if err := removeRelease(dest); err != nil {
			return "", fmt.Errorf("remove damaged release files: %w", err)
		}
	}
	if err := d.writeRelease(ctx, dest, full); err != nil {
		return "", err
	}
	d.releaseChecked(dest)
	return dest, nil
}

func (d *Dir) releaseChecked(dest string) {
	d.releasesMu.Lock()
	defer d.releasesMu.Unlock()
	if d.releasesChecked == nil {
		d.releasesChecked = map[string]bool{}
	}
	d.releasesChecked[dest] = true
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

// checkRelease checks the release files in dir against full, as the
// store holds it.
func checkRelease(dir string, full store.Release) error {
	for name, want := range releaseSmallFiles(full) {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("%s differs from the store's", name)
		}
	}
	f, err := os.Open(filepath.Join(dir, release.BinaryFile))
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return err
	}
	if n != full.Size {
		return fmt.Errorf("%s is %d bytes, not %d", release.BinaryFile, n, full.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != full.SHA256 {
		return fmt.Errorf("%s hashes to %s, not %s", release.BinaryFile, got, full.SHA256)
	}
	return nil
}

// removeRelease moves dir aside (so that no reader finds it half
// removed) and removes it.
func removeRelease(dir string) error {
	aside, err := os.MkdirTemp(filepath.Dir(dir), ".damaged-")
	if err != nil {
		return err
	}
	if err := os.Rename(dir, filepath.Join(aside, "release")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		os.Remove(aside)
		return err
	}
	return os.RemoveAll(aside)
}
