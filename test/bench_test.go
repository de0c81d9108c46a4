package test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// The benchmarks measure, side by side in one run, a direct connection to a
// service against the same service through Tether over QUIC and over
// TLS+yamux, and through two plain forwarders in a chain ("fwd", the floor of
// a relay-and-agent shape; see forwarder_bench_test.go). scripts/bench/run
// turns their output into one table of figures and ratios to direct. Each
// sub-benchmark is named <measure>/<path>.

// benchEnv is a relay with two tenants: q's agent uses QUIC, t's uses TCP;
// both expose the same in-process services, which the forwarder chain
// reaches too.
type benchEnv struct {
	relay    *relayProc
	agents   map[string]*agentProc // path → agent process
	dialer   *client.Dialer
	services map[string]string // service → address
	fwd      map[string]string // service → address of the forwarder chain
	fwdRelay *proc             // the chain's first forwarder (where the relay sits)
	fwdAgent *proc             // the chain's second forwarder (where the agent sits)
}

var benchPaths = []string{"direct", "fwd", "quic", "tcp"}

func newBenchEnv(b *testing.B) *benchEnv {
	e := &benchEnv{agents: map[string]*agentProc{}}
	// Debug listeners let scripts/bench/profile take pprof profiles of the
	// relay and agents while a benchmark runs.
	debug := map[string]string{"relay": "127.0.0.1:" + strconv.Itoa(freePort(b))}
	e.relay = startRelay(b, relayOpts{extra: []string{"--debug-listen", debug["relay"], "--log-level", "info"}})
	e.relay.addTenant(b, "q")
	e.relay.addTenant(b, "t")
	e.dialer = e.relay.backend(b, "bench", "q", "t")
	e.services = map[string]string{
		"sink":   tcpService(b, countingSink),
		"source": tcpService(b, endlessSource),
		"echo":   tcpService(b, echo),
		"greet":  tcpService(b, greet),
	}
	for path, tenant := range map[string]string{"quic": "q", "tcp": "t"} {
		debug[path] = "127.0.0.1:" + strconv.Itoa(freePort(b))
		e.agents[path] = startAgent(b, e.relay, tenant, agentOpts{transport: path, services: e.services,
			extra: "connections: 1\ndebug_listen: " + debug[path] + "\n", logLevel: "info"})
	}
	e.fwd, e.fwdRelay, e.fwdAgent = startForwarders(b, e.services)
	fmt.Fprintf(os.Stderr, "bench debug listeners: relay=%s quic-agent=%s tcp-agent=%s\n", debug["relay"], debug["quic"], debug["tcp"])
	for _, path := range []string{"quic", "tcp"} {
		waitDial(b, e.dialer, e.addr(path, "echo"), 20*time.Second).Close()
	}
	return e
}

// addr is what a client dials for service over path.
func (e *benchEnv) addr(path, service string) string {
	switch path {
	case "quic":
		return service + ".q.tether:1"
	case "tcp":
		return service + ".t.tether:1"
	case "fwd":
		return e.fwd[service]
	}
	return e.services[service]
}

func (e *benchEnv) dial(ctx context.Context, path, service string) (net.Conn, error) {
	if path == "direct" || path == "fwd" {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", e.addr(path, service))
	}
	return e.dialer.DialContext(ctx, "tcp", e.addr(path, service))
}

