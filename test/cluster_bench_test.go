package test

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/client"
)

// BenchmarkClusterFleet measures a cluster of three relays on one
// PostgreSQL (the tests' own, internal/pgtest) serving a fleet of idle
// agents with relay_connections K: how fast the relays write the agents'
// presence rows, each relay's memory per agent session, and what happens
// when one relay is killed (SIGKILL) while a backend keeps opening
// streams through every relay's CONNECT door (client.Dialer.Relays): the
// time until every agent holds K relays again, none of them the dead one,
// the time until the store's presence rows say so, and the streams that
// failed meanwhile. The agents run in this process, each a real agent
// with its own enrolled identity; agent i is configured with relay
// i mod 3's address alone, as a DNS name or a load balancer would spread
// first connections, and learns the others from it.
//
// TETHER_BENCH_CLUSTER_FLEET sets the fleet sizes (default "2000"),
// TETHER_BENCH_CLUSTER_K the relay_connections (default "2"), and
// TETHER_BENCH_CLUSTER_TRANSPORTS the agents' transports (default "tcp").
// Sub-benchmarks are cluster-3x<n>/k<K>/<transport>; each runs once
// whatever b.N.
func BenchmarkClusterFleet(b *testing.B) {
	sizes := benchInts(b, "TETHER_BENCH_CLUSTER_FLEET", "2000")
	ks := benchInts(b, "TETHER_BENCH_CLUSTER_K", "2")
	transports := benchTransports(b, "TETHER_BENCH_CLUSTER_TRANSPORTS", "tcp")
	for _, n := range sizes {
		for _, k := range ks {
			if k > 3 {
				b.Fatalf("TETHER_BENCH_CLUSTER_K: %d is more than the cluster's 3 relays", k)
			}
			for _, tr := range transports {
				b.Run(fmt.Sprintf("cluster-3x%d/k%d/%s", n, k, tr), func(b *testing.B) { clusterFleet(b, n, k, tr) })
			}
		}
	}
}

// benchInts reads a comma-separated list of positive counts from env.
// benchTransports reads the agents' transports from env, a comma-separated
// list of tcp, quic and auto (def when unset).
func benchTransports(b *testing.B, env, def string) []string {
	v := cmp.Or(os.Getenv(env), def)
	var out []string
	for _, t := range strings.Split(v, ",") {
		switch t = strings.TrimSpace(t); t {
		case "tcp", "quic", "auto":
			out = append(out, t)
		default:
			b.Fatalf("%s=%q: want a comma-separated list of tcp, quic and auto", env, v)
		}
	}
	return out
}

func benchInts(b *testing.B, env, def string) []int {
	v := cmp.Or(os.Getenv(env), def)
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			b.Fatalf("%s=%q: want comma-separated positive counts", env, v)
		}
		out = append(out, n)
	}
	return out
}

// clusterFleetTenants is how many tenants the cluster's fleet is spread
// over.
const clusterFleetTenants = 20

