package audit

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/internal/store"
)

// The tests here run on PostgreSQL: a server of their own each, as one is
// restarted and others are cut off or locked.

// openPostgres opens the store at dsn, and the audit log on it, started.
func openPostgres(t *testing.T, dsn string) (*store.Store, *Log, string) {
	t.Helper()
	st, err := store.OpenPostgres(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	path := filepath.Join(t.TempDir(), "audit.log")
	a, err := Open(context.Background(), st, path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	a.Start()
	t.Cleanup(a.Stop) // before Close and the store's Close
	return st, a, path
}

// waitStored waits until the store holds want records of tenant, and
// returns them in the order stored.
func waitStored(t *testing.T, st *store.Store, tenant string, want int) []Record {
	t.Helper()
	var recs []Record
	var err error
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		recs, err = st.ListAudit(context.Background(), store.AuditFilter{Tenant: tenant, Limit: want + 100})
		if err == nil && len(recs) >= want {
			return recs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d records of %s in the store after 60 s (%v), want %d", len(recs), tenant, err, want)
		}
	}
}

// inOrder checks that recs are the records numbered 0 to n-1 (their
// detail's "n"), each once, in that order.
func inOrder(t *testing.T, recs []Record, n int) {
	t.Helper()
	if len(recs) != n {
		t.Fatalf("%d records in the store, want %d", len(recs), n)
	}
	for i, r := range recs {
		if got, _ := r.Detail["n"].(float64); int(got) != i {
			t.Fatalf("record %d in the store is number %v: records out of order or repeated", i, r.Detail["n"])
		}
	}
}

// fileLines returns the audit file's lines that name tenant.
func fileLines(t *testing.T, path, tenant string) []auditLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []auditLine
	for sc := bufio.NewScanner(f); sc.Scan(); {
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("audit file line %q: %v", sc.Text(), err)
		}
		if l.Tenant == tenant {
			out = append(out, l)
		}
	}
	return out
}

// A record added right after PostgreSQL restarted reaches the store: the
// pool's connections all died with the server, and the write runs again on
// a live one.
func TestRecordAfterPostgresRestart(t *testing.T) {
	pg := pgtest.Start(t)
	st, a, path := openPostgres(t, pg.DSN())
	// Connections in the pool, as a busy relay has.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { a.Add(Record{Kind: TenantAdd, Outcome: OutcomeOK, Tenant: "warm"}) })
	}
	wg.Wait()
	if err := pg.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	a.Add(Record{Kind: TenantAdd, Outcome: OutcomeOK, Tenant: "after-restart"})
	recs, err := st.ListAudit(context.Background(), store.AuditFilter{Tenant: "after-restart"})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 {
		for _, l := range fileLines(t, path, "after-restart") {
			t.Logf("audit file: store_error %q", l.StoreError)
		}
		t.Fatalf("record added after PostgreSQL restarted: %d in the store once Add returned, want 1", len(recs))
	}
}

// Records added while the store cannot be reached are in the audit file at
// once (marked store_error), and reach the store once it is back: each
// once, in the order they were added, before what is added after.
func TestRecordsWhileStoreDownReachItLater(t *testing.T) {
	pg := pgtest.Start(t)
	p := startProxy(t, pg.Addr())
	st, a, path := openPostgres(t, pg.DSNFor(p.addr()))
	direct, err := store.OpenPostgres(context.Background(), pg.DSN()) // to look, past the proxy
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	_ = st

	n := 0
	rec := func() Record {
		n++
		return Record{Kind: Stream, Outcome: OutcomeOK, Tenant: "acme", Detail: map[string]any{"n": n - 1}}
	}
	a.Add(rec())
	p.setDown(true)
	for range 50 {
		a.Record(rec())
	}
	a.Add(rec()) // returns once in the file, the store failing
	lines := fileLines(t, path, "acme")
	if len(lines) != n {
		t.Fatalf("%d records in the audit file while the store was down, want %d", len(lines), n)
	}
	for _, l := range lines[1:] {
		if l.StoreError == "" || l.Key == "" {
			t.Fatalf("a record written while the store was down is in the file without store_error or key: %+v", l)
		}
	}
	if recs, err := direct.ListAudit(context.Background(), store.AuditFilter{Tenant: "acme"}); err != nil || len(recs) != 1 {
		t.Fatalf("%d records in the store while it could not be reached (%v), want 1", len(recs), err)
	}
	p.setDown(false)
	a.Record(rec()) // after them
	inOrder(t, waitStored(t, direct, "acme", n), n)
	if got := len(fileLines(t, path, "acme")); got != n {
		t.Errorf("%d lines in the audit file, want %d: each record once", got, n)
	}
}

