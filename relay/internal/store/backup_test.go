package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// A backup taken while another connection of another Store (as another
// process would) keeps writing, on a database in WAL mode, is a
// consistent database of its own: it passes integrity_check, holds a
// prefix of the writes (every agent added before the backup began, none
// half-written: the change feed and the agents agree), and opens as a
// store.
func TestBackupToWhileWriting(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tether.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.AddTenant(ctx, "acme", t0); err != nil {
		t.Fatal(err)
	}
	w, err := Open(ctx, path) // another writer on the same file
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var mode string
	if err := s.db.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal mode %q, %v; want wal", mode, err)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var written sync.WaitGroup
	written.Add(1)
	wg.Go(func() {
		for i := 0; ; i++ {
			// Each agent is added with a change of the feed in one
			// transaction (a revocation right away), so that a copy
			// torn between the two would show.
			id := fmt.Sprintf("a%05d", i)
			if err := w.AddAgent(ctx, Agent{ID: id, Tenant: "acme", CreatedAt: t0}); err != nil {
				t.Error(err)
				return
			}
			if _, err := w.RevokeAgent(ctx, id, "test", t0); err != nil {
				t.Error(err)
				return
			}
			if i == 50 {
				written.Done()
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	})
	written.Wait()
	before, err := s.Summary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(dir, "backup.db")
	err = s.BackupTo(ctx, backup)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(backup); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v, %v; want mode 0600", fi, err)
	}
	for _, side := range []string{"-wal", "-shm"} {
		if _, err := os.Stat(backup + side); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("backup has a %s file: %v", side, err)
		}
	}
	got, err := CheckFile(ctx, backup)
	if err != nil {
		t.Fatal(err)
	}
	// Agents and revocations are separate transactions: the last agent
	// may be unrevoked. Each revocation wrote its change in its own
	// transaction, and the tenant one more.
	if got.Agents < before.Agents || got.Agents-got.RevokedAgents > 1 || got.LatestChange != got.RevokedAgents+1 || got.Schema != BinarySchemaVersion() {
		t.Fatalf("backup holds %+v; want at least the %d agents written before it, all but maybe the last revoked, a change for each revocation, schema %d",
			got, before.Agents, BinarySchemaVersion())
	}
	// CheckFile changed nothing and left no journal behind.
	for _, side := range []string{"-wal", "-shm", "-journal"} {
		if _, err := os.Stat(backup + side); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("checking the backup left a %s file: %v", side, err)
		}
	}
	// The copy opens as a store, and its feed ends at the last revocation
	// it holds.
	b, err := Open(ctx, backup)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	revs, err := b.RevokedSince(ctx, time.Time{})
	if err != nil || int64(len(revs)) != got.RevokedAgents {
		t.Fatalf("backup: %d revocations, %v; want %d", len(revs), err, got.RevokedAgents)
	}
	if err := s.BackupTo(ctx, backup); !errors.Is(err, os.ErrExist) {
		t.Fatalf("backup over an existing file: %v, want os.ErrExist", err)
	}
}

// CheckFile refuses a file that is not a relay's store, and one damaged.
func TestCheckFileRefuses(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.db")
	if err := os.WriteFile(junk, []byte("not a database at all, not even close to one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := CheckFile(ctx, junk); err == nil {
		t.Fatal("CheckFile accepted a file that is no database")
	}
	if _, err := CheckFile(ctx, filepath.Join(dir, "missing.db")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("CheckFile of a missing file: %v", err)
	}
	s, err := Open(ctx, filepath.Join(dir, "tether.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	backup := filepath.Join(dir, "b.db")
	if err := s.BackupTo(ctx, backup); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(backup)
	if err != nil {
		t.Fatal(err)
	}
	// Damage the b-tree header of every page after the first (the
	// schema's): the tables and indexes are no longer b-trees.
	pageSize := int(raw[16])<<8 | int(raw[17])
	for p := pageSize; p+8 <= len(raw); p += pageSize {
		copy(raw[p:p+8], "\x00garbage")
	}
	if err := os.WriteFile(backup, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := CheckFile(ctx, backup); err == nil {
		t.Fatal("CheckFile accepted a damaged database")
	}
}

// A restored relay's first start spends the join tokens of the backup.
func TestSpendJoinTokens(t *testing.T) {
	s, _ := engines[0].open(t)
	if err := s.AddTenant(ctx, "acme", t0); err != nil {
		t.Fatal(err)
	}
	addToken(t, s, "old", "s1", 3, time.Hour)
	addToken(t, s, "used", "s2", 1, time.Hour)
	if _, err := s.ConsumeToken(ctx, "used", matches("s2"), t0, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.AddToken(ctx, Token{ID: "new", Tenant: "acme", SecretHash: hash("s3"), CreatedAt: t0.Add(time.Minute), ExpiresAt: t0.Add(time.Hour), MaxUses: 1}); err != nil {
		t.Fatal(err)
	}
	latest, _ := s.LatestChange(ctx)
	spent, err := s.SpendJoinTokens(ctx, t0)
	if err != nil {
		t.Fatal(err)
	}
	if len(spent) != 1 || spent[0].ID != "old" || spent[0].Uses != 0 {
		t.Fatalf("spent %+v; want the token old, as it was", spent)
	}
	if _, err := s.ConsumeToken(ctx, "old", matches("s1"), t0, nil); !errors.Is(err, ErrTokenUsedUp) {
		t.Fatalf("spent token consumed: %v", err)
	}
	if _, err := s.ConsumeToken(ctx, "new", matches("s3"), t0, nil); err != nil {
		t.Fatalf("token made after the backup: %v", err)
	}
	if ch, _ := s.Changes(ctx, latest, 10); len(ch) != 1 || ch[0].Kind != ChangeToken || ch[0].Subject != "old" {
		t.Fatalf("changes %+v; want one for the spent token", ch)
	}
}

// A restored store's window between backup and restore is kept in its
// settings; a store never restored has none.
func TestRestoreWindow(t *testing.T) {
	s, _ := engines[0].open(t)
	if _, ok, err := s.RestoreWindow(ctx); err != nil || ok {
		t.Fatalf("a store never restored: window %v, %v", ok, err)
	}
	w := RestoreWindow{From: t0, To: t0.Add(36 * time.Hour)}
	if err := s.SetRestoreWindow(ctx, w); err != nil {
		t.Fatal(err)
	}
	got, ok, err := s.RestoreWindow(ctx)
	if err != nil || !ok || got != w {
		t.Fatalf("window %+v %v, %v; want %+v", got, ok, err, w)
	}
	if err := s.SetSetting(ctx, restoreWindowKey, "junk"); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := s.RestoreWindow(ctx); err == nil || ok {
		t.Fatalf("a damaged window read as %v, %v", ok, err)
	}
}
