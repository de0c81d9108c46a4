package test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/relay/client"
)

// BenchmarkFleet measures a relay serving a fleet of idle agents: the
// relay's memory per agent, and a reconnect storm after the relay is killed
// and restarted. The agents run in this process, each a real agent with its
// own enrolled identity and its own connection; beyond
// TETHER_BENCH_FLEET_PER_PROCESS (default 4000) they are spread over worker
// processes of this test binary. Fleet sizes come from
// TETHER_BENCH_FLEET (default "1000"; scripts/bench/run uses "1000,10000").
//
// Sub-benchmarks are fleet-<n>/<transport>; each runs once whatever b.N.
func BenchmarkFleet(b *testing.B) {
	sizes := []int{1000}
	if v := os.Getenv("TETHER_BENCH_FLEET"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				b.Fatalf("TETHER_BENCH_FLEET=%q: want comma-separated positive counts", v)
			}
			sizes = append(sizes, n)
		}
	}
	// TETHER_BENCH_FLEET_TRANSPORTS picks the agents' transports (default
	// "tcp,quic"; "auto" is the agents' default: QUIC, falling back to TCP
	// when a QUIC handshake takes longer than quic_timeout).
	transports := benchTransports(b, "TETHER_BENCH_FLEET_TRANSPORTS", "tcp,quic")
	for _, n := range sizes {
		for _, tr := range transports {
			b.Run(fmt.Sprintf("fleet-%d/%s", n, tr), func(b *testing.B) { fleet(b, n, tr) })
		}
	}
}

// fleetTenants is how many tenants the fleet is spread over.
const fleetTenants = 50

