package relay

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestRosterRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if got, err := loadRoster(dir); err != nil || got != nil {
		t.Fatalf("no roster yet: got %v, %v; want nothing", got, err)
	}
	if err := saveRoster(dir, []string{"beta", "acme"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	got, err := loadRoster(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got["acme"] || !got["beta"] {
		t.Fatalf("loaded %v, want acme and beta", got)
	}
	// A replaced roster forgets tenants that are no longer connected and
	// leaves no temporary files behind.
	if err := saveRoster(dir, []string{"beta"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got, _ := loadRoster(dir); len(got) != 1 || !got["beta"] {
		t.Fatalf("after replace: %v, want beta only", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("data dir holds %d files, want just the roster", len(entries))
	}
}

func TestRosterCorruptIsAnError(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, rosterFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := loadRoster(dir); err == nil {
		t.Fatalf("corrupt roster loaded as %v", got)
	}
}
