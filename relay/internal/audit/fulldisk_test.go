package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tetherhq/tether/internal/fulldisk"
	"github.com/tetherhq/tether/relay/internal/store"
)

// syncBuffer is a bytes.Buffer for a logger written from several
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// readLines reads the audit file at path: its lines that parse, and
// those that do not.
func readLines(t *testing.T, path string) (good []auditLine, bad []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			bad = append(bad, sc.Text())
			continue
		}
		good = append(good, l)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return good, bad
}

// On a full disk the store and the audit file both fail: the records are
// then in memory only, the log says so (not that they are in the file),
// Durable reports it, and no half-written line is left in the file. Once
// space returns, the next write stores them all and writes them to the
// file, each once, without a restart.
func TestFullDisk(t *testing.T) {
	dir := fulldisk.Dir(t, "2m")
	if dir == "" {
		return
	}
	var logs syncBuffer
	ctx := context.Background()
	st, a, path := openLog(t, dir, slog.New(slog.NewTextHandler(&logs, nil)))
	a.Start()
	defer a.Close()
	defer a.Stop()
	pad := strings.Repeat("x", 700) // longer than what is left of a page
	for i := range 3 {
		a.Add(Record{Kind: TenantAdd, Outcome: OutcomeOK, Tenant: "before", Detail: map[string]any{"n": i, "pad": pad}})
	}
	if err := a.Durable(); err != nil {
		t.Fatalf("Durable before the disk is full: %v", err)
	}
	free := fulldisk.Fill(t, dir)
	before := len(logs.String())
	const n = 20
	for i := range n {
		a.Add(Record{Kind: TenantAdd, Outcome: OutcomeOK, Tenant: "during", Detail: map[string]any{"n": i, "pad": pad}})
	}
	full := logs.String()[before:]
	t.Logf("logs while the disk is full:\n%s", full)
	// The file's last page may hold a record or two more.
	good, bad := readLines(t, path)
	filed := 0
	for _, l := range good {
		if l.Tenant == "during" {
			filed++
		}
	}
	if said := strings.Count(full, "records written to the audit file"); said != filed {
		t.Errorf("the log says %d times that records were written to the audit file; %d were", said, filed)
	}
	if len(bad) > 0 {
		t.Errorf("the full disk left %d unparseable lines in the audit file, the first %.200q", len(bad), bad[0])
	}
	if !strings.Contains(full, "records kept in memory only") {
		t.Error("the log does not say that records are kept in memory only")
	}
	if got := a.Unwritten(); got == 0 {
		t.Error("Unwritten is 0 on a full disk")
	}
	if err := a.Durable(); !errors.Is(err, ErrNotDurable) {
		t.Errorf("Durable on a full disk: %v, want ErrNotDurable", err)
	}
	if a.FileErrors() == 0 {
		t.Error("FileErrors is 0 on a full disk")
	}

	free()
	a.Add(Record{Kind: TenantAdd, Outcome: OutcomeOK, Tenant: "after"})
	if err := a.Durable(); err != nil {
		t.Errorf("Durable once space returned: %v", err)
	}
	recs, err := st.ListAudit(ctx, store.AuditFilter{Tenant: "during", Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != n {
		t.Errorf("once space returned: %d records in the store, want %d", len(recs), n)
	}
	if a.Lost() != 0 {
		t.Errorf("Lost %d, want 0", a.Lost())
	}
	good, bad = readLines(t, path)
	for _, l := range bad {
		t.Errorf("unparseable line in the audit file: %.200q", l)
	}
	keys := map[string]int{}
	for _, l := range good {
		if l.Tenant == "during" {
			keys[l.Key]++
		}
	}
	if len(keys) != n {
		t.Errorf("%d records written during the full disk are in the audit file, want %d", len(keys), n)
	}
	for k, c := range keys {
		if c != 1 {
			t.Errorf("record %s is %d times in the audit file", k, c)
		}
	}
}

// A writer stopped while the disk is full counts the records it keeps in
// memory only as lost, and says so; those it had written to the file are
// stored by the next start.
func TestFullDiskStop(t *testing.T) {
	dir := fulldisk.Dir(t, "2m")
	if dir == "" {
		return
	}
	var logs syncBuffer
	ctx := context.Background()
	lg := slog.New(slog.NewTextHandler(&logs, nil))
	dbPath, path := filepath.Join(dir, "relay.db"), filepath.Join(dir, "audit.log")
	st, err := store.Open(ctx, dbPath)
	if err != nil {
		t.Fatal(err)
	}
	a, err := Open(ctx, st, path, lg)
	if err != nil {
		t.Fatal(err)
	}
	a.Start()
	a.Add(Record{Kind: TenantAdd, Outcome: OutcomeOK, Tenant: "before"})
	free := fulldisk.Fill(t, dir)
	pad := strings.Repeat("x", 700)
	const n = 10
	for i := range n {
		a.Add(Record{Kind: TenantAdd, Outcome: OutcomeOK, Tenant: "during", Detail: map[string]any{"n": i, "pad": pad}})
	}
	unwritten := a.Unwritten()
	before := len(logs.String())
	a.Stop()
	stop := logs.String()[before:]
	t.Logf("logs at stop:\n%s", stop)
	a.Close()
	st.Close()
	if unwritten == 0 {
		t.Fatal("no record in memory only on a full disk")
	}
	if got := a.Lost(); got != int64(unwritten) {
		t.Errorf("Lost after stop %d, want the %d records in memory only", got, unwritten)
	}
	if got := a.LostUnfiled(); got != int64(unwritten) {
		t.Errorf("LostUnfiled after stop %d, want %d", got, unwritten)
	}
	if !strings.Contains(stop, "are lost") {
		t.Error("the log at stop does not say that records are lost")
	}

	free()
	st, err = store.Open(ctx, dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a, err = Open(ctx, st, path, lg)
	if err != nil {
		t.Fatal(err)
	}
	a.Start()
	a.Add(Record{Kind: TenantAdd, Outcome: OutcomeOK, Tenant: "after"})
	a.Stop()
	a.Close()
	recs, err := st.ListAudit(ctx, store.AuditFilter{Tenant: "during", Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs)+unwritten != n {
		t.Errorf("after a restart with space: %d records in the store and %d lost, want %d in all", len(recs), unwritten, n)
	}
	if _, bad := readLines(t, path); len(bad) > 0 {
		t.Errorf("%d unparseable lines in the audit file, the first %.200q", len(bad), bad[0])
	}
}

// A line a process left half written (killed in the middle of an
// append) is ended as the file is opened, so that the next record is a
// line of its own.
func TestOpenEndsCutLine(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(dir, "relay.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	path := filepath.Join(dir, "audit.log")
	if err := os.WriteFile(path, []byte(`{"kind":"tenant.add","ten`), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := Open(ctx, st, path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a.Add(Record{Kind: TenantAdd, Outcome: OutcomeOK, Tenant: "next"})
	a.Close()
	good, bad := readLines(t, path)
	if len(good) != 1 || good[0].Tenant != "next" || len(bad) != 1 {
		t.Errorf("got lines %+v and unparseable %q, want the record of next after the cut line", good, bad)
	}
}