func fleet(b *testing.B, n int, transport string) {
	if b.N > 1 {
		b.Skip("runs once; use -benchtime 1x")
	}
	debugAddr := "127.0.0.1:" + strconv.Itoa(freePort(b))
	// The relay is killed and restarted below while thousands of agents
	// dial it: its port must not be one their own sockets can take.
	// Every agent connects from 127.0.0.1, standing for a fleet spread
	// over many hosts: the bounds per source address and network are
	// lifted.
	extra := []string{"--debug-listen", debugAddr, "--log-level", "info", "--heartbeat", "10s",
		"--max-handshakes-per-address", "1000000", "--max-handshakes-per-network", "1000000"}
	// TETHER_BENCH_RELAY_FLAGS adds relay flags (admission experiments).
	extra = append(extra, strings.Fields(os.Getenv("TETHER_BENCH_RELAY_FLAGS"))...)
	// TETHER_BENCH_RELAY_ENV adds environment variables to the relay
	// alone (GOGC=200, say), not to the simulated agents.
	env := strings.Fields(os.Getenv("TETHER_BENCH_RELAY_ENV"))
	r := startRelay(b, relayOpts{agentPort: stablePort(b), extra: extra, env: env})
	echoAddr := tcpService(b, echo)
	tenants := make([]string, fleetTenants)
	tokens := make([]string, fleetTenants)
	for i := range tenants {
		tenants[i] = fmt.Sprintf("t%02d", i)
		r.addTenant(b, tenants[i])
		tokens[i] = r.token(b, tenants[i], "--uses", strconv.Itoa(n), "--ttl", "1h")
	}
	dialer := r.backend(b, "fleet", tenants...)
	dialer.Timeout = 10 * time.Second

	idle := relayStatsGC(b, debugAddr)
	rss0 := rssBytes(r.Pid())

	// Enrol n agents, a few at a time, then run them.
	dirs := make([]string, n)
	base := b.TempDir()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	enrolStart := time.Now()
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				dirs[i] = filepath.Join(base, strconv.Itoa(i))
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := agent.Enroll(ctx, agent.EnrollOptions{Relay: r.agentAddr, Token: tokens[i%fleetTenants], StateDir: dirs[i], Hostname: "fleet"})
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
	b.ReportMetric(float64(n)/time.Since(enrolStart).Seconds(), "enrolments/s")

	ctx, cancel := context.WithCancel(context.Background())
	var agents sync.WaitGroup
	var trace *stormTrace
	if os.Getenv("TETHER_BENCH_STORM_TRACE") != "" {
		// Of the agents in this process (with worker processes, the
		// first share of the fleet).
		trace = newStormTrace()
	}
	b.Cleanup(func() {
		cancel()
		agents.Wait()
	})
	// The first share of the fleet runs here, the rest in worker
	// processes (fleetPerProcess).
	per := fleetPerProcess()
	local := min(n, per)
	for i := range local {
		a, err := fleetAgent(dirs[i], transport, echoAddr, fleetLogger(i, trace))
		if err != nil {
			b.Fatal(err)
		}
		agents.Go(func() { a.Run(ctx) })
	}
	for lo := local; lo < n; lo += per {
		startFleetWorker(b, fleetWork{Dirs: dirs[lo:min(lo+per, n)], Transport: transport, Echo: echoAddr})
	}
	if local < n {
		b.ReportMetric(float64((n-local+per-1)/per), "worker-processes")
	}
	connectStart := time.Now()
	waitConnected(b, debugAddr, n, 5*time.Minute)
	b.ReportMetric(time.Since(connectStart).Seconds(), "connect-all-s")

	// Memory with the fleet idle: give the relay a moment to settle, then
	// read its resident set and Go heap after a GC.
	time.Sleep(2 * time.Second)
	full := relayStatsGC(b, debugAddr) // also returns freed memory to the OS
	if dir := os.Getenv("TETHER_BENCH_PROFILE_DIR"); dir != "" {
		saveProfile(b, "http://"+debugAddr+"/debug/pprof/heap?gc=1", filepath.Join(dir, fmt.Sprintf("relay-heap-fleet-%d-%s.pprof", n, transport)))
		saveProfile(b, "http://"+debugAddr+"/debug/pprof/goroutine", filepath.Join(dir, fmt.Sprintf("relay-goroutines-fleet-%d-%s.pprof", n, transport)))
		// The heap profile in text ends with the runtime's memory statistics.
		saveProfile(b, "http://"+debugAddr+"/debug/pprof/heap?debug=1", filepath.Join(dir, fmt.Sprintf("relay-memstats-fleet-%d-%s.txt", n, transport)))
	}
	rss := rssBytes(r.Pid())
	b.ReportMetric((rss-rss0)/float64(n)/1024, "relay-rss-KiB/agent")
	b.ReportMetric(float64(full.HeapInuse-idle.HeapInuse)/float64(n)/1024, "relay-heap-KiB/agent")
	b.ReportMetric(float64(full.StackInuse-idle.StackInuse)/float64(n)/1024, "relay-stack-KiB/agent")
	b.ReportMetric(float64(full.Goroutines-idle.Goroutines)/float64(n), "relay-goroutines/agent")
	b.ReportMetric(rss/(1<<20), "relay-rss-MiB")

	// Reconnect storm: kill the relay, start it again, and measure how long
	// until every agent is back. Meanwhile a backend keeps opening streams
	// to random tenants; a stream counts as failed only if one retry after
	// a failure fails too.
	var opened, failed atomic.Int64
	var failures failureLog
	stormCtx, stopLoad := context.WithCancel(context.Background())
	var load sync.WaitGroup
	for w := range 4 {
		load.Go(func() { backendLoad(stormCtx, dialer, tenants, uint64(w), &opened, &failed, &failures) })
	}
	time.Sleep(500 * time.Millisecond)
	r.kill()
	killed := time.Now()
	udpDrops0 := udpRcvbufErrors()
	var traced sync.WaitGroup
	traceCtx, stopTrace := context.WithCancel(context.Background())
	if trace != nil {
		trace.take()
		traced.Go(func() { trace.report(traceCtx, debugAddr, killed, 5*time.Second) })
	}
	r.restart()
	var profiled sync.WaitGroup
	if dir := os.Getenv("TETHER_BENCH_PROFILE_DIR"); dir != "" {
		// The restarted relay's CPU over the storm's first 20 seconds.
		profiled.Go(func() {
			waitDebug(debugAddr, 10*time.Second)
			saveProfile(b, "http://"+debugAddr+"/debug/pprof/profile?seconds=20", filepath.Join(dir, fmt.Sprintf("relay-cpu-storm-%d-%s.pprof", n, transport)))
		})
	}
	waitConnected(b, debugAddr, n, 5*time.Minute)
	stopTrace()
	traced.Wait()
	profiled.Wait()
	b.ReportMetric(time.Since(killed).Seconds(), "storm-reconnect-all-s")
	// Datagrams the machine dropped for want of room in a socket's
	// receive buffer over the storm, the relay's and the simulated
	// agents' (a CPU-starved reader falls behind): lost QUIC packets,
	// which stall connections for retransmission timeouts.
	b.ReportMetric(float64(udpRcvbufErrors()-udpDrops0), "storm-udp-rcvbuf-drops")
	b.ReportMetric(float64(udpSocketDrops(r.agentAddr)), "storm-relay-udp-drops")
	// The restarted relay's CPU until every agent was back, per agent: its
	// cost of a handshake (TLS, hello, admission, refusals; the backend's
	// streams meanwhile too, a small part), a figure that holds on a
	// machine that also runs the fleet.
	b.ReportMetric(cpuSeconds(r.Pid())*1000/float64(n), "storm-relay-cpu-ms/agent")
	time.Sleep(time.Second)
	stopLoad()
	load.Wait()
	after := relayStats(b, debugAddr)
	if transport == "auto" {
		// Where the storm left the fleet: agents whose QUIC handshake
		// took longer than quic_timeout fell back to TCP.
		b.ReportMetric(float64(after.ByTransport["tcp"]), "storm-agents-on-tcp")
	}
	b.ReportMetric(float64(after.HandshakesFailed), "storm-handshake-failures")
	b.ReportMetric(float64(after.HandshakesThrottled), "storm-handshakes-throttled")
	b.ReportMetric(float64(opened.Load()), "storm-streams")
	b.ReportMetric(float64(failed.Load()), "storm-streams-failed-after-retry")
	for _, f := range failures.list() {
		b.Logf("failed stream: %s", f)
	}
	if dir := os.Getenv("TETHER_BENCH_PROFILE_DIR"); dir != "" && failed.Load() > 0 {
		// The relay's log (TETHER_BENCH_RELAY_FLAGS=--log-level=debug
		// names each stream), for the failed streams' story.
		path := filepath.Join(dir, fmt.Sprintf("relay-log-storm-%d-%s.txt", n, transport))
		if err := os.WriteFile(path, []byte(r.out.String()), 0o600); err != nil {
			b.Error(err)
		} else {
			b.Logf("relay log: %s", path)
		}
	}
}

