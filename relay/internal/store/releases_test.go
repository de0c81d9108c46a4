package store

import (
	"bytes"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/tetherhq/tether/protocol/release"
)

// binary returns n bytes of test content and their SHA-256 in hex.
func binary(n int, seed byte) ([]byte, string) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

func TestReleasesAndRollouts(t *testing.T) { eachEngine(t, testReleasesAndRollouts) }

func testReleasesAndRollouts(t *testing.T, e engine) {
	s, _ := e.open(t)
	// Over two blob parts, so that reading crosses rows.
	bin, sum := binary(2*blobPart+12345, 1)
	r := Release{Version: "1.2.0", OS: "linux", Arch: "amd64", Channel: "stable", SHA256: sum, Size: int64(len(bin)), ExpiresAt: t0, PublishedAt: t0,
		BinarySignature: []byte("bsig"), Manifest: []byte("{}"), ManifestSignature: []byte("msig")}
	if err := s.AddRelease(ctx, r, bytes.NewReader(bin)); err != nil {
		t.Fatal(err)
	}
	if err := s.AddRelease(ctx, r, bytes.NewReader(bin)); !errors.Is(err, ErrExists) {
		t.Fatalf("second publish: got %v, want ErrExists", err)
	}
	if got, err := s.Releases(ctx, "1.2.0"); err != nil || len(got) != 1 || got[0].SHA256 != sum || !got[0].ExpiresAt.Equal(t0) || got[0].Manifest != nil {
		t.Fatalf("releases: got %+v, %v", got, err)
	}
	got, err := s.Release(ctx, "1.2.0", "linux", "amd64", "stable")
	if err != nil || string(got.BinarySignature) != "bsig" || string(got.Manifest) != "{}" || string(got.ManifestSignature) != "msig" {
		t.Fatalf("release: got %+v, %v", got, err)
	}
	rd, err := s.OpenBlob(ctx, sum)
	if err != nil {
		t.Fatal(err)
	}
	if back, err := io.ReadAll(rd); err != nil || !bytes.Equal(back, bin) {
		t.Fatalf("blob read back: %d bytes, %v; want %d bytes equal", len(back), err, len(bin))
	}
	// The same binary on another channel is stored once.
	r.Channel = "beta"
	if err := s.AddRelease(ctx, r, bytes.NewReader(bin)); err != nil {
		t.Fatal(err)
	}
	var parts int
	s.db.QueryRow(`SELECT count(*) FROM blobs`).Scan(&parts)
	if parts != 3 {
		t.Fatalf("blob rows after two releases of one binary: %d, want 3", parts)
	}
	// Content that does not match its hash or size is refused, and
	// nothing of the release stays.
	other, _ := binary(100, 2)
	bad := Release{Version: "1.3.0", OS: "linux", Arch: "amd64", Channel: "stable", SHA256: hex.EncodeToString(make([]byte, 32)), Size: 100, PublishedAt: t0}
	if err := s.AddRelease(ctx, bad, bytes.NewReader(other)); err == nil {
		t.Fatal("a binary that does not hash to its SHA-256 was stored")
	}
	if rs, _ := s.Releases(ctx, "1.3.0"); len(rs) != 0 {
		t.Fatalf("a refused release left rows: %+v", rs)
	}
	if _, err := s.OpenBlob(ctx, bad.SHA256); !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenBlob of a refused binary: %v, want ErrNotFound", err)
	}
	if _, err := s.ActiveRollout(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("active rollout before any: got %v, want ErrNotFound", err)
	}
	id1, err := s.AddRollout(ctx, Rollout{Version: "1.2.0", Percent: 10, CreatedAt: t0})
	if err != nil {
		t.Fatal(err)
	}
	id2, err := s.AddRollout(ctx, Rollout{Version: "1.2.0", Tenants: []string{"a", "b"}, HaltAt: 0.5, Batch: 2, CreatedAt: t0})
	if err != nil {
		t.Fatal(err)
	}
	act, err := s.ActiveRollout(ctx)
	if err != nil || act.ID != id2 || len(act.Tenants) != 2 || act.HaltAt != 0.5 || act.Batch != 2 {
		t.Fatalf("active: got %+v, %v, want rollout %d", act, err, id2)
	}
	all, _ := s.Rollouts(ctx, false)
	if len(all) != 2 || all[1].ID != id1 || all[1].State != RolloutSuperseded {
		t.Fatalf("rollouts: got %+v", all)
	}
	if ok, err := s.HaltRollout(ctx, id2, "2 of 3 failed", t0); !ok || err != nil {
		t.Fatalf("halt: %v %v", ok, err)
	}
	if ok, _ := s.HaltRollout(ctx, id2, "again", t0); ok {
		t.Fatal("halted a halted rollout again")
	}
	u := AgentUpdate{Agent: "ag1", Version: "1.2.0", Tenant: "a", Rollout: id2, State: "offered", From: "1.0.0", UpdatedAt: t0}
	if err := s.SetAgentUpdate(ctx, u); err != nil {
		t.Fatal(err)
	}
	u.State, u.Reason, u.From, u.Rollout = "rolled_back", "unhealthy", "", 0
	if err := s.SetAgentUpdate(ctx, u); err != nil {
		t.Fatal(err)
	}
	upd, err := s.AgentUpdate(ctx, "ag1", "1.2.0")
	if err != nil || upd.State != "rolled_back" || upd.From != "1.0.0" || upd.Rollout != id2 || upd.Reason != "unhealthy" {
		t.Fatalf("agent update: got %+v, %v", upd, err)
	}
	if _, err := s.AgentUpdate(ctx, "ag2", "1.2.0"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown agent update: got %v", err)
	}
}

