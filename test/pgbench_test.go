package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/client"
)

// BenchmarkPgbench runs PostgreSQL's pgbench against a real server, directly,
// through two plain forwarders ("fwd") and through Tether over QUIC and over
// TLS+yamux, side by side in one run.
// Each sub-benchmark is <workload>/<path>: "select" is pgbench's select-only
// script (-S, bound by round-trip latency), "tpcb" its default TPC-B-like
// script. Each runs once for TETHER_PGBENCH_SECONDS seconds (default 10) with
// 8 clients on 2 threads, whatever b.N is, and reports pgbench's "tps" and
// "latency-ms" (average latency). Run it with -benchtime 1x.
func BenchmarkPgbench(b *testing.B) {
	seconds := pgbenchSeconds(b)

	pg := pgtest.Start(b)
	r := startRelay(b, relayOpts{extra: []string{"--log-level", "info"}})
	r.addTenant(b, "q")
	r.addTenant(b, "t")
	d := r.backend(b, "pgb", "q", "t")
	services := map[string]string{"db": pg.Addr()}
	targets := map[string]string{"quic": "db.q.tether:5432", "tcp": "db.t.tether:5432"}
	for path, tenant := range map[string]string{"quic": "q", "tcp": "t"} {
		startAgent(b, r, tenant, agentOpts{transport: path, services: services,
			extra: "connections: 1\n", logLevel: "info"})
	}
	for _, path := range []string{"quic", "tcp"} {
		waitDial(b, d, targets[path], 20*time.Second).Close()
	}

	// pgbench speaks neither SOCKS nor CONNECT. By default it runs under
	// proxychains (proxychains-ng: an LD_PRELOAD library that turns its
	// connect into a SOCKS5 CONNECT to the relay, names resolved by the
	// relay), so the path is the one a SOCKS-speaking backend takes:
	// pgbench → relay → agent → PostgreSQL. TETHER_PGBENCH_VIA=forwarder
	// puts a local forwarder (one tunnel connection per pgbench connection,
	// through the Go dialer) in front instead: one more process and hop.
	hosts := map[string]string{"direct": pg.Addr()}
	// "fwd" is the floor of the tunnel's shape: two plain forwarders
	// (forwarder_bench_test.go), which pgbench dials directly.
	fwd, _, _ := startForwarders(b, map[string]string{"db": pg.Addr()})
	hosts["fwd"] = fwd["db"]
	forwarders := map[string]*pgbForwarder{}
	wrap := map[string][]string{}
	switch via := os.Getenv("TETHER_PGBENCH_VIA"); via {
	case "", "socks":
		conf := proxychainsConfig(b, r.socksAddr, d.Backend, d.APIKey)
		for _, path := range []string{"quic", "tcp"} {
			hosts[path] = targets[path]
			wrap[path] = conf
		}
	case "forwarder":
		for _, path := range []string{"quic", "tcp"} {
			forwarders[path] = startPgbForwarder(b, d, targets[path])
			hosts[path] = forwarders[path].addr()
		}
	default:
		b.Fatalf("TETHER_PGBENCH_VIA=%q: want socks or forwarder", via)
	}

	// The data set is created once, directly.
	ctx := context.Background()
	if out, err := runPgbench(ctx, pg, nil, pg.Addr(), 5*time.Minute, "-i", "-q", "-s", "10"); err != nil {
		b.Fatalf("pgbench -i: %v\n%s", err, out)
	}

	workloads := []struct {
		name string
		args []string
	}{
		{"select", []string{"-S"}},
		{"tpcb", nil},
	}
	for _, w := range workloads {
		for _, path := range benchPaths {
			var res *pgbenchResult // set by the first call; later calls report it again
			b.Run(w.name+"/"+path, func(b *testing.B) {
				if res == nil {
					// Every run starts from the same state, as pgbench does
					// itself without -n, but outside the measured run and
					// never through the tunnel.
					resetPgbenchTables(b, pg)
					args := append([]string{"-n", "-c", "8", "-j", "2", "-T", strconv.Itoa(seconds)}, w.args...)
					b.ResetTimer()
					out, err := runPgbench(ctx, pg, wrap[path], hosts[path], time.Duration(seconds)*time.Second+2*time.Minute, args...)
					b.StopTimer()
					if err != nil {
						b.Fatalf("pgbench %s over %s: %v%s\n%s", strings.Join(args, " "), path, err, forwarders[path].dialErrors(), out)
					}
					parsed, err := parsePgbench(out)
					if err != nil {
						b.Fatalf("pgbench %s over %s: %v\n%s", strings.Join(args, " "), path, err, out)
					}
					res = &parsed
				}
				b.ReportMetric(res.tps, "tps")
				b.ReportMetric(res.latencyMs, "latency-ms")
			})
		}
	}
}