// fleetPerProcess is how many of the fleet's agents one process runs
// (TETHER_BENCH_FLEET_PER_PROCESS, default 4000); the agents beyond the
// first share run in worker processes of this test binary
// (runFleetWorker), each with as many. An agent holds about three open
// files, and a process may be held to 20 000 (a hard limit it cannot
// raise): one process alone cannot run 10 000 agents.
func fleetPerProcess() int { return envInt("TETHER_BENCH_FLEET_PER_PROCESS", 4000) }

// fleetAgent is one agent of the fleet: the enrolled state directory dir,
// serving echo at echoAddr.
func fleetAgent(dir, transport, echoAddr string, log *slog.Logger) (*agent.Agent, error) {
	return agent.New(agent.Config{
		StateDir:    dir,
		Transport:   transport,
		Connections: 1,
		Services:    map[string]agent.Service{"echo": {Address: echoAddr}},
		Reconnect:   agent.Backoff{Initial: 500 * time.Millisecond, Max: 30 * time.Second},
		Logger:      log,
		NoFileWatch: true, // inotify instances are a per-user limit (128)
	})
}

// fleetWorkerEnv names the file of a fleet worker's work (fleetWork, in
// JSON): set, the test binary runs as a fleet worker (runMain).
const fleetWorkerEnv = "TETHER_BENCH_FLEET_WORKER"

// fleetWork is a fleet worker's share of the fleet.
type fleetWork struct {
	Dirs      []string // enrolled state directories, one per agent
	Transport string
	Echo      string // the echo service's address
}

// startFleetWorker runs w in a worker process until the benchmark ends,
// and returns once its agents run.
func startFleetWorker(b *testing.B, w fleetWork) {
	b.Helper()
	raw, err := json.Marshal(w)
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.CreateTemp(b.TempDir(), "fleet-work-*.json")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := f.Write(raw); err != nil {
		b.Fatal(err)
	}
	f.Close()
	p := startEnv(b, "fleet-worker", []string{fleetWorkerEnv + "=" + f.Name()}, os.Args[0])
	p.waitOutput("fleet worker running", time.Minute)
}