// A batch whose COMMIT reached the server but whose answer was lost (the
// connection cut right then) is tried again without storing any record
// twice.
func TestCommitAnswerLostStoresOnce(t *testing.T) {
	pg := pgtest.Start(t)
	p := startProxy(t, pg.Addr())
	_, a, path := openPostgres(t, pg.DSNFor(p.addr()))
	direct, err := store.OpenPostgres(context.Background(), pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	a.Add(Record{Kind: Stream, Outcome: OutcomeOK, Tenant: "acme", Detail: map[string]any{"n": 0}})
	lost := p.loseNextCommitAnswer()
	a.Add(Record{Kind: Stream, Outcome: OutcomeOK, Tenant: "acme", Detail: map[string]any{"n": 1}})
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the proxy saw no COMMIT to lose the answer of")
	}
	waitStored(t, direct, "acme", 2) // the COMMIT whose answer was lost committed
	if l := fileLines(t, path, "acme")[1]; l.StoreError == "" {
		t.Fatalf("the record whose COMMIT's answer was lost is in the file without store_error: the test did not reproduce it")
	}
	a.Record(Record{Kind: Stream, Outcome: OutcomeOK, Tenant: "acme", Detail: map[string]any{"n": 2}})
	inOrder(t, waitStored(t, direct, "acme", 3), 3)
}

