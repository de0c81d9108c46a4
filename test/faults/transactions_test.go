//go:build linux

package faults

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/test/internal/e2e"
)

// lossy is the link of TestTransactionsOverALossyLink, both ways.
var lossy = impairment{Loss: 0.05, Delay: 200 * time.Millisecond, Jitter: 50 * time.Millisecond, Reorder: 0.05, Corrupt: 0.01}

// Transactions through the tunnel over a lossy, slow, reordering and
// corrupting link, over QUIC and over TCP at once: each inserts a row with
// a key of its own into a table without a unique constraint, so a
// transaction the tunnel delivered twice would show as a key present
// twice. Every transaction the client saw commit is present exactly once;
// one that failed is present at most once (its commit may have reached
// the server before the answer was lost); no key is present twice.
func TestTransactionsOverALossyLink(t *testing.T) {
	const workers, perWorker = 5, 8 // 40 transactions per transport
	e := newEnv(t, "q", "t")
	pg := pgtest.StartWith(t, pgtest.Options{ListenAddresses: []string{e.tp.lanIP.String()}, ClientNetworks: []string{e.tp.lanNet.String()}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	direct, err := pgx.Connect(ctx, pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	if _, err := direct.Exec(ctx, `CREATE TABLE ledger (k text NOT NULL, worker int NOT NULL, at timestamptz NOT NULL DEFAULT now())`); err != nil {
		t.Fatal(err)
	}
	db := net.JoinHostPort(e.tp.lanIP.String(), strconv.Itoa(pg.Port))
	tenants := map[string]string{"quic": "q", "tcp": "t"}
	for transport, tenant := range tenants {
		e.startAgent(t, tenant, e2e.AgentOptions{Transport: transport, Services: map[string]string{"db": db}})
	}

	e.router.set(lossy)
	t.Logf("link between agent and relay: %v", lossy)
	begin := time.Now()
	var mu sync.Mutex // guards outcomes
	outcomes := map[string]error{}
	var wg sync.WaitGroup
	for transport, tenant := range tenants {
		for w := range workers {
			wg.Go(func() {
				run := func(key string, conn **pgx.Conn) error {
					tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					defer cancel()
					if *conn == nil {
						c, err := connectThrough(tctx, e, pg, "db."+tenant+".tether:5432")
						if err != nil {
							return fmt.Errorf("connect: %w", err)
						}
						*conn = c
					}
					tx, err := (*conn).Begin(tctx)
					if err != nil {
						return fmt.Errorf("begin: %w", err)
					}
					if _, err := tx.Exec(tctx, `INSERT INTO ledger (k, worker) VALUES ($1, $2)`, key, w); err != nil {
						tx.Rollback(tctx)
						return fmt.Errorf("insert: %w", err)
					}
					if err := tx.Commit(tctx); err != nil {
						return fmt.Errorf("commit: %w", err)
					}
					return nil
				}
				var conn *pgx.Conn
				defer func() {
					if conn != nil {
						cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
						conn.Close(cctx)
						cancel()
					}
				}()
				for i := range perWorker {
					key := fmt.Sprintf("%s-%d-%d", transport, w, i)
					err := run(key, &conn)
					if err != nil && conn != nil {
						// The connection's state is unknown: start afresh.
						cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
						conn.Close(cctx)
						cancel()
						conn = nil
					}
					mu.Lock()
					outcomes[key] = err
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	elapsed := time.Since(begin)
	e.router.set(impairment{})
	t.Logf("%d transactions in %v; router: %v", len(outcomes), elapsed.Round(100*time.Millisecond), &e.router.stats)

	rows, err := direct.Query(ctx, `SELECT k, count(*) FROM ledger GROUP BY k`)
	if err != nil {
		t.Fatal(err)
	}
	present := map[string]int64{}
	for rows.Next() {
		var k string
		var n int64
		if err := rows.Scan(&k, &n); err != nil {
			t.Fatal(err)
		}
		present[k] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for transport := range tenants {
		committed, failed := 0, 0
		for w := range workers {
			for i := range perWorker {
				key := fmt.Sprintf("%s-%d-%d", transport, w, i)
				err := outcomes[key]
				switch n := present[key]; {
				case err == nil && n != 1:
					t.Errorf("%s: transaction %s committed, but its row is present %d times", transport, key, n)
				case err != nil && n > 1:
					t.Errorf("%s: transaction %s failed (%v), but its row is present %d times", transport, key, err, n)
				}
				if err == nil {
					committed++
				} else {
					failed++
					t.Logf("%s: transaction %s failed (row present %d times): %v", transport, key, present[key], err)
				}
			}
		}
		t.Logf("%s: %d transactions committed, %d failed", transport, committed, failed)
		if committed < workers*perWorker/2 {
			t.Errorf("%s: only %d of %d transactions committed: too few to show anything", transport, committed, workers*perWorker)
		}
	}
	for k, n := range present {
		if _, ok := outcomes[k]; !ok {
			t.Errorf("row %q (%d times) belongs to no transaction", k, n)
		}
	}
	// The link did what it was told, or the test shows nothing.
	if e.router.stats.Dropped.Load() == 0 || e.router.stats.Corrupted.Load() == 0 || e.router.stats.OutOfOrder.Load() == 0 {
		t.Errorf("the router did not drop, corrupt and reorder packets: %v", &e.router.stats)
	}
}

// connectThrough opens a pgx connection to the database through the
// relay's CONNECT door (the Go Dialer), to target.
func connectThrough(ctx context.Context, e *env, pg *pgtest.Server, target string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(pg.DSNFor(target))
	if err != nil {
		return nil, err
	}
	cfg.DialFunc = e.backend.DialContext
	cfg.LookupFunc = func(ctx context.Context, host string) ([]string, error) { return []string{host}, nil }
	return pgx.ConnectConfig(ctx, cfg)
}
