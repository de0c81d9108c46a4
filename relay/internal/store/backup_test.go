package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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

// A restored store's windows between backup and restore are kept in its
// settings, every restore's (restoring twice keeps the first restore's
// window), until they ended longer ago than certificates live; a store
// never restored has none.
func TestRestoreWindows(t *testing.T) {
	s, _ := engines[0].open(t)
	if ws, err := s.RestoreWindows(ctx); err != nil || ws != nil {
		t.Fatalf("a store never restored: windows %v, %v", ws, err)
	}
	// A store restored once by a binary that kept one window.
	first := RestoreWindow{From: t0, To: t0.Add(36 * time.Hour)}
	if err := s.SetSetting(ctx, restoreWindowKey, fmt.Sprintf("%d %d", first.From.UnixMilli(), first.To.UnixMilli())); err != nil {
		t.Fatal(err)
	}
	second := RestoreWindow{From: t0.Add(40 * time.Hour), To: t0.Add(50 * time.Hour)}
	if err := s.AddRestoreWindow(ctx, second, second.To.Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	ws, err := s.RestoreWindows(ctx)
	if err != nil || !slices.Equal(ws, []RestoreWindow{second, first}) {
		t.Fatalf("restored twice: windows %+v, %v; want %+v and %+v", ws, err, second, first)
	}
	// Once the first window ended longer ago than a certificate lives,
	// it is dropped.
	third := RestoreWindow{From: t0.Add(60 * time.Hour), To: t0.Add(70 * time.Hour)}
	if err := s.AddRestoreWindow(ctx, third, third.To.Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if ws, err := s.RestoreWindows(ctx); err != nil || !slices.Equal(ws, []RestoreWindow{third, second}) {
		t.Fatalf("restored a third time: windows %+v, %v; want %+v and %+v", ws, err, third, second)
	}
	// At most MaxRestoreWindows, the newest.
	for i := range MaxRestoreWindows + 3 {
		w := RestoreWindow{From: t0.Add(time.Duration(100+i) * time.Hour), To: t0.Add(time.Duration(100+i)*time.Hour + time.Minute)}
		if err := s.AddRestoreWindow(ctx, w, t0); err != nil {
			t.Fatal(err)
		}
	}
	if ws, err := s.RestoreWindows(ctx); err != nil || len(ws) != MaxRestoreWindows || !ws[0].From.Equal(t0.Add(time.Duration(100+MaxRestoreWindows+2)*time.Hour)) {
		t.Fatalf("many restores: %d windows, newest %+v, %v", len(ws), ws[0], err)
	}
	if err := s.SetSetting(ctx, restoreWindowKey, "junk"); err != nil {
		t.Fatal(err)
	}
	if ws, err := s.RestoreWindows(ctx); err == nil || ws != nil {
		t.Fatalf("damaged windows read as %v, %v", ws, err)
	}
}

// A certificate of a restore window accepted from an agent becomes its
// newest and the newest of a window seen; one of a window as old or
// older is not recorded over it, nor one read against a newest that
// changed.
func TestRecordWindowCert(t *testing.T) { eachEngine(t, testRecordWindowCert) }

func testRecordWindowCert(t *testing.T, e engine) {
	s, _ := e.open(t)
	s.AddTenant(ctx, "acme", t0)
	if err := s.AddAgent(ctx, Agent{ID: "a1", Tenant: "acme", CreatedAt: t0, CertSerial: "c0", CertNotAfter: t0.Add(time.Hour), CertIssuedAt: t0}); err != nil {
		t.Fatal(err)
	}
	c1 := AgentCert{Serial: "c1", NotAfter: t0.Add(2 * time.Hour), Root: "sha256:r1", IssuedAt: t0.Add(time.Hour)}
	if err := s.RecordWindowCert(ctx, "a1", "c0", c1); err != nil {
		t.Fatal(err)
	}
	a, _ := s.Agent(ctx, "a1")
	if a.CertSerial != "c1" || !a.CertIssuedAt.Equal(c1.IssuedAt) || a.WindowCertSerial != "c1" || !a.WindowCertIssuedAt.Equal(c1.IssuedAt) || a.PrevCertSerial != "" {
		t.Fatalf("after recording c1: %+v", a)
	}
	// A renewal keeps the window's newest seen.
	c3 := AgentCert{Serial: "c3", NotAfter: t0.Add(5 * time.Hour), IssuedAt: t0.Add(3 * time.Hour)}
	if err := s.RenewAgentCert(ctx, "a1", "c1", c3, "c1", t0.Add(3*time.Hour+time.Minute)); err != nil {
		t.Fatal(err)
	}
	if a, _ = s.Agent(ctx, "a1"); a.WindowCertSerial != "c1" {
		t.Fatalf("after a renewal: %+v; want c1 the window's newest seen", a)
	}
	older := AgentCert{Serial: "c-old", NotAfter: t0.Add(2 * time.Hour), IssuedAt: t0.Add(30 * time.Minute)}
	if err := s.RecordWindowCert(ctx, "a1", "c3", older); !errors.Is(err, ErrCertChanged) {
		t.Fatalf("an older certificate of the window recorded over c1: %v", err)
	}
	c2 := AgentCert{Serial: "c2", NotAfter: t0.Add(3 * time.Hour), IssuedAt: t0.Add(2 * time.Hour)}
	if err := s.RecordWindowCert(ctx, "a1", "c1", c2); !errors.Is(err, ErrCertChanged) {
		t.Fatalf("recorded against a newest that changed: %v", err)
	}
	if err := s.RecordWindowCert(ctx, "a1", "c3", c2); err != nil {
		t.Fatal(err)
	}
	if a, _ = s.Agent(ctx, "a1"); a.CertSerial != "c2" || a.WindowCertSerial != "c2" || a.PrevCertSerial != "" {
		t.Fatalf("after recording c2: %+v", a)
	}
	if err := s.RecordWindowCert(ctx, "missing", "c0", c2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an unknown agent: %v", err)
	}
}
