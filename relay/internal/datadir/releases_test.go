package datadir

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/release"
	"github.com/tetherhq/tether/relay/internal/store"
)

// A release's copy in the data directory that is cut short or damaged
// (a power loss before its files reached the disk) is written again from
// the store by the next process that uses it, never served.
func TestReleaseFilesDamaged(t *testing.T) {
	ctx := context.Background()
	path := t.TempDir()
	open := func() *Dir {
		d, _, err := Open(ctx, path, Options{TrustDomain: "test.tether"}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	bin := bytes.Repeat([]byte("tether-agent "), 100_000)
	sum := sha256.Sum256(bin)
	rel := store.Release{Version: "1.2.0", OS: "linux", Arch: "amd64", Channel: release.DefaultChannel, SHA256: hex.EncodeToString(sum[:]),
		Size: int64(len(bin)), ExpiresAt: time.Now().Add(time.Hour), PublishedAt: time.Now(),
		BinarySignature: []byte("bsig"), Manifest: []byte(`{"version":"1.2.0"}`), ManifestSignature: []byte("msig")}
	d := open()
	if err := d.Store.AddRelease(ctx, rel, bytes.NewReader(bin)); err != nil {
		t.Fatal(err)
	}
	dir, err := d.ReleaseFiles(ctx, rel)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	for _, tc := range []struct {
		name   string
		damage func(dir string) error
	}{
		{"binary cut short", func(dir string) error { return os.Truncate(filepath.Join(dir, release.BinaryFile), int64(len(bin)/2)) }},
		{"binary empty", func(dir string) error { return os.Truncate(filepath.Join(dir, release.BinaryFile), 0) }},
		{"binary changed", func(dir string) error {
			b := bytes.Clone(bin)
			b[1000] ^= 1
			return os.WriteFile(filepath.Join(dir, release.BinaryFile), b, 0o600)
		}},
		{"manifest cut short", func(dir string) error { return os.Truncate(filepath.Join(dir, release.ManifestFile), 3) }},
		{"signature missing", func(dir string) error { return os.Remove(filepath.Join(dir, release.ManifestSignatureFile)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.damage(dir); err != nil {
				t.Fatal(err)
			}
			d := open()
			defer d.Close()
			got, err := d.ReleaseFiles(ctx, rel)
			if err != nil {
				t.Fatal(err)
			}
			for name, want := range map[string][]byte{release.BinaryFile: bin, release.ManifestFile: rel.Manifest,
				release.ManifestSignatureFile: rel.ManifestSignature, release.BinarySignatureFile: rel.BinarySignature} {
				if b, err := os.ReadFile(filepath.Join(got, name)); err != nil || !bytes.Equal(b, want) {
					t.Errorf("%s served: %d bytes, %v; want the store's %d bytes", name, len(b), err, len(want))
				}
			}
			if ents, _ := os.ReadDir(filepath.Dir(got)); len(ents) != 1 {
				t.Errorf("left beside the release: %v", ents)
			}
		})
	}
}
