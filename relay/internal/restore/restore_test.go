package restore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/policy"
	"github.com/tetherhq/tether/relay/internal/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var ctx = context.Background()

func TestKindNames(t *testing.T) {
	if kindOperatorCertRevoke != admin.KindOperatorCertRevoke {
		t.Fatalf("kindOperatorCertRevoke %q, admin's %q", kindOperatorCertRevoke, admin.KindOperatorCertRevoke)
	}
	if Kind != admin.KindRestore {
		t.Fatalf("Kind %q, admin.KindRestore %q", Kind, admin.KindRestore)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func openDir(t *testing.T, path string) *datadir.Dir {
	t.Helper()
	d, _, err := datadir.Open(ctx, path, datadir.Options{TrustDomain: "tether.example"}, time.Now())
	must(t, err)
	t.Cleanup(func() { d.Close() })
	return d
}

// copyTree copies a backup into place as an operator would (cp -a).
func copyTree(t *testing.T, dst, src string) {
	t.Helper()
	must(t, os.CopyFS(dst, os.DirFS(src)))
	must(t, filepath.Walk(dst, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.IsDir() {
			return os.Chmod(path, 0o700)
		}
		return os.Chmod(path, 0o600)
	}))
}

// The first start of a restored data directory replays what the audit
// file recorded after the backup — revocations, enrolments, renewals —
// spends the backup's join tokens, says what it could not redo, and does
// it once.
func TestHandle(t *testing.T) {
	live := t.TempDir()
	d := openDir(t, live)
	st := d.Store
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	must(t, st.AddTenant(ctx, "acme", t0))
	for _, id := range []string{"a1", "a2", "a3"} {
		must(t, st.AddAgent(ctx, store.Agent{ID: id, Tenant: "acme", CreatedAt: t0, CertSerial: "s-" + id, CertNotAfter: t0.Add(24 * time.Hour), CertIssuedAt: t0}))
	}
	must(t, st.AddToken(ctx, store.Token{ID: "tok-old", Tenant: "acme", SecretHash: []byte("h"), CreatedAt: t0, ExpiresAt: t0.Add(48 * time.Hour), MaxUses: 5}))
	must(t, st.AddBackend(ctx, store.Backend{Name: "billing", KeyHash: []byte("k"), CreatedAt: t0}))
	backup := filepath.Join(t.TempDir(), "b")
	m, err := d.Backup(ctx, backup, datadir.BackupOptions{})
	must(t, err)

	// After the backup, on the live directory: what the operator and the
	// agents did, in the store and the audit file.
	trail, err := audit.Open(ctx, st, d.File(datadir.AuditFile), slog.New(slog.DiscardHandler))
	must(t, err)
	// Rotated after about every record: the records after the backup
	// are in rotated files, which the replay reads too, in order.
	trail.SetRotation(audit.Rotation{MaxSize: 200})
	after := m.TakenAt.Add(time.Second)
	add := func(rec audit.Record) {
		rec.Outcome = audit.OutcomeOK
		trail.Add(rec)
	}
	_, err = st.RevokeAgent(ctx, "a1", "stolen laptop", after)
	must(t, err)
	add(audit.Record{At: after, Kind: audit.Revoke, Tenant: "acme", Agent: "a1", Detail: map[string]any{"reason": "stolen laptop"}})
	must(t, st.AddAgent(ctx, store.Agent{ID: "a4", Tenant: "acme", Hostname: "db-2", CreatedAt: after}))
	add(audit.Record{At: after, Kind: audit.Enrol, Tenant: "acme", Agent: "a4", Detail: map[string]any{"hostname": "db-2", "token": "tok-old"}})
	renewedAt := after.Add(time.Second)
	add(audit.Record{At: renewedAt, Kind: audit.Renew, Tenant: "acme", Agent: "a2",
		Detail: map[string]any{"cert_serial": "s-a2-renewed", "not_after": renewedAt.Add(24 * time.Hour), "ca_root": m.CARoots[0], "replaced_serial": "s-a2"}})
	add(audit.Record{At: after, Kind: audit.TokenCreate, Tenant: "acme", Detail: map[string]any{"token": "tok-new"}})
	add(audit.Record{At: after, Kind: audit.BackendRemove, Backend: "billing"})
	// A record from before the backup is not replayed: a3 stays.
	add(audit.Record{At: m.TakenAt.Add(-time.Minute), Kind: audit.Revoke, Tenant: "acme", Agent: "a3"})
	must(t, trail.Close())
	// A line cut short by a crash.
	f, err := os.OpenFile(d.File(datadir.AuditFile), os.O_APPEND|os.O_WRONLY, 0)
	must(t, err)
	fmt.Fprintf(f, `{"at":"%s","kind":"agent.rev`, after.Format(time.RFC3339))
	f.Close()

	if trail.Rotations() < 3 {
		t.Fatalf("the audit file was rotated %d times, want at least 3", trail.Rotations())
	}

	// Restore: the backup in place of the directory, the audit files
	// (rotated ones included) kept.
	restored := filepath.Join(t.TempDir(), "data")
	copyTree(t, restored, backup)
	files, err := audit.Files(d.File(datadir.AuditFile))
	must(t, err)
	for _, name := range files {
		raw, err := os.ReadFile(name)
		must(t, err)
		must(t, os.WriteFile(filepath.Join(restored, filepath.Base(name)), raw, 0o600))
	}

	r := openDir(t, restored)
	trail2, err := audit.Open(ctx, r.Store, r.File(datadir.AuditFile), slog.New(slog.DiscardHandler))
	must(t, err)
	defer trail2.Close()
	var logs bytes.Buffer
	cfg := Config{Dir: r, AuditFile: r.File(datadir.AuditFile), Audit: trail2, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	rep, handled, err := Handle(ctx, cfg)
	must(t, err)
	if !handled || rep.Backup.ID != m.ID {
		t.Fatalf("handled %v, backup %q; want the restore of %q handled", handled, rep.Backup.ID, m.ID)
	}
	a1, err := r.Store.Agent(ctx, "a1")
	if err != nil || a1.RevokedAt.IsZero() || a1.RevokedReason != "stolen laptop" {
		t.Fatalf("a1 revoked after the backup: %+v, %v; want revoked again", a1, err)
	}
	if a3, _ := r.Store.Agent(ctx, "a3"); !a3.RevokedAt.IsZero() {
		t.Fatal("a record from before the backup was replayed")
	}
	if a4, err := r.Store.Agent(ctx, "a4"); err != nil || a4.Hostname != "db-2" || !a4.CertIssuedAt.IsZero() {
		t.Fatalf("a4 enrolled after the backup: %+v, %v; want registered, its certificate unrecorded", a4, err)
	}
	if a2, _ := r.Store.Agent(ctx, "a2"); a2.CertSerial != "s-a2-renewed" || !a2.CertIssuedAt.Equal(renewedAt.Truncate(time.Millisecond)) {
		t.Fatalf("a2 renewed after the backup: newest certificate %q issued %v; want s-a2-renewed", a2.CertSerial, a2.CertIssuedAt)
	}
	if _, err := r.Store.Backend(ctx, "billing"); err == nil {
		t.Fatal("backend removed after the backup is back")
	}
	tok, err := r.Store.JoinToken(ctx, "tok-old")
	if err != nil || tok.Uses != tok.MaxUses {
		t.Fatalf("backup's join token: %+v, %v; want spent", tok, err)
	}
	if rep.Gap {
		t.Fatal("a gap reported in an audit file that begins before the backup")
	}
	if rep.Malformed != 1 || !slices.ContainsFunc(rep.Unreplayable, func(s string) bool { return strings.Contains(s, "tok-new") }) {
		t.Fatalf("report %+v", rep)
	}
	for _, want := range []string{"restored from a backup", "tok-old", "tok-new", "agent.revoke acme/a1"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the warnings lack %q:\n%s", want, logs.String())
		}
	}
	recs, err := r.Store.ListAudit(ctx, store.AuditFilter{Kind: Kind})
	if err != nil || len(recs) != 1 {
		t.Fatalf("audit records of the restore: %v, %v", recs, err)
	}
	if recs, _ := r.Store.ListAudit(ctx, store.AuditFilter{Kind: audit.Revoke}); len(recs) != 1 || recs[0].Agent != "a1" {
		t.Fatalf("the store's trail has agent.revoke records %v; want the one dated after the backup (those dated before are taken to be in it)", recs)
	}

	if ws, err := r.Store.RestoreWindows(ctx); err != nil || len(ws) != 1 || !ws[0].From.Equal(m.TakenAt.Truncate(time.Millisecond)) {
		t.Fatalf("restore windows %+v, %v; want one from the backup's time %v", ws, err, m.TakenAt)
	}
	// Once.
	if _, handled, err := Handle(ctx, cfg); err != nil || handled {
		t.Fatalf("second start: handled %v, %v", handled, err)
	}
}

// Without an audit file that records what happened since, the warning
// says what to do by hand.
func TestHandleWithoutAuditFile(t *testing.T) {
	d := openDir(t, t.TempDir())
	backup := filepath.Join(t.TempDir(), "b")
	_, err := d.Backup(ctx, backup, datadir.BackupOptions{})
	must(t, err)
	r := openDir(t, backup)
	trail, err := audit.Open(ctx, r.Store, filepath.Join(t.TempDir(), "audit.log"), slog.New(slog.DiscardHandler))
	must(t, err)
	defer trail.Close()
	var logs bytes.Buffer
	_, handled, err := Handle(ctx, Config{Dir: r, AuditFile: filepath.Join(t.TempDir(), "missing.log"), Audit: trail, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil || !handled {
		t.Fatalf("handled %v, %v", handled, err)
	}
	if !strings.Contains(logs.String(), "Revoke them again now") {
		t.Fatalf("no warning to revoke again by hand:\n%s", logs.String())
	}
}

// Lines of any length and content are read or skipped, never fatal.
func TestReadLine(t *testing.T) {
	long := strings.Repeat("x", maxLine+10)
	in := "a\n" + long + "\nb\n" + long
	br := bufioReader(in)
	var got []string
	for {
		line, err := readLine(br)
		if err == errLongLine {
			got = append(got, "LONG")
			continue
		}
		if err != nil {
			break
		}
		got = append(got, strings.TrimSpace(string(line)))
	}
	if want := []string{"a", "LONG", "b", "LONG"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReaderSize(strings.NewReader(s), 4096) }

// The audit file is read line by line whatever it holds: every byte is
// in a line returned or in one skipped as too long, and nothing panics.
func FuzzReadLine(f *testing.F) {
	f.Add([]byte("{\"at\":\"2026-12-07T03:45:01Z\",\"kind\":\"agent.revoke\"}\n{\"at\""), 16)
	f.Add([]byte("\n\n\n"), 1)
	f.Add([]byte(strings.Repeat("x", 5000)), 3)
	f.Fuzz(func(t *testing.T, in []byte, bufSize int) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 16+bufSize%8192)
		var got []byte
		for range len(in) + 2 {
			line, err := readLine(br)
			if err == errLongLine {
				t.Fatalf("a line of at most %d bytes reported too long", len(in))
			}
			got = append(got, line...)
			if err != nil {
				break
			}
		}
		if !bytes.Equal(got, in) {
			t.Fatalf("lines read join to %q, want %q", got, in)
		}
	})
}

// An audit file that begins after the backup (rotated since) is applied,
// with a warning that what happened in between is missing.
func TestHandleAuditFileGap(t *testing.T) {
	d := openDir(t, t.TempDir())
	must(t, d.Store.AddTenant(ctx, "acme", time.Now()))
	must(t, d.Store.AddAgent(ctx, store.Agent{ID: "a1", Tenant: "acme", CreatedAt: time.Now()}))
	backup := filepath.Join(t.TempDir(), "b")
	m, err := d.Backup(ctx, backup, datadir.BackupOptions{})
	must(t, err)
	r := openDir(t, backup)
	file := filepath.Join(t.TempDir(), "audit.log")
	trail, err := audit.Open(ctx, d.Store, file, slog.New(slog.DiscardHandler))
	must(t, err)
	trail.Add(audit.Record{At: m.TakenAt.Add(time.Hour), Kind: audit.Revoke, Outcome: audit.OutcomeOK, Tenant: "acme", Agent: "a1"})
	must(t, trail.Close())
	trail2, err := audit.Open(ctx, r.Store, filepath.Join(t.TempDir(), "other.log"), slog.New(slog.DiscardHandler))
	must(t, err)
	defer trail2.Close()
	var logs bytes.Buffer
	// Restored two hours after the backup.
	restoredAt := func() time.Time { return m.TakenAt.Add(2 * time.Hour) }
	rep, _, err := Handle(ctx, Config{Dir: r, AuditFile: file, Audit: trail2, Logger: slog.New(slog.NewTextHandler(&logs, nil)), Now: restoredAt})
	must(t, err)
	if !rep.Gap || !strings.Contains(logs.String(), "begins after the backup") {
		t.Fatalf("gap %v; logs:\n%s", rep.Gap, logs.String())
	}
	if a1, _ := r.Store.Agent(ctx, "a1"); a1.RevokedAt.IsZero() {
		t.Fatal("the revocation the file holds was not applied")
	}
}

// The audit files rotated before the backup are passed over but the
// newest of them (they hold only what came before it: no gap), and the
// replay reads the later ones and the audit file, in order.
func TestHandleRotatedFilesFromBackup(t *testing.T) {
	d := openDir(t, t.TempDir())
	must(t, d.Store.AddTenant(ctx, "acme", time.Now()))
	for _, id := range []string{"a1", "a2"} {
		must(t, d.Store.AddAgent(ctx, store.Agent{ID: id, Tenant: "acme", CreatedAt: time.Now()}))
	}
	backup := filepath.Join(t.TempDir(), "b")
	m, err := d.Backup(ctx, backup, datadir.BackupOptions{})
	must(t, err)
	r := openDir(t, backup)
	file := filepath.Join(t.TempDir(), "audit.log")
	line := func(rec audit.Record) string {
		rec.Outcome = audit.OutcomeOK
		b, err := json.Marshal(rec)
		must(t, err)
		return string(b) + "\n"
	}
	for _, f := range []struct {
		rotated time.Time // zero: the audit file
		lines   string
	}{
		// Passed over: a line that is no record would count as malformed.
		{m.TakenAt.Add(-2 * time.Hour), "not a record\n"},
		{m.TakenAt.Add(-time.Minute), line(audit.Record{At: m.TakenAt.Add(-time.Hour), Kind: audit.TenantAdd, Tenant: "acme"})},
		{m.TakenAt.Add(time.Hour), line(audit.Record{At: m.TakenAt.Add(time.Minute), Kind: audit.Revoke, Tenant: "acme", Agent: "a1"})},
		{time.Time{}, line(audit.Record{At: m.TakenAt.Add(90 * time.Minute), Kind: audit.Revoke, Tenant: "acme", Agent: "a2"})},
	} {
		name := file
		if !f.rotated.IsZero() {
			name = audit.RotatedName(file, f.rotated)
		}
		must(t, os.WriteFile(name, []byte(f.lines), 0o600))
	}
	trail, err := audit.Open(ctx, r.Store, filepath.Join(t.TempDir(), "other.log"), slog.New(slog.DiscardHandler))
	must(t, err)
	defer trail.Close()
	restoredAt := func() time.Time { return m.TakenAt.Add(2 * time.Hour) }
	rep, handled, err := Handle(ctx, Config{Dir: r, AuditFile: file, Audit: trail, Logger: slog.New(slog.DiscardHandler), Now: restoredAt})
	must(t, err)
	if !handled || rep.Gap || rep.Malformed != 0 || rep.Imported != 2 {
		t.Fatalf("handled %v, report %+v; want no gap, nothing malformed, the 2 records after the backup imported", handled, rep)
	}
	for _, id := range []string{"a1", "a2"} {
		if a, _ := r.Store.Agent(ctx, id); a.RevokedAt.IsZero() {
			t.Errorf("%s, revoked after the backup (in a rotated file, or the audit file), is not revoked again", id)
		}
	}
}

// A damaged or planted line in the audit file cannot re-point or revoke
// an agent: a renewal or revocation that names another tenant than the
// agent's, a renewal by a CA root the backup does not have or whose
// certificate expired before it was issued, is skipped and reported; a
// record dated after the restore is malformed. The agent's real
// certificate, renewed after the backup, is still accepted.
func TestHandleSkipsRecordsThatDoNotHoldTogether(t *testing.T) {
	d := openDir(t, t.TempDir())
	st := d.Store
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	must(t, st.AddTenant(ctx, "acme", t0))
	must(t, st.AddTenant(ctx, "other", t0))
	for _, id := range []string{"a2", "a3"} {
		must(t, st.AddAgent(ctx, store.Agent{ID: id, Tenant: "acme", CreatedAt: t0, CertSerial: "s-" + id, CertNotAfter: t0.Add(24 * time.Hour), CertIssuedAt: t0}))
	}
	backup := filepath.Join(t.TempDir(), "b")
	m, err := d.Backup(ctx, backup, datadir.BackupOptions{})
	must(t, err)
	restored := filepath.Join(t.TempDir(), "data")
	copyTree(t, restored, backup)

	after := m.TakenAt.Add(time.Second)
	far := time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
	renew := func(at time.Time, tenant, agent, serial string, notAfter time.Time, root string) string {
		return fmt.Sprintf(`{"at":%q,"kind":"agent.renew","outcome":"ok","tenant":%q,"agent":%q,"detail":{"cert_serial":%q,"not_after":%q,"ca_root":%q}}`+"\n",
			at.Format(time.RFC3339Nano), tenant, agent, serial, notAfter.Format(time.RFC3339Nano), root)
	}
	root := m.CARoots[0]
	lines := renew(far, "other", "a2", "bogus-2099", far.Add(time.Hour), root) + // dated in the future
		renew(far, "acme", "a2", "bogus-2099-acme", far.Add(time.Hour), root) + // dated in the future, right tenant
		renew(after, "other", "a2", "bogus-tenant", after.Add(time.Hour), root) + // another tenant
		renew(after, "acme", "a2", "bogus-root", after.Add(time.Hour), "sha256:unknown") + // unknown CA root
		renew(after, "acme", "a2", "bogus-expired", after.Add(-time.Hour), root) + // expired when issued
		fmt.Sprintf(`{"at":%q,"kind":"agent.revoke","outcome":"ok","tenant":"other","agent":"a2","detail":{"reason":"planted"}}`+"\n", after.Format(time.RFC3339Nano)) +
		renew(after, "acme", "a3", "s-a3-renewed", after.Add(time.Hour), root) // genuine
	must(t, os.WriteFile(filepath.Join(restored, datadir.AuditFile), []byte(lines), 0o600))

	r := openDir(t, restored)
	trail, err := audit.Open(ctx, r.Store, filepath.Join(t.TempDir(), "trail.log"), slog.New(slog.DiscardHandler))
	must(t, err)
	defer trail.Close()
	var logs bytes.Buffer
	restoredAt := m.TakenAt.Add(time.Hour)
	rep, handled, err := Handle(ctx, Config{Dir: r, AuditFile: r.File(datadir.AuditFile), Audit: trail, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Now: func() time.Time { return restoredAt }})
	must(t, err)
	if !handled {
		t.Fatal("not handled")
	}
	a2, err := r.Store.Agent(ctx, "a2")
	must(t, err)
	if a2.CertSerial != "s-a2" || !a2.RevokedAt.IsZero() {
		t.Errorf("a2 after the restore: newest %q issued %v, revoked %v; want s-a2 as backed up, not revoked", a2.CertSerial, a2.CertIssuedAt, a2.RevokedAt)
	}
	ws, err := r.Store.RestoreWindows(ctx)
	must(t, err)
	if genuine := m.TakenAt.Add(2 * time.Second); !policy.LostRenewal(a2, genuine, ws) {
		t.Errorf("a2's real certificate renewed after the backup (issued %v) is refused: newest on record %q issued %v", genuine, a2.CertSerial, a2.CertIssuedAt)
	}
	if a3, _ := r.Store.Agent(ctx, "a3"); a3.CertSerial != "s-a3-renewed" {
		t.Errorf("a3's genuine renewal not applied: newest %q", a3.CertSerial)
	}
	if rep.Malformed != 2 || len(rep.Skipped) != 4 {
		t.Errorf("malformed %d (want the 2 dated 2099), skipped %v (want 4)", rep.Malformed, rep.Skipped)
	}
	for _, want := range []string{"audit_lines_unreadable=2", "do not hold together", "tenant acme's", "not one of the backup's", "expired"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the warnings lack %q:\n%s", want, logs.String())
		}
	}
}

// A backup taken of a store restored before holds that restore's window:
// restoring it keeps the window beside the new one (certificates issued
// in it may still be unknown to the store), unless it ended longer ago
// than certificates live.
func TestHandleKeepsEarlierRestoreWindows(t *testing.T) {
	d := openDir(t, t.TempDir())
	now := time.Now().Truncate(time.Millisecond)
	earlier := store.RestoreWindow{From: now.Add(-10 * time.Hour), To: now.Add(-9 * time.Hour)}
	expired := store.RestoreWindow{From: now.Add(-40 * time.Hour), To: now.Add(-30 * time.Hour)}
	must(t, d.Store.AddRestoreWindow(ctx, expired, time.Time{}))
	must(t, d.Store.AddRestoreWindow(ctx, earlier, time.Time{}))
	backup := filepath.Join(t.TempDir(), "b")
	m, err := d.Backup(ctx, backup, datadir.BackupOptions{})
	must(t, err)
	r := openDir(t, backup)
	trail, err := audit.Open(ctx, r.Store, filepath.Join(t.TempDir(), "audit.log"), slog.New(slog.DiscardHandler))
	must(t, err)
	defer trail.Close()
	restoredAt := m.TakenAt.Add(time.Hour).Truncate(time.Millisecond)
	_, handled, err := Handle(ctx, Config{Dir: r, AuditFile: filepath.Join(t.TempDir(), "missing.log"), Audit: trail, Logger: slog.New(slog.DiscardHandler),
		Now: func() time.Time { return restoredAt }, CertLifetime: 24 * time.Hour})
	if err != nil || !handled {
		t.Fatalf("handled %v, %v", handled, err)
	}
	ws, err := r.Store.RestoreWindows(ctx)
	must(t, err)
	want := []store.RestoreWindow{{From: m.TakenAt.Truncate(time.Millisecond), To: restoredAt}, earlier}
	if !slices.EqualFunc(ws, want, func(a, b store.RestoreWindow) bool { return a.From.Equal(b.From) && a.To.Equal(b.To) }) {
		t.Fatalf("windows after the second restore: %+v; want %+v (the earlier restore's kept, the one ended 30 h ago dropped)", ws, want)
	}
}