// pgbenchSeconds returns the duration of each pgbench run.
func pgbenchSeconds(b *testing.B) int {
	v := os.Getenv("TETHER_PGBENCH_SECONDS")
	if v == "" {
		return 10
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("TETHER_PGBENCH_SECONDS=%q: want a whole number of seconds ≥ 1", v)
	}
	return n
}

// runPgbench runs pgbench against hostport with the server's credentials and
// database, under the command in wrap if any, and returns its combined
// output.
func runPgbench(ctx context.Context, pg *pgtest.Server, wrap []string, hostport string, limit time.Duration, args ...string) (string, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	argv := slices.Concat(wrap, []string{pg.Bin("pgbench")}, args, []string{pg.Database})
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	// The password is passed in the environment, not on the command line.
	env := []string{"LC_ALL=C", "PGHOST=" + host, "PGPORT=" + port, "PGUSER=" + pg.User,
		"PGPASSWORD=" + pg.Password, "PGSSLMODE=disable", "PGAPPNAME=tether-pgbench"}
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "LC_") {
			continue
		}
		env = append(env, kv)
	}
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (limit %v)", ctx.Err(), limit)
	}
	return string(out), err
}

// proxychainsConfig writes a proxychains-ng configuration that sends every
// connection through the relay's SOCKS5 door as backend name with key, and
// returns the command prefix that uses it.
func proxychainsConfig(b *testing.B, socksAddr, name, key string) []string {
	b.Helper()
	bin, err := exec.LookPath("proxychains4")
	if err != nil {
		b.Fatal("proxychains4 not found (scripts/bench/run installs it; or set TETHER_PGBENCH_VIA=forwarder)")
	}
	host, port, err := net.SplitHostPort(socksAddr)
	if err != nil {
		b.Fatal(err)
	}
	// proxy_dns: pgbench's name lookups get placeholder addresses that
	// proxychains turns back into the name in the SOCKS request, so the
	// relay resolves <service>.<tenant>.tether itself.
	conf := fmt.Sprintf("strict_chain\nproxy_dns\nremote_dns_subnet 224\ntcp_read_time_out 15000\ntcp_connect_time_out 8000\n[ProxyList]\nsocks5 %s %s %s %s\n", host, port, name, key)
	path := filepath.Join(b.TempDir(), "proxychains.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		b.Fatal(err)
	}
	return []string{bin, "-q", "-f", path}
}

// resetPgbenchTables does, directly, what pgbench does before a run unless
// given -n: vacuum the small tables the TPC-B script updates and empty the
// history.
func resetPgbenchTables(b *testing.B, pg *pgtest.Server) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.DSN())
	if err != nil {
		b.Fatalf("connect to PostgreSQL: %v", err)
	}
	defer conn.Close(context.Background())
	for _, q := range []string{"VACUUM pgbench_branches", "VACUUM pgbench_tellers", "TRUNCATE pgbench_history"} {
		if _, err := conn.Exec(ctx, q); err != nil {
			b.Fatalf("%s: %v", q, err)
		}
	}
}