// runFleetWorker is BenchmarkFleet's worker process: the test binary run
// with fleetWorkerEnv set (runMain). It runs the agents of the work in
// the named file, prints "fleet worker running N agents", and stops them
// at SIGTERM or SIGINT (the benchmark kills it when it ends).
func runFleetWorker(path string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "fleet worker:", err); return 1 }
	raw, err := os.ReadFile(path)
	if err != nil {
		return fail(err)
	}
	var w fleetWork
	if err := json.Unmarshal(raw, &w); err != nil {
		return fail(fmt.Errorf("%s: %w", path, err))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var agents sync.WaitGroup
	defer agents.Wait()
	for _, dir := range w.Dirs {
		a, err := fleetAgent(dir, w.Transport, w.Echo, agentLog)
		if err != nil {
			stop()
			return fail(err)
		}
		agents.Go(func() { a.Run(ctx) })
	}
	fmt.Printf("fleet worker running %d agents\n", len(w.Dirs))
	<-ctx.Done()
	return 0
}

// backendLoad opens echo streams to random tenants until ctx ends, retrying
// a failed open once after a short pause.
func backendLoad(ctx context.Context, d *client.Dialer, tenants []string, seed uint64, opened, failed *atomic.Int64, log *failureLog) {
	rng := rand.New(rand.NewPCG(seed, 7))
	try := func(addr string) error {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 4)
		_, err = c.Read(buf)
		return err
	}
	for ctx.Err() == nil {
		addr := "echo." + tenants[rng.IntN(len(tenants))] + ".tether:7"
		opened.Add(1)
		if err := try(addr); err != nil && ctx.Err() == nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			if err2 := try(addr); err2 != nil && ctx.Err() == nil {
				failed.Add(1)
				log.add(fmt.Sprintf("%s %s: %v, then after a retry: %v", time.Now().UTC().Format("15:04:05.000"), addr, err, err2))
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitDebug waits up to d for the relay's debug listener to answer.
func waitDebug(addr string, d time.Duration) {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := tryStats(addr); err == nil {
			return
		}
	}
}

// fleetStats is the part of the relay's /debug/tether the fleet benchmark
// reads.
type fleetStats struct {
	AgentConnections    int            `json:"agent_connections"`
	ByTransport         map[string]int `json:"by_transport"`
	Goroutines          int            `json:"goroutines"`
	HeapInuse           uint64         `json:"heap_inuse_bytes"`
	StackInuse          uint64         `json:"stack_inuse_bytes"`
	HandshakesFailed    int64          `json:"handshakes_failed"`
	HandshakesThrottled int64          `json:"handshakes_throttled"`
	StreamMemoryHeld    int64          `json:"stream_memory_held_bytes"`
}

func relayStats(b testing.TB, addr string) fleetStats {
	return getStats(b, "http://"+addr+"/debug/tether")
}

// relayStatsGC is relayStats after a garbage collection in the relay.
func relayStatsGC(b testing.TB, addr string) fleetStats {
	return getStats(b, "http://"+addr+"/debug/tether?gc=1")
}

func getStats(b testing.TB, url string) fleetStats {
	b.Helper()
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var s fleetStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		b.Fatal(err)
	}
	return s
}

// waitConnected waits until the relay reports n agent connections.
func waitConnected(b testing.TB, addr string, n int, limit time.Duration) {
	b.Helper()
	deadline := time.Now().Add(limit)
	for {
		s, err := tryStats(addr)
		if err == nil && s.AgentConnections >= n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d agents connected after %v (last error %v)", s.AgentConnections, n, limit, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tryStats(addr string) (fleetStats, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/debug/tether")
	if err != nil {
		return fleetStats{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fleetStats{}, errors.New(resp.Status)
	}
	var s fleetStats
	err = json.NewDecoder(resp.Body).Decode(&s)
	return s, err
}

// fleetLogger is agent i's logger: the storm trace's when there is one,
// else agent 0 logs to stderr with SCRATCH set, and the others not at all.
func fleetLogger(i int, trace *stormTrace) *slog.Logger {
	if trace != nil {
		return trace.logger()
	}
	if agentLog != nil {
		return agentLog
	}
	if i == 0 && os.Getenv("SCRATCH") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

// agentLog, when TETHER_BENCH_AGENT_LOG names a file, is the fleet's
// agents' log at info level, in JSON, for a storm's failed streams' story:
// this process's agents write to that file, each worker process's to the
// file with its process id appended.
var agentLog = func() *slog.Logger {
	path := os.Getenv("TETHER_BENCH_AGENT_LOG")
	if path == "" {
		return nil
	}
	if os.Getenv(fleetWorkerEnv) != "" {
		path += "." + strconv.Itoa(os.Getpid())
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		panic(fmt.Sprintf("TETHER_BENCH_AGENT_LOG: %v", err))
	}
	return slog.New(slog.NewJSONHandler(f, &slog.HandlerOptions{Level: slog.LevelInfo}))
}()

// saveProfile stores a pprof profile fetched from url in path.
func saveProfile(b testing.TB, url, path string) {
	b.Helper()
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		b.Fatal(err)
	}
}

// failureLog keeps the first few failures for the benchmark's log.
type failureLog struct {
	mu   sync.Mutex
	msgs []string
}

func (l *failureLog) add(msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.msgs) < 5 {
		l.msgs = append(l.msgs, msg)
	}
}

