package datadir

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/tetherhq/tether/protocol/release"
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
// The binary is checked against its SHA-256 as it is written.
func (d *Dir) ReleaseFiles(ctx context.Context, rel store.Release) (string, error) {
	dest := filepath.Join(d.Path, ReleasesDir, rel.Version, rel.OS+"-"+rel.Arch+"-"+rel.Channel)
	if _, err := os.Stat(dest); err == nil {
		return dest, nil
	}
	full, err := d.Store.Release(ctx, rel.Version, rel.OS, rel.Arch, rel.Channel)
	if err != nil {
		return "", err
	}
	bin, err := d.Store.OpenBlob(ctx, full.SHA256)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(dest), 0o700); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dest), ".release-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	for name, data := range map[string][]byte{release.BinarySignatureFile: full.BinarySignature, release.ManifestFile: full.Manifest, release.ManifestSignatureFile: full.ManifestSignature} {
		if err := os.WriteFile(filepath.Join(tmp, name), data, 0o600); err != nil {
			return "", err
		}
	}
	f, err := os.OpenFile(filepath.Join(tmp, release.BinaryFile), os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(f, h), bin)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("write release binary: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != full.SHA256 {
		return "", fmt.Errorf("release %s %s/%s %s: the stored binary hashes to %s, not %s", rel.Version, rel.OS, rel.Arch, rel.Channel, got, full.SHA256)
	}
	if err := os.Rename(tmp, dest); err != nil {
		if _, serr := os.Stat(dest); serr != nil {
			return "", fmt.Errorf("store release files: %w", err)
		}
		// Another process wrote its copy first: keep that one.
	}
	return dest, nil
}
