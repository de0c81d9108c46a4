package store

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// PruneAudit deletes the records of the kinds it is given dated before
// the bound, in batches smaller than what it deletes, and keeps every
// other record, however old, and the newer records of those kinds.
func TestPruneAudit(t *testing.T) { eachEngine(t, testPruneAudit) }

func testPruneAudit(t *testing.T, e engine) {
	s, _ := e.open(t)
	old, cut, recent := t0.Add(-100*24*time.Hour), t0.Add(-90*24*time.Hour), t0.Add(-time.Hour)
	var recs []AuditRecord
	for i := range 25 {
		at := old.Add(time.Duration(i) * time.Minute)
		recs = append(recs,
			AuditRecord{At: at, Kind: "stream", Outcome: "ok", Tenant: "acme", Key: fmt.Sprintf("s%d", i)},
			AuditRecord{At: at, Kind: "agent.connect", Outcome: "ok", Tenant: "acme"})
	}
	for i := range 3 {
		recs = append(recs,
			AuditRecord{At: recent, Kind: "stream", Outcome: "ok", Tenant: "acme", Detail: map[string]any{"n": i}},
			AuditRecord{At: cut, Kind: "stream", Outcome: "ok", Tenant: "acme", Detail: map[string]any{"at_bound": true}})
	}
	// Control-plane records, older than everything.
	keep := []AuditRecord{
		{At: old.Add(-time.Hour), Kind: "agent.enrol", Outcome: "ok", Tenant: "acme", Agent: "a1"},
		{At: old.Add(-time.Hour), Kind: "agent.revoke", Outcome: "ok", Tenant: "acme", Agent: "a1"},
		{At: old.Add(-time.Hour), Kind: "token.create", Outcome: "ok", Tenant: "acme"},
		{At: old.Add(-time.Hour), Kind: "ca.rotate", Outcome: "ok"},
		{At: old.Add(-time.Hour), Kind: "streams", Outcome: "ok"}, // a kind that only begins with "stream"
	}
	recs = append(recs, keep...)
	if err := s.AddAudit(ctx, recs); err != nil {
		t.Fatal(err)
	}
	deleted, err := s.PruneAudit(ctx, []string{"stream", "agent.connect", "agent.handshake"}, cut, 4)
	if err != nil {
		t.Fatal(err)
	}
	if deleted["stream"] != 25 || deleted["agent.connect"] != 25 || len(deleted) != 2 {
		t.Errorf("PruneAudit deleted %v, want 25 stream and 25 agent.connect records", deleted)
	}
	left, err := s.ListAudit(ctx, AuditFilter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, r := range left {
		count[r.Kind]++
		if (r.Kind == "stream" || r.Kind == "agent.connect") && r.At.Before(cut) {
			t.Errorf("a %s record of %v is left, older than the bound %v", r.Kind, r.At, cut)
		}
	}
	if count["stream"] != 6 {
		t.Errorf("%d stream records left, want the 6 dated at the bound or after", count["stream"])
	}
	for _, k := range keep {
		if count[k.Kind] != 1 {
			t.Errorf("%d %s records left, want 1: records of other kinds are kept whatever their age", count[k.Kind], k.Kind)
		}
	}
	// Nothing more to delete.
	if deleted, err := s.PruneAudit(ctx, []string{"stream", "agent.connect"}, cut, 4); err != nil || len(deleted) != 0 {
		t.Errorf("PruneAudit again = %v, %v; want nothing deleted", deleted, err)
	}
}

// PruneAudit's search of a kind's oldest records uses the index on
// (kind, at_ms), not a scan of the table or of every record by date.
func TestPruneAuditUsesIndex(t *testing.T) {
	s, _ := engines[0].open(t)
	rows, err := s.db.QueryContext(ctx, `EXPLAIN QUERY PLAN SELECT seq FROM audit WHERE kind = $1 AND at_ms < $2 ORDER BY at_ms LIMIT $3`, "stream", t0.UnixMilli(), 10)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan += detail + "\n"
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(plan, "audit_kind_at") {
		t.Errorf("plan of the prune's search:\n%s\nwant it to use the index audit_kind_at", plan)
	}
}

// TryLock takes a lock only while no other process holds it, and does
// not wait; SQLite has none.
func TestTryLock(t *testing.T) {
	sq, _ := engines[0].open(t)
	if _, _, err := sq.TryLock(ctx, "audit_retention"); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("TryLock on SQLite: got %v, want ErrUnsupported", err)
	}
	a, dsn := engines[1].open(t)
	b, err := OpenDSN(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	unlock, ok, err := a.TryLock(ctx, "audit_retention")
	if err != nil || !ok {
		t.Fatalf("TryLock of a free lock = %v, %v; want taken", ok, err)
	}
	if _, ok, err := b.TryLock(ctx, "audit_retention"); err != nil || ok {
		t.Fatalf("TryLock of a held lock = %v, %v; want not taken", ok, err)
	}
	if unlockOther, ok, err := b.TryLock(ctx, "other"); err != nil || !ok {
		t.Fatalf("TryLock of another lock = %v, %v; want taken", ok, err)
	} else {
		unlockOther()
	}
	unlock()
	unlockB, ok, err := b.TryLock(ctx, "audit_retention")
	if err != nil || !ok {
		t.Fatalf("TryLock after its release = %v, %v; want taken", ok, err)
	}
	unlockB()
}
