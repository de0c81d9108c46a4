package datadir

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestRosterRoundTrip(t *testing.T) {
	dir := t.TempDir()
	d := &Dir{Path: dir}
	if got, err := d.LoadRoster(); err != nil || got != nil {
		t.Fatalf("no roster yet: got %v, %v; want nothing", got, err)
	}
	if err := d.SaveRoster([]string{"beta", "acme"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	got, err := d.LoadRoster()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got["acme"] || !got["beta"] {
		t.Fatalf("loaded %v, want acme and beta", got)
	}
	// A replaced roster forgets tenants that are no longer connected and
	// leaves no temporary files behind.
	if err := d.SaveRoster([]string{"beta"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.LoadRoster(); len(got) != 1 || !got["beta"] {
		t.Fatalf("after replace: %v, want beta only", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("data dir holds %d files, want just the roster", len(entries))
	}
}

func TestRosterCorruptIsAnError(t *testing.T) {
	dir := t.TempDir()
	d := &Dir{Path: dir}
	if err := os.WriteFile(filepath.Join(dir, rosterFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := d.LoadRoster(); err == nil {
		t.Fatalf("corrupt roster loaded as %v", got)
	}
}