func clusterFleet(b *testing.B, n, k int, transport string) {
	if b.N > 1 {
		b.Skip("runs once; use -benchtime 1x")
	}
	pg := pgtest.Start(b)
	kek := make([]byte, 32)
	rand.Read(kek)
	kekFile := filepath.Join(b.TempDir(), "ca.kek")
	if err := os.WriteFile(kekFile, []byte(base64.StdEncoding.EncodeToString(kek)+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	storeArgs := []string{"--store", pg.DSN(), "--ca-kek-file", kekFile}
	const nRelays = 3
	relays := make([]*relayProc, nRelays)
	debug := make([]string, nRelays)
	for i := range relays {
		debug[i] = "127.0.0.1:" + strconv.Itoa(freePort(b))
		host := relayHost(i)
		// Every agent connects from 127.0.0.1, standing for a fleet
		// spread over many hosts: the bounds per source are lifted.
		extra := append([]string{"--relay-id", relayID(i), "--peer-listen", host + ":0", "--debug-listen", debug[i],
			"--log-level", "info", "--heartbeat", "10s",
			"--max-handshakes-per-address", "1000000", "--max-handshakes-per-network", "1000000"}, storeArgs...)
		relays[i] = startRelay(b, relayOpts{agentHost: host, extra: extra})
	}
	admin := func(args ...string) string {
		b.Helper()
		return strings.TrimSpace(relays[0].admin(b, append(args, storeArgs...)...))
	}
	db, err := pgx.Connect(context.Background(), pg.DSN())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close(context.Background()) })

	echoAddr := tcpService(b, echo)
	tenants := make([]string, clusterFleetTenants)
	tokens := make([]string, clusterFleetTenants)
	for i := range tenants {
		tenants[i] = fmt.Sprintf("c%02d", i)
		admin("tenant", "add", tenants[i])
		tokens[i] = admin("token", "create", "--tenant", tenants[i], "--uses", strconv.Itoa(n), "--ttl", "1h")
	}
	key := admin("backend", "add", "fleet", "--allow", strings.Join(tenants, ","))
	dialer := &client.Dialer{Backend: "fleet", APIKey: key, Timeout: 10 * time.Second}
	for _, r := range relays {
		dialer.Relays = append(dialer.Relays, r.connectAddr)
	}
	rss0 := make([]float64, nRelays)
	idle := make([]fleetStats, nRelays)
	for i, r := range relays {
		idle[i] = relayStatsGC(b, debug[i])
		rss0[i] = rssBytes(r.Pid())
	}

	// Enrol n agents, a few at a time, each through relay i mod 3.
	dirs := make([]string, n)
	base := b.TempDir()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				dirs[i] = filepath.Join(base, strconv.Itoa(i))
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := agent.Enroll(ctx, agent.EnrollOptions{Relay: relays[i%nRelays].agentAddr, Token: tokens[i%clusterFleetTenants], StateDir: dirs[i], Hostname: "fleet"})
				cancel()
				if err != nil {
					errs <- fmt.Errorf("enrol agent %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	b.Cleanup(func() {
		cancel()
		running.Wait()
	})
	agents := make([]*agent.Agent, n)
	for i := range n {
		a, err := agent.New(agent.Config{
			StateDir:         dirs[i],
			Relays:           []string{relays[i%nRelays].agentAddr},
			Transport:        transport,
			RelayConnections: k,
			Services:         map[string]agent.Service{"echo": {Address: echoAddr}},
			Reconnect:        agent.Backoff{Initial: 500 * time.Millisecond, Max: 30 * time.Second},
			NoFileWatch:      true, // inotify instances are a per-user limit (128)
		})
		if err != nil {
			b.Fatal(err)
		}
		agents[i] = a
		running.Go(func() { a.Run(ctx) })
	}
	started := time.Now()
	waitFleetHolds(b, agents, k, "", 5*time.Minute)
	b.ReportMetric(time.Since(started).Seconds(), "connect-all-s")
	rows := waitPresence(b, db, n*k, "", 2*time.Minute)
	took := time.Since(started)
	b.ReportMetric(took.Seconds(), "presence-all-s")
	b.ReportMetric(float64(rows)/took.Seconds(), "connect-presence-rows/s")

	// Memory with the fleet idle, per agent session each relay holds.
	time.Sleep(2 * time.Second)
	var rssPer, heapPer, sessions float64
	for i, r := range relays {
		st := relayStatsGC(b, debug[i])
		s := float64(st.AgentConnections)
		if s == 0 {
			continue
		}
		rssPer += (rssBytes(r.Pid()) - rss0[i]) / s
		heapPer += float64(st.HeapInuse-idle[i].HeapInuse) / s
		sessions += s
	}
	b.ReportMetric(rssPer/nRelays/1024, "relay-rss-KiB/session")
	b.ReportMetric(heapPer/nRelays/1024, "relay-heap-KiB/session")
	b.ReportMetric(sessions/nRelays, "sessions/relay")
	before, err := presenceByRelay(db)
	if err != nil {
		b.Fatal(err)
	}

	// Kill relay 1 while a backend keeps opening streams to random
	// tenants through every relay's door. A stream fails when its first
	// try fails; it counts as failed after a retry when one more try, a
	// second later, fails too.
	var opened, failed, failedTwice atomic.Int64
	var failures failureLog
	loadCtx, stopLoad := context.WithCancel(context.Background())
	var load sync.WaitGroup
	for w := range 4 {
		load.Go(func() { clusterLoad(loadCtx, dialer, tenants, uint64(w), &opened, &failed, &failedTwice, &failures) })
	}
	time.Sleep(time.Second)
	openedBefore := opened.Load()
	relays[0].kill()
	killed := time.Now()
	waitFleetHolds(b, agents, k, relayID(0), 5*time.Minute)
	b.ReportMetric(time.Since(killed).Seconds(), "restore-k-s")
	rows = waitPresence(b, db, n*k, relayID(0), 2*time.Minute)
	took = time.Since(killed)
	b.ReportMetric(took.Seconds(), "restore-presence-s")
	added := rows
	for id, c := range before {
		if id != relayID(0) {
			added -= c
		}
	}
	b.ReportMetric(float64(added), "restore-presence-rows")
	b.ReportMetric(float64(added)/took.Seconds(), "restore-presence-rows/s")
	time.Sleep(time.Second)
	stopLoad()
	load.Wait()
	b.ReportMetric(float64(opened.Load()-openedBefore), "kill-streams")
	b.ReportMetric(float64(failed.Load()), "kill-streams-failed")
	b.ReportMetric(float64(failedTwice.Load()), "kill-streams-failed-after-retry")
	for _, f := range failures.list() {
		b.Logf("failed stream: %s", f)
	}
	rate, err := presenceUpsertRate(db, 5000)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(rate, "store-presence-upserts/s")
}

