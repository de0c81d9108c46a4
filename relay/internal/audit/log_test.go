package audit

import (
	"bufio"
	"context"
	"database/sql"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// openLog opens a store in dir, closed when the test ends, and the audit
// log on it at dir/audit.log (path) with logger, for the test to close.
func openLog(t *testing.T, dir string, logger *slog.Logger) (st *store.Store, a *Log, path string) {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(dir, "relay.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	path = filepath.Join(dir, "audit.log")
	if a, err = Open(context.Background(), st, path, logger); err != nil {
		t.Fatal(err)
	}
	return st, a, path
}

// Records queued without waiting (record) and records waited for (add)
// all reach the store and the file, in one transaction when they come
// together, and close writes whatever still lingers.
func TestRecordAndAdd(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	st, a, path := openLog(t, dir, slog.New(slog.DiscardHandler))
	var batches []int
	a.Committed = func(time.Time) { batches = append(batches, 0) } // run's goroutine only
	a.Start()

	for range 5 {
		a.Record(Record{Kind: Stream, Outcome: OutcomeOK, Tenant: "acme"})
	}
	// A waited-for record does not linger: add returns once it is written,
	// with the records queued before it.
	done := make(chan struct{})
	go func() {
		a.Add(Record{Kind: TenantAdd, Outcome: OutcomeOK, Tenant: "acme"})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("add did not return")
	}
	recs, err := st.ListAudit(ctx, store.AuditFilter{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 6 {
		t.Fatalf("after add: %d records in the store, want 6", len(recs))
	}
	for i, r := range recs {
		if r.Seq == 0 || (i > 0 && r.Seq <= recs[i-1].Seq) {
			t.Errorf("record %d: seq %d after %d", i, r.Seq, recs[max(i-1, 0)].Seq)
		}
	}

	// A queued record keeps its place before what is recorded after it,
	// and its wait returns once it is written.
	wait := a.Queue(Record{Kind: Connect, Outcome: OutcomeOK, Tenant: "acme"})
	a.Record(Record{Kind: Disconnect, Outcome: OutcomeOK, Tenant: "acme"})
	wait()
	recs, err = st.ListAudit(ctx, store.AuditFilter{Tenant: "acme", Kind: Connect})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 {
		t.Fatalf("after a queued record's wait: %d of it in the store, want 1", len(recs))
	}
	if dis, err := st.ListAudit(ctx, store.AuditFilter{Tenant: "acme", Kind: Disconnect}); err != nil {
		t.Fatal(err)
	} else if len(dis) == 1 && dis[0].Seq < recs[0].Seq {
		t.Errorf("the record after the queued one was stored before it: seq %d < %d", dis[0].Seq, recs[0].Seq)
	}

	// Records nobody waits for are written by close at the latest.
	for range 3 {
		a.Record(Record{Kind: Stream, Outcome: OutcomeOK, Tenant: "acme"})
	}
	a.Stop()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	// After close, record writes at once.
	a.Record(Record{Kind: Stream, Outcome: OutcomeOK, Tenant: "acme"})
	recs, err = st.ListAudit(ctx, store.AuditFilter{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 12 {
		t.Fatalf("after close: %d records in the store, want 12", len(recs))
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lines := 0
	for sc := bufio.NewScanner(f); sc.Scan(); {
		lines++
	}
	if lines < 11 { // the record after closeFile reaches the store only
		t.Errorf("%d lines in the audit file, want at least 11", lines)
	}
	if len(batches) > 8 { // generous: a loaded machine may split batches
		t.Errorf("%d transactions for 11 queued records, want them batched", len(batches))
	}
}

// QueueWithin returns once its record is written, which is in the store
// then; with a store that does not answer (a write transaction held
// elsewhere), it returns after its bound, and the record is written once
// the store answers.
func TestQueueWithin(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(dir, "relay.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a, err := Open(ctx, st, filepath.Join(dir, "audit.log"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a.Start()
	defer a.Stop()
	count := func() int {
		t.Helper()
		recs, err := st.ListAudit(ctx, store.AuditFilter{Kind: Disconnect})
		if err != nil {
			t.Fatal(err)
		}
		return len(recs)
	}
	if !a.QueueWithin(Record{Kind: Disconnect, Outcome: "revoked", Tenant: "acme", Agent: "a1"}, 10*time.Second) {
		t.Fatal("a record on a store that answers was not written within 10 s")
	}
	if n := count(); n != 1 {
		t.Fatalf("%d records in the store once QueueWithin returned, want 1", n)
	}

	holder, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "relay.db")+"?_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	tx, err := holder.Begin() // the write lock, held
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if a.QueueWithin(Record{Kind: Disconnect, Outcome: "revoked", Tenant: "acme", Agent: "a2"}, 300*time.Millisecond) {
		t.Fatal("written while another connection held the store's write lock")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("QueueWithin(300ms) returned after %v", took)
	}
	tx.Rollback()
	for deadline := time.Now().Add(30 * time.Second); count() != 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the record queued while the store was locked was not written after it was released")
		}
	}
}

// A function given to Every is called at its interval while the writer
// runs and once more as Stop begins: what it records then is written
// before Stop returns. Registered after Start, it is called too.
func TestEvery(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(dir, "relay.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a, err := Open(ctx, st, filepath.Join(dir, "audit.log"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	calls := make(chan string, 1000)
	sum := func(name string) func() {
		return func() {
			calls <- name
			a.Record(Record{Kind: AuthRefused, Outcome: "unauthenticated", Actor: name})
		}
	}
	a.Every(10*time.Millisecond, sum("before"))
	a.Start()
	a.Every(time.Hour, sum("after")) // its only call is at Stop
	for seen := 0; seen < 3; {
		select {
		case name := <-calls:
			if name != "before" {
				t.Fatalf("%s called before Stop", name)
			}
			seen++
		case <-time.After(10 * time.Second):
			t.Fatal("the function given to Every before Start was not called at its interval")
		}
	}
	a.Stop()
	close(calls)
	n := map[string]int{}
	for name := range calls {
		n[name]++
	}
	if n["after"] != 1 {
		t.Errorf("the function given to Every after Start was called %d times while Stop ran, want 1", n["after"])
	}
	recs, err := st.ListAudit(ctx, store.AuditFilter{Kind: AuthRefused})
	if err != nil {
		t.Fatal(err)
	}
	byActor := map[string]int{}
	for _, r := range recs {
		byActor[r.Actor]++
	}
	if byActor["after"] != 1 || byActor["before"] < 3 {
		t.Errorf("records written by Stop's return: %v, want at least 3 from before and 1 from after", byActor)
	}
}