func (e *benchEnv) mustDial(b *testing.B, path, service string) net.Conn {
	b.Helper()
	c, err := e.dial(context.Background(), path, service)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// countingSink reads until EOF and answers with the byte count.
func countingSink(c net.Conn) {
	n, _ := io.Copy(io.Discard, c)
	var out [8]byte
	binary.BigEndian.PutUint64(out[:], uint64(n))
	c.Write(out[:])
}

// endlessSource writes until the peer goes away.
func endlessSource(c net.Conn) {
	buf := make([]byte, 256<<10)
	for {
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// greet writes one byte at once, then echoes.
func greet(c net.Conn) {
	if _, err := c.Write([]byte{'!'}); err != nil {
		return
	}
	echo(c)
}

const chunk = 256 << 10

func closeWrite(c net.Conn) error {
	return c.(interface{ CloseWrite() error }).CloseWrite()
}

// upload sends n chunks on each of streams connections and checks the
// counts the sink reports.
func upload(b *testing.B, e *benchEnv, path string, streams int) {
	buf := make([]byte, chunk)
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	conns := make([]net.Conn, streams)
	for i := range conns {
		conns[i] = e.mustDial(b, path, "sink")
	}
	per := (b.N + streams - 1) / streams
	b.SetBytes(chunk)
	b.ResetTimer()
	for _, c := range conns {
		wg.Go(func() {
			defer c.Close()
			for range per {
				if _, err := c.Write(buf); err != nil {
					errs <- err
					return
				}
			}
			if err := closeWrite(c); err != nil {
				errs <- err
				return
			}
			var got [8]byte
			if _, err := io.ReadFull(c, got[:]); err != nil {
				errs <- err
				return
			}
			if n := binary.BigEndian.Uint64(got[:]); n != uint64(per*chunk) {
				errs <- fmt.Errorf("sink counted %d bytes, sent %d", n, per*chunk)
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

func download(b *testing.B, e *benchEnv, path string, streams int) {
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	conns := make([]net.Conn, streams)
	for i := range conns {
		conns[i] = e.mustDial(b, path, "source")
	}
	per := (b.N + streams - 1) / streams
	b.SetBytes(chunk)
	b.ResetTimer()
	for _, c := range conns {
		wg.Go(func() {
			defer c.Close()
			if _, err := io.CopyN(io.Discard, c, int64(per*chunk)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// reportPercentiles reports p50, p99 and p99.9 of ds in microseconds.
func reportPercentiles(b *testing.B, ds []time.Duration, quantiles ...float64) {
	slices.Sort(ds)
	for _, q := range quantiles {
		i := int(q * float64(len(ds)))
		if i >= len(ds) {
			i = len(ds) - 1
		}
		name := strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("p%.1f", q*100), "0"), ".")
		b.ReportMetric(float64(ds[i].Nanoseconds())/1e3, name+"-µs")
	}
}

func pingPong(b *testing.B, e *benchEnv, path string) {
	c := e.mustDial(b, path, "echo")
	defer c.Close()
	msg := make([]byte, 64)
	reply := make([]byte, 64)
	for range 200 { // warm up
		c.Write(msg)
		io.ReadFull(c, reply)
	}
	ds := make([]time.Duration, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, reply); err != nil {
			b.Fatal(err)
		}
		ds[i] = time.Since(start)
	}
	b.StopTimer()
	reportPercentiles(b, ds, 0.5, 0.99, 0.999)
}

// firstByte measures a new connection to the first byte the service sends.
func firstByte(b *testing.B, e *benchEnv, path string) {
	ds := make([]time.Duration, b.N)
	one := make([]byte, 1)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		c, err := e.dial(context.Background(), path, "greet")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, one); err != nil {
			b.Fatal(err)
		}
		ds[i] = time.Since(start)
		c.Close()
	}
	b.StopTimer()
	reportPercentiles(b, ds, 0.5, 0.99)
}

// opens runs b.N connection opens (to first byte) from 32 workers.
func opens(b *testing.B, e *benchEnv, path string) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Int64
	start := time.Now()
	b.ResetTimer()
	for range 32 {
		wg.Go(func() {
			one := make([]byte, 1)
			for next.Add(1) <= int64(b.N) {
				c, err := e.dial(context.Background(), path, "greet")
				if err != nil {
					failed.Add(1)
					continue
				}
				if _, err := io.ReadFull(c, one); err != nil {
					failed.Add(1)
				}
				c.Close()
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d opens failed", f, b.N)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "opens/s")
}

// cpuSeconds returns the user+system CPU time a process has used.
func cpuSeconds(pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which may contain spaces) start after ')'.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ is 100 on Linux
}

// rssBytes returns a process's resident set size.
func rssBytes(pid int) float64 { return procStatus(pid, "VmRSS:") }

// procStatus returns a memory figure (in bytes) from /proc/PID/status.
func procStatus(pid int, field string) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb * 1024
		}
	}
	return 0
}

// withCPU runs fn and reports the CPU that the relay and the agent (on
// "fwd", the chain's two forwarders, which sit where they do) spent on it,
// per unit of the work fn did: per(seconds) turns CPU seconds into the
// figure reported as "relay-"+unit and "agent-"+unit. Nothing on "direct".
func withCPU(b *testing.B, e *benchEnv, path, unit string, per func(seconds float64) float64, fn func()) {
	var rp, ap int
	switch path {
	case "direct":
		fn()
		return
	case "fwd":
		rp, ap = e.fwdRelay.Pid(), e.fwdAgent.Pid()
	default:
		rp, ap = e.relay.Pid(), e.agents[path].Pid()
	}
	r0, a0 := cpuSeconds(rp), cpuSeconds(ap)
	fn()
	b.ReportMetric(per(cpuSeconds(rp)-r0), "relay-"+unit)
	b.ReportMetric(per(cpuSeconds(ap)-a0), "agent-"+unit)
}

// perGB reports CPU seconds per GB moved by b.N chunks.
func perGB(b *testing.B) func(float64) float64 {
	return func(s float64) float64 { return s / (float64(b.N) * chunk / 1e9) }
}

// perConn reports CPU microseconds per each of b.N connections.
func perConn(b *testing.B) func(float64) float64 {
	return func(s float64) float64 { return s * 1e6 / float64(b.N) }
}

func BenchmarkTunnel(b *testing.B) {
	e := newBenchEnv(b)
	// Agents connected, one stream served each, nothing else yet: idle.
	idle := map[string]float64{}
	for _, path := range []string{"quic", "tcp"} {
		idle[path] = rssBytes(e.agents[path].Pid())
	}
	for _, path := range benchPaths {
		b.Run("upload-1/"+path, func(b *testing.B) { withCPU(b, e, path, "cpu-s/GB", perGB(b), func() { upload(b, e, path, 1) }) })
		b.Run("download-1/"+path, func(b *testing.B) { withCPU(b, e, path, "cpu-s/GB", perGB(b), func() { download(b, e, path, 1) }) })
		b.Run("upload-8/"+path, func(b *testing.B) { upload(b, e, path, 8) })
		b.Run("download-8/"+path, func(b *testing.B) { download(b, e, path, 8) })
		b.Run("pingpong-64B/"+path, func(b *testing.B) { pingPong(b, e, path) })
		b.Run("first-byte/"+path, func(b *testing.B) { withCPU(b, e, path, "cpu-µs/conn", perConn(b), func() { firstByte(b, e, path) }) })
		b.Run("opens/"+path, func(b *testing.B) { opens(b, e, path) })
	}
	// Resident memory of the agents: idle before the run, and the peak
	// (VmHWM) under the load of the run.
	for _, path := range []string{"quic", "tcp"} {
		pid := e.agents[path].Pid()
		b.Run("agent-rss-idle/"+path, func(b *testing.B) { b.ReportMetric(idle[path]/(1<<20), "MiB") })
		b.Run("agent-rss-peak/"+path, func(b *testing.B) { b.ReportMetric(procStatus(pid, "VmHWM:")/(1<<20), "MiB") })
	}
}