// presenceUpsertRate times n presence rows written the way a relay
// wrote a batch until store.SetPresence wrote 500 agents to a statement
// (one upsert statement per agent, all in one transaction), under a
// relay id no relay row has, so that no reader counts them, and deletes
// them again: the store's cost per row, apart from how fast agents
// connect, statement by statement (the multi-row statement costs fewer
// round trips; not measured here yet).
func presenceUpsertRate(db *pgx.Conn, n int) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	began := time.Now()
	tx, err := db.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(ctx)
	for i := range n {
		if _, err := tx.Exec(ctx, `
INSERT INTO presence (relay_id, epoch, tenant, agent, sessions, since_ms) VALUES ($1, $2, $3, $4, $5, CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT))
ON CONFLICT (relay_id, epoch, agent) DO UPDATE SET sessions = excluded.sessions, tenant = excluded.tenant`,
			"bench-presence", int64(1), "bench", fmt.Sprintf("agent-%d", i), 1); err != nil {
			return 0, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	took := time.Since(began)
	_, err = db.Exec(ctx, `DELETE FROM presence WHERE relay_id = 'bench-presence'`)
	return float64(n) / took.Seconds(), err
}

// waitFleetHolds waits until every agent's k connections are on k
// distinct relays, none of them avoid.
func waitFleetHolds(b *testing.B, agents []*agent.Agent, k int, avoid string, limit time.Duration) {
	b.Helper()
	deadline := time.Now().Add(limit)
	for {
		short := 0
		for _, a := range agents {
			ids := connectedRelays(a.Status())
			distinct := slices.Compact(slices.Sorted(slices.Values(ids)))
			if len(ids) != k || len(distinct) != k || slices.Contains(distinct, avoid) {
				short++
			}
		}
		if short == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d agents do not hold %d distinct relays (other than %q) after %v", short, len(agents), k, avoid, limit)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// presenceByRelay counts the presence rows of each relay's current run.
func presenceByRelay(db *pgx.Conn) (map[string]int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := db.Query(ctx, `SELECT p.relay_id, count(*) FROM presence p JOIN relays r ON r.id = p.relay_id AND r.epoch = p.epoch GROUP BY p.relay_id`)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for rows.Next() {
		var id string
		var c int
		if err := rows.Scan(&id, &c); err != nil {
			return nil, err
		}
		out[id] = c
	}
	return out, rows.Err()
}

// waitPresence waits until the presence rows of the relays other than
// avoid number want, and returns that count.
func waitPresence(b *testing.B, db *pgx.Conn, want int, avoid string, limit time.Duration) int {
	b.Helper()
	deadline := time.Now().Add(limit)
	for {
		by, err := presenceByRelay(db)
		got := 0
		for id, c := range by {
			if id != avoid {
				got += c
			}
		}
		if err == nil && got == want {
			return got
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d presence rows after %v (%v), want %d", got, limit, err, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// clusterLoad opens echo streams to random tenants until ctx ends.
func clusterLoad(ctx context.Context, d *client.Dialer, tenants []string, seed uint64, opened, failed, failedTwice *atomic.Int64, log *failureLog) {
	rng := mrand.New(mrand.NewPCG(seed, 11))
	try := func(addr string) error {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return echoDial(dctx, d, addr, "ping")
	}
	for ctx.Err() == nil {
		addr := "echo." + tenants[rng.IntN(len(tenants))] + ".tether:7"
		opened.Add(1)
		if err := try(addr); err != nil && ctx.Err() == nil {
			failed.Add(1)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			if err2 := try(addr); err2 != nil && ctx.Err() == nil {
				failedTwice.Add(1)
				log.add(fmt.Sprintf("%s: %v, then after a retry: %v", addr, err, err2))
			} else {
				log.add(fmt.Sprintf("%s: %v (the retry succeeded)", addr, err))
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}