// While the store does not answer (its audit table locked), Record returns
// at once however many records wait, and no record is lost: those added
// while the queue was full are in the audit file at once (marked
// store_queue_full) and reach the store, in their place, once it answers.
func TestRecordDoesNotWaitForHungStore(t *testing.T) {
	pg := pgtest.Start(t)
	st, a, path := openPostgres(t, pg.DSN())
	db, err := sql.Open("pgx", pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`LOCK TABLE audit IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}

	const n = auditQueue + auditBatch + 100 // more than the queue and a batch hold
	var slowest time.Duration
	for i := range n {
		start := time.Now()
		a.Record(Record{Kind: Stream, Outcome: "unavailable", Tenant: "acme", Detail: map[string]any{"n": i}})
		slowest = max(slowest, time.Since(start))
	}
	if slowest > time.Second {
		t.Fatalf("Record blocked %v while the store was locked", slowest.Round(time.Millisecond))
	}
	full := 0
	for _, l := range fileLines(t, path, "acme") {
		if l.StoreQueueFull {
			full++
		}
	}
	if full == 0 {
		t.Fatal("no record in the audit file marked store_queue_full: the queue never filled (the test did not reproduce it)")
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	inOrder(t, waitStored(t, st, "acme", n), n)
	if lost := a.Lost(); lost != 0 {
		t.Errorf("%d records lost to the store", lost)
	}
}

// A record the store refuses (text PostgreSQL cannot hold) stays in the
// audit file only, counted, and neither keeps the records of its batch
// out nor holds up those after it.
func TestRefusedRecordDoesNotHoldOthers(t *testing.T) {
	pg := pgtest.Start(t)
	st, a, path := openPostgres(t, pg.DSN())
	for i := range 5 {
		r := Record{Kind: AuthRefused, Outcome: "unauthenticated", Tenant: "acme", Detail: map[string]any{"n": i}}
		if i == 2 {
			r.Backend = "bad\x00name" // as a client could claim
		}
		a.Record(r)
	}
	a.Add(Record{Kind: AuthRefused, Outcome: "unauthenticated", Tenant: "acme", Detail: map[string]any{"n": 5}})
	recs, err := st.ListAudit(context.Background(), store.AuditFilter{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for _, r := range recs {
		n, _ := r.Detail["n"].(float64)
		got = append(got, int(n))
	}
	if fmt.Sprint(got) != "[0 1 3 4 5]" {
		t.Errorf("records in the store: %v, want [0 1 3 4 5]", got)
	}
	if a.Lost() != 1 {
		t.Errorf("Lost = %d, want 1", a.Lost())
	}
	if lines := fileLines(t, path, "acme"); len(lines) != 6 || lines[2].StoreError == "" {
		t.Errorf("audit file: %d lines, the refused one with store_error %q; want 6, marked", len(lines), lines[2].StoreError)
	}
}

var _ = stdlib.GetDefaultDriver // registers "pgx" for database/sql

// proxy passes TCP connections to a PostgreSQL server, and can cut them
// off (down: every connection closed, new ones closed at once) or lose
// the answer to the next COMMIT it passes.
type proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	down  bool
	conns map[net.Conn]bool
	lose  chan struct{} // closed once a COMMIT's answer was dropped; nil: none to lose
}

func startProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.setDown(true)
		p.wg.Wait()
	})
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

// setDown cuts every connection and refuses new ones, or lets them in
// again.
func (p *proxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			c.Close()
		}
	}
}

// loseNextCommitAnswer has the next COMMIT passed to the server and its
// answer dropped, the connection cut; the channel is closed once it was.
func (p *proxy) loseNextCommitAnswer() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lose = make(chan struct{})
	return p.lose
}

// track adds c to the connections cut by setDown, or closes it when down.
func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		c.Close()
		return false
	}
	p.conns[c] = true
	return true
}

func (p *proxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
		c.Close()
	}
}

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			continue
		}
		p.wg.Go(func() {
			s, err := net.Dial("tcp", p.target)
			if err != nil || !p.track(s) {
				if s != nil {
					s.Close()
				}
				p.untrack(c)
				return
			}
			defer p.untrack(c, s)
			done := make(chan struct{})
			go func() {
				defer close(done)
				io.Copy(c, s)
				c.Close()
			}()
			p.clientToServer(c, s)
			s.Close()
			<-done
		})
	}
}

// clientToServer copies what the client sends; a COMMIT whose answer is
// to be lost is passed on after the client was cut off.
func (p *proxy) clientToServer(c, s net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			p.mu.Lock()
			lose := p.lose
			isCommit := lose != nil && bytes.Contains(bytes.ToLower(buf[:n]), []byte("commit"))
			if isCommit {
				p.lose = nil
			}
			p.mu.Unlock()
			if isCommit {
				// Cut the client off first, so that the server's answer
				// cannot reach it, then pass the COMMIT on: the server
				// reads it before the end of the connection, and commits.
				c.Close()
				s.Write(buf[:n])
				close(lose)
				return
			}
			if _, werr := s.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Records a relay stopped with before the store took them (in its audit
// file, marked store_error) are written to the store when the next relay
// on the same file starts, once, however often it starts.
func TestUnstoredRecordsWrittenAtStart(t *testing.T) {
	pg := pgtest.Start(t)
	p := startProxy(t, pg.Addr())
	path := filepath.Join(t.TempDir(), "audit.log")
	start := func(dsn string) (*store.Store, *Log) {
		st, err := store.OpenPostgres(context.Background(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		a, err := Open(context.Background(), st, path, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		a.Start()
		return st, a
	}
	stop := func(st *store.Store, a *Log) {
		a.Stop()
		a.Close()
		st.Close()
	}
	st, a := start(pg.DSNFor(p.addr()))
	a.Add(Record{Kind: Stream, Outcome: OutcomeOK, Tenant: "acme", Detail: map[string]any{"n": 0}})
	p.setDown(true)
	for i := 1; i < 4; i++ {
		a.Add(Record{Kind: Stream, Outcome: OutcomeOK, Tenant: "acme", Detail: map[string]any{"n": i}})
	}
	stop(st, a) // its last try fails: the three are in the file only
	p.setDown(false)

	direct, err := store.OpenPostgres(context.Background(), pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	if recs, err := direct.ListAudit(context.Background(), store.AuditFilter{Tenant: "acme"}); err != nil || len(recs) != 1 {
		t.Fatalf("%d records in the store after a stop with the store down (%v), want 1", len(recs), err)
	}
	for range 2 {
		st, a := start(pg.DSN())
		a.Add(Record{Kind: Stream, Outcome: OutcomeOK, Tenant: "other"}) // after the records kept
		stop(st, a)
	}
	inOrder(t, waitStored(t, direct, "acme", 4), 4)
}
