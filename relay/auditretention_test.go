package relay

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/store"
)

// A relay with a traffic retention deletes, as it starts, the store's
// traffic records older than it (more than one batch of them), keeps the
// newer ones and every control-plane record however old, counts what it
// deleted and writes an audit.prune record saying so; on SQLite and on
// PostgreSQL.
func TestAuditTrafficRetention(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		testAuditTrafficRetention(t, func(cfg Config) Config { return cfg })
	})
	t.Run("postgres", func(t *testing.T) {
		pg := pgtest.Start(t)
		kek := make([]byte, 32)
		rand.Read(kek)
		testAuditTrafficRetention(t, func(cfg Config) Config {
			cfg.Store, cfg.CAKEK, cfg.RelayID = pg.DSN(), kek, "r1"
			return cfg
		})
	})
}

func testAuditTrafficRetention(t *testing.T, with func(Config) Config) {
	ctx := context.Background()
	now := time.Now()
	retention := 90 * 24 * time.Hour
	old := now.Add(-retention - 24*time.Hour)
	cfg := with(Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: Off,
		AuditTrafficRetention: retention})
	// The store, with its records, before the relay starts on it.
	st, err := store.OpenDSN(ctx, storeDSN(cfg))
	if err != nil {
		t.Fatal(err)
	}
	var recs []store.AuditRecord
	n := auditPruneBatch + 200 // more than one batch
	for i := range n {
		recs = append(recs, store.AuditRecord{At: old.Add(time.Duration(i) * time.Millisecond), Kind: audit.Stream, Outcome: audit.OutcomeOK, Tenant: "acme"})
	}
	recs = append(recs,
		store.AuditRecord{At: old, Kind: audit.Connect, Outcome: audit.OutcomeOK, Tenant: "acme", Agent: "a1"},
		store.AuditRecord{At: old, Kind: audit.AuthRefused, Outcome: "unauthenticated"},
		store.AuditRecord{At: now.Add(-time.Hour), Kind: audit.Stream, Outcome: audit.OutcomeOK, Tenant: "acme", Detail: map[string]any{"recent": true}},
		store.AuditRecord{At: old.Add(-24 * time.Hour), Kind: audit.Enrol, Outcome: audit.OutcomeOK, Tenant: "acme", Agent: "a1"},
		store.AuditRecord{At: old.Add(-24 * time.Hour), Kind: audit.Revoke, Outcome: audit.OutcomeOK, Tenant: "acme", Agent: "a1"},
		store.AuditRecord{At: old.Add(-24 * time.Hour), Kind: audit.Disconnect, Outcome: "revoked", Tenant: "acme", Agent: "a1"},
		store.AuditRecord{At: old.Add(-24 * time.Hour), Kind: audit.TokenCreate, Outcome: audit.OutcomeOK, Tenant: "acme"})
	if err := st.AddAudit(ctx, recs); err != nil {
		t.Fatal(err)
	}
	st.Close()

	r := runRelay(t, cfg)
	var prune []store.AuditRecord
	for deadline := time.Now().Add(20 * time.Second); len(prune) == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no audit.prune record 20s after the start of a relay with a traffic retention")
		}
		if prune, err = r.dir.Store.ListAudit(ctx, store.AuditFilter{Kind: audit.Prune}); err != nil {
			t.Fatal(err)
		}
	}
	if len(prune) != 1 {
		t.Fatalf("%d audit.prune records, want 1", len(prune))
	}
	d := prune[0].Detail
	deleted, _ := d["deleted"].(map[string]any)
	if fmt.Sprint(deleted[audit.Stream]) != fmt.Sprint(n) || fmt.Sprint(deleted[audit.Connect]) != "1" || fmt.Sprint(deleted[audit.AuthRefused]) != "1" {
		t.Errorf("audit.prune record's deleted = %v, want %d stream, 1 agent.connect, 1 auth.refused", d["deleted"], n)
	}
	if d["older_than"] == nil || d["retention"] != retention.String() {
		t.Errorf("audit.prune record's detail = %v, want older_than and retention %v", d, retention)
	}
	if got := counterValue(r.metrics.AuditPruned.WithLabelValues(audit.Stream)); got != float64(n) {
		t.Errorf("tether_audit_pruned_total{kind=stream} = %v, want %d", got, n)
	}
	left, err := r.dir.Store.ListAudit(ctx, store.AuditFilter{Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, rec := range left {
		count[rec.Kind]++
	}
	for kind, want := range map[string]int{audit.Stream: 1, audit.Connect: 0, audit.AuthRefused: 0,
		audit.Enrol: 1, audit.Revoke: 1, audit.Disconnect: 1, audit.TokenCreate: 1} {
		if count[kind] != want {
			t.Errorf("%d %s records left, want %d", count[kind], kind, want)
		}
	}
}

// storeDSN is the store cfg names: its PostgreSQL URL, or the SQLite file
// of its data directory.
func storeDSN(cfg Config) string {
	if cfg.Store != "" {
		return cfg.Store
	}
	return cfg.DataDir + "/tether.db"
}

// A relay with audit_file_max_size rotates its audit file once past it,
// beside it, and keeps audit_file_max_files rotated files; the audit
// files still hold every record, in order.
func TestAuditFileRotation(t *testing.T) {
	dir := t.TempDir()
	r := runRelay(t, Config{DataDir: dir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: Off,
		AuditFileMaxSize: MinAuditFileMaxSize, AuditFileMaxFiles: 2})
	pad := strings.Repeat("x", 4000)
	const n = 1200 // about 4.8 MiB: four rotations or more
	for i := range n {
		rec := audit.Record{Kind: audit.Stream, Outcome: audit.OutcomeOK, Tenant: "acme", Detail: map[string]any{"n": i, "pad": pad}}
		if i%100 == 99 {
			r.audit.Add(rec)
		} else {
			r.audit.Record(rec)
		}
	}
	if r.audit.Rotations() < 3 {
		t.Fatalf("%d rotations after ~4.8 MiB of records at a 1 MiB size, want at least 3", r.audit.Rotations())
	}
	files, err := audit.Files(filepath.Join(dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 {
		t.Fatalf("audit files %v; want 2 rotated and audit.log", files)
	}
	last := -1
	for _, name := range files {
		raw, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(raw)) {
			var rec store.AuditRecord
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if rec.Kind != audit.Stream {
				continue
			}
			got := int(rec.Detail["n"].(float64))
			if last >= 0 && got != last+1 {
				t.Fatalf("%s: record %d after %d", filepath.Base(name), got, last)
			}
			last = got
		}
	}
	if last != n-1 {
		t.Fatalf("the last record in the files is %d, want %d", last, n-1)
	}
}