func (l *failureLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.msgs)
}

// BenchmarkIdleCPU compares the CPU a relay spends on a fleet of idle
// agents with that of another relay binary (a base revision), side by
// side: both relays run at once, each with its own fleet of n in-process
// agents (TETHER_BENCH_FLEET, first size; default 2000), and their CPU
// time is read over the same window (TETHER_BENCH_IDLE_WINDOW, default
// 60s), so that the machine's load falls on both alike; each transport runs
// TETHER_BENCH_IDLE_ROUNDS times (default 1). This relay runs with the
// bounds per source lifted (every agent connects from 127.0.0.1);
// TETHER_BENCH_BASE_RELAY_FLAGS adds flags to the base relay's. The base
// relay is
// TETHER_BENCH_BASE_RELAY, a tether-relay binary, e.g.
//
//	git archive main | tar -x -C /tmp/base && (cd /tmp/base && go build -o /tmp/relay-main ./cmd/tether-relay)
//	TETHER_BENCH_BASE_RELAY=/tmp/relay-main go test -run '^$' -bench '^BenchmarkIdleCPU$' -benchtime 1x ./test/
//
// Sub-benchmarks are idle-<n>/<transport>/round-<r>; each runs once
// whatever b.N.
func BenchmarkIdleCPU(b *testing.B) {
	base := os.Getenv("TETHER_BENCH_BASE_RELAY")
	if base == "" {
		b.Skip("TETHER_BENCH_BASE_RELAY names no base tether-relay binary")
	}
	n := 2000
	if v := os.Getenv("TETHER_BENCH_FLEET"); v != "" {
		var err error
		if n, err = strconv.Atoi(strings.TrimSpace(strings.Split(v, ",")[0])); err != nil || n < 1 {
			b.Fatalf("TETHER_BENCH_FLEET=%q: want a positive count", v)
		}
	}
	window := time.Minute
	if v := os.Getenv("TETHER_BENCH_IDLE_WINDOW"); v != "" {
		var err error
		if window, err = time.ParseDuration(v); err != nil {
			b.Fatalf("TETHER_BENCH_IDLE_WINDOW=%q: %v", v, err)
		}
	}
	transports := []string{"tcp", "quic"}
	if v := os.Getenv("TETHER_BENCH_FLEET_TRANSPORTS"); v != "" {
		transports = strings.Split(v, ",")
	}
	rounds := 1 // TETHER_BENCH_IDLE_ROUNDS: runs of each transport, one after the other
	if v := os.Getenv("TETHER_BENCH_IDLE_ROUNDS"); v != "" {
		var err error
		if rounds, err = strconv.Atoi(v); err != nil || rounds < 1 {
			b.Fatalf("TETHER_BENCH_IDLE_ROUNDS=%q: want a positive count", v)
		}
	}
	for round := range rounds {
		for _, tr := range transports {
			// Distinct names: a repeated one gets a "#01" suffix, which in
			// a data directory's path SQLite reads as a URI fragment.
			b.Run(fmt.Sprintf("idle-%d/%s/round-%d", n, tr, round+1), func(b *testing.B) { idleCPU(b, base, n, tr, window) })
		}
	}
}