// TestReleaseDirsImported opens a database of schema version 7, whose
// release row names the directory its files were copied to: the files move
// into the store and the row no longer names a path.
func TestReleaseDirsImported(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tether.db")
	bin, sum := binary(5000, 3)
	relDir := filepath.Join(dir, "releases", "1.0.0", "linux-amd64-stable")
	os.MkdirAll(relDir, 0o700)
	for name, data := range map[string][]byte{release.BinaryFile: bin, release.BinarySignatureFile: []byte("bs"), release.ManifestFile: []byte("m"), release.ManifestSignatureFile: []byte("ms")} {
		if err := os.WriteFile(filepath.Join(relDir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeVersion(t, path, 7,
		fmt.Sprintf(`INSERT INTO releases (version, os, arch, channel, sha256, size, expires_at, dir, published_at) VALUES ('1.0.0', 'linux', 'amd64', 'stable', '%s', %d, 0, '%s', 0)`, sum, len(bin), relDir),
		`INSERT INTO releases (version, os, arch, channel, sha256, size, expires_at, dir, published_at) VALUES ('0.9.0', 'linux', 'amd64', 'stable', 'ff', 1, 0, '/nonexistent', 0)`)
	s, err := OpenDSN(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Release(ctx, "1.0.0", "linux", "amd64", "stable")
	if err != nil || string(got.Manifest) != "m" || string(got.ManifestSignature) != "ms" || string(got.BinarySignature) != "bs" {
		t.Fatalf("imported release: %+v, %v", got, err)
	}
	rd, err := s.OpenBlob(ctx, sum)
	if err != nil {
		t.Fatal(err)
	}
	if back, _ := io.ReadAll(rd); !bytes.Equal(back, bin) {
		t.Fatal("imported binary differs")
	}
	var dirs int
	s.db.QueryRow(`SELECT count(*) FROM releases WHERE dir <> ''`).Scan(&dirs)
	if dirs != 1 {
		t.Fatalf("rows still naming a directory: %d, want 1 (the release whose files are gone)", dirs)
	}
	if _, err := s.Release(ctx, "0.9.0", "linux", "amd64", "stable"); err == nil {
		t.Fatal("a release whose files were never imported was served")
	}
}

// writeVersion creates a database at path with the migrations up to
// version applied, then runs stmts.
func writeVersion(t *testing.T, path string, version int, stmts ...string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	all := []string{`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`}
	for _, m := range migrations {
		if m.version > version {
			break
		}
		all = append(all, sqliteDialect{}.ddl(m.sql), fmt.Sprintf(`INSERT INTO schema_migrations VALUES (%d, 0)`, m.version))
	}
	for _, q := range append(all, stmts...) {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}
