package datadir

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/release"
	"github.com/tetherhq/tether/relay/internal/store"
)

// SweepReleaseFiles removes the copies of versions the store no longer
// has, and what a removal cut short left, and nothing else: the copies of
// releases still published, and entries that are no copy of a release.
// RemoveReleaseFiles refuses a version that could name a path.
func TestSweepReleaseFiles(t *testing.T) {
	d, _ := open(t, t.TempDir(), Options{TrustDomain: "sweep.test"})
	var kept store.Release
	for _, v := range []string{"1.0.0", "1.1.0"} {
		bin := "binary " + v
		sum := sha256.Sum256([]byte(bin))
		r := store.Release{Version: v, OS: "linux", Arch: "amd64", Channel: release.DefaultChannel, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(bin)),
			ExpiresAt: time.Now().Add(time.Hour), PublishedAt: time.Now(), BinarySignature: []byte("s"), Manifest: []byte("m"), ManifestSignature: []byte("s")}
		if err := d.Store.AddRelease(ctx, r, strings.NewReader(bin)); err != nil {
			t.Fatal(err)
		}
		if _, err := d.ReleaseFiles(ctx, r); err != nil {
			t.Fatal(err)
		}
		kept = r
	}
	root := filepath.Join(d.Path, ReleasesDir)
	for _, p := range []string{".removed-123/1.2.0/linux-amd64-stable", "notes", "not-a-version/x"} {
		if err := os.MkdirAll(filepath.Join(root, p), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Store.RemoveRelease(ctx, "1.0.0", time.Now(), false); err != nil {
		t.Fatal(err)
	}
	removed, err := d.SweepReleaseFiles(ctx)
	if err != nil || !slices.Equal(removed, []string{"1.0.0"}) {
		t.Fatalf("sweep: %v, %v; want [1.0.0]", removed, err)
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"1.1.0", "not-a-version", "notes"}; !slices.Equal(names, want) {
		t.Errorf("left in %s: %v, want %v", root, names, want)
	}
	if dir, err := d.ReleaseFiles(ctx, kept); err != nil || filepath.Base(filepath.Dir(dir)) != "1.1.0" {
		t.Errorf("copy of 1.1.0: %s, %v", dir, err)
	}
	for _, v := range []string{"../ca", "1.0", ""} {
		if _, err := d.RemoveReleaseFiles(v); err == nil {
			t.Errorf("RemoveReleaseFiles(%q): no error", v)
		}
	}
}