// idleCPU is one run of BenchmarkIdleCPU.
func idleCPU(b *testing.B, base string, n int, tr string, window time.Duration) {
	if b.N > 1 {
		b.Skip("runs once; use -benchtime 1x")
	}
	type side struct {
		r     *relayProc
		debug string
	}
	sides := map[string]*side{}
	for name, bin := range map[string]string{"this": bins.relay, "base": base} {
		debug := "127.0.0.1:" + strconv.Itoa(freePort(b))
		extra := []string{"--debug-listen", debug, "--log-level", "info", "--heartbeat", "10s"}
		if name == "this" {
			extra = append(extra, "--max-handshakes-per-address", "1000000", "--max-handshakes-per-network", "1000000")
		} else {
			// TETHER_BENCH_BASE_RELAY_FLAGS: flags for the base relay
			// (the same bounds, when it has them).
			extra = append(extra, strings.Fields(os.Getenv("TETHER_BENCH_BASE_RELAY_FLAGS"))...)
		}
		sides[name] = &side{r: startRelay(b, relayOpts{agentPort: stablePort(b), extra: extra, bin: bin}), debug: debug}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var agents sync.WaitGroup
	b.Cleanup(func() {
		cancel()
		agents.Wait()
	})
	echoAddr := tcpService(b, echo)
	for _, s := range sides {
		s.r.addTenant(b, "acme")
		tok := s.r.token(b, "acme", "--uses", strconv.Itoa(n), "--ttl", "1h")
		dirs := make([]string, n)
		base := b.TempDir()
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Go(func() {
				for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
					dirs[i] = filepath.Join(base, strconv.Itoa(i))
					ectx, ecancel := context.WithTimeout(ctx, 30*time.Second)
					_, err := agent.Enroll(ectx, agent.EnrollOptions{Relay: s.r.agentAddr, Token: tok, StateDir: dirs[i], Hostname: "idle"})
					ecancel()
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
		for i := range n {
			a, err := agent.New(agent.Config{
				StateDir: dirs[i], Transport: tr, Connections: 1,
				Services:    map[string]agent.Service{"echo": {Address: echoAddr}},
				Reconnect:   agent.Backoff{Initial: 500 * time.Millisecond, Max: 30 * time.Second},
				NoFileWatch: true,
			})
			if err != nil {
				b.Fatal(err)
			}
			agents.Go(func() { a.Run(ctx) })
		}
	}
	for _, s := range sides {
		waitConnected(b, s.debug, n, 5*time.Minute)
	}
	time.Sleep(5 * time.Second) // let the connects' work settle before measuring
	cpu0 := map[string]float64{}
	for name, s := range sides {
		cpu0[name] = cpuSeconds(s.r.Pid())
	}
	time.Sleep(window)
	per := map[string]float64{}
	for name, s := range sides {
		per[name] = (cpuSeconds(s.r.Pid()) - cpu0[name]) / window.Seconds()
		if st := relayStats(b, s.debug); st.AgentConnections != n {
			b.Errorf("%s relay: %d agents connected at the end of the window, want %d", name, st.AgentConnections, n)
		}
	}
	b.ReportMetric(per["this"]*1000, "relay-cpu-ms/s")
	b.ReportMetric(per["base"]*1000, "base-relay-cpu-ms/s")
	if per["base"] > 0 {
		b.ReportMetric(per["this"]/per["base"], "ratio")
	}
}

// udpRcvbufErrors is the machine's count of UDP datagrams dropped for want
// of room in a socket's receive buffer (Linux; 0 elsewhere).
func udpRcvbufErrors() int64 {
	raw, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return 0
	}
	var names []string
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		if i := slices.Index(names, "RcvbufErrors"); i > 0 && i < len(f) {
			n, _ := strconv.ParseInt(f[i], 10, 64)
			return n
		}
	}
	return 0
}

// udpSocketDrops is the datagrams dropped by the UDP socket bound to addr
// (host:port, IPv4) since it was opened (Linux; 0 elsewhere).
func udpSocketDrops(addr string) int64 {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return 0
	}
	raw, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		return 0
	}
	ip := ap.Addr().As4()
	// /proc/net/udp prints the address's network-order bytes read as one
	// word in the machine's order.
	local := fmt.Sprintf("%08X:%04X", binary.NativeEndian.Uint32(ip[:]), ap.Port())
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) >= 13 && f[1] == local {
			n, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
			return n
		}
	}
	return 0
}