type pgbenchResult struct {
	tps, latencyMs float64
}

var (
	// pgbench 14 and later print "tps = N (without initial connection
	// time)"; earlier versions print "(including connections
	// establishing)" and "(excluding connections establishing)".
	pgbTPSRe = regexp.MustCompile(`(?m)^tps = ([0-9]+(?:\.[0-9]+)?) \((?:without initial connection time|excluding connections establishing)\)`)
	// "latency average = X ms"; 9.5 printed "latency average: X ms".
	pgbLatencyRe = regexp.MustCompile(`(?m)^latency average\s*[=:]\s*([0-9]+(?:\.[0-9]+)?) ms`)
	pgbFailedRe  = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
)

// parsePgbench extracts the throughput and the average latency from
// pgbench's report.
func parsePgbench(out string) (pgbenchResult, error) {
	var res pgbenchResult
	if m := pgbFailedRe.FindStringSubmatch(out); m != nil && m[1] != "0" {
		return res, fmt.Errorf("%s transactions failed", m[1])
	}
	m := pgbTPSRe.FindStringSubmatch(out)
	if m == nil {
		return res, errors.New(`no "tps = N (without initial connection time)" line in the output`)
	}
	tps, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return res, err
	}
	m = pgbLatencyRe.FindStringSubmatch(out)
	if m == nil {
		return res, errors.New(`no "latency average = X ms" line in the output`)
	}
	lat, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return res, err
	}
	if tps <= 0 {
		return res, errors.New("tps is zero")
	}
	return pgbenchResult{tps: tps, latencyMs: lat}, nil
}

// pgbForwarder listens on loopback and connects each accepted connection to
// a tenant service through the relay, copying bytes both ways with
// half-close. Everything it started ends when the benchmark ends.
type pgbForwarder struct {
	ln     net.Listener
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	target string
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex // guards the fields below
	closed  bool
	conns   map[net.Conn]bool
	dialErr []error
}

func startPgbForwarder(b *testing.B, d *client.Dialer, target string) *pgbForwarder {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	f := &pgbForwarder{ln: ln, dial: d.DialContext, target: target, conns: map[net.Conn]bool{}}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.wg.Go(f.accept)
	b.Cleanup(f.close)
	return f
}

func (f *pgbForwarder) addr() string { return f.ln.Addr().String() }

func (f *pgbForwarder) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		if !f.track(c) {
			return
		}
		f.wg.Go(func() { f.serve(c) })
	}
}

// track registers c so that close can end it; it closes c and returns false
// if the forwarder is already closed.
func (f *pgbForwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		c.Close()
		return false
	}
	f.conns[c] = true
	return true
}

func (f *pgbForwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	c.Close()
}

func (f *pgbForwarder) serve(down net.Conn) {
	defer f.untrack(down)
	up, err := f.dial(f.ctx, "tcp", f.target)
	if err != nil {
		f.mu.Lock()
		if len(f.dialErr) < 5 {
			f.dialErr = append(f.dialErr, err)
		}
		f.mu.Unlock()
		return
	}
	if !f.track(up) {
		return
	}
	defer f.untrack(up)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pgbPipe(up, down)
	}()
	pgbPipe(down, up)
	<-done
}

// pgbPipe copies src to dst, then half-closes dst so that its reader sees
// EOF. After an error it closes both connections, which ends the other
// direction too.
func pgbPipe(dst, src net.Conn) {
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		src.Close()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			return
		}
	}
	dst.Close()
}

// dialErrors describes the failed dials, for a failing benchmark's message.
func (f *pgbForwarder) dialErrors() string {
	if f == nil {
		return ""
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.dialErr) == 0 {
		return ""
	}
	return "\nforwarder dials failed: " + errors.Join(f.dialErr...).Error()
}

func (f *pgbForwarder) close() {
	f.cancel()
	f.ln.Close()
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
