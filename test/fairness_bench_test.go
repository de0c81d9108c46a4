package test

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// BenchmarkTenantFlood measures what one tenant's flood does to another
// tenant's small requests, through the relay and, in the same run, without
// the tunnel. Tenant b opens 200 streams that each download without end
// (bulk, not request loops: the heaviest copy work a relay does per
// stream), while tenant a makes 1-byte round trips on one stream to an
// echo service. The same flood and the same round trips then go straight
// to the services. Each agent has one connection, over TCP
// (FAIRNESS_TRANSPORT=quic for QUIC). It reports
// a's round-trip p50 alone and under the flood on both paths, and the
// ratios (flood over alone): the tunnel's ratio beside the direct one is
// the figure of issue 21. It also reports the rate at which the flood
// read while a made its round trips, on each path. Run it with -benchtime=1x (scripts/bench/fairness);
// FAIRNESS_PINGS sets the round trips per phase (default 3000),
// FAIRNESS_STREAMS the flood's streams (default 200),
// FAIRNESS_B_BANDWIDTH a bandwidth limit for tenant b (such as 50MiB).
func BenchmarkTenantFlood(b *testing.B) {
	pings := envInt("FAIRNESS_PINGS", 3000)
	streams := envInt("FAIRNESS_STREAMS", 200)
	// The services and the flood run in processes of their own, so that
	// this one makes the round trips and nothing else.
	echoAddr := fairnessHelper(b, "echo", nil)
	sourceAddr := fairnessHelper(b, "source", nil)
	debug := "127.0.0.1:" + strconv.Itoa(freePort(b))
	transport := cmp.Or(os.Getenv("FAIRNESS_TRANSPORT"), "tcp")
	r := startRelay(b, relayOpts{extra: []string{"--debug-listen", debug, "--log-level", "info"}})
	fmt.Fprintf(os.Stderr, "fairness: relay debug listener %s\n", debug)
	r.addTenant(b, "a")
	r.addTenant(b, "b")
	if bw := os.Getenv("FAIRNESS_B_BANDWIDTH"); bw != "" {
		r.admin(b, "tenant", "limits", "b", "--bandwidth", bw)
	}
	d := r.backend(b, "bench", "a", "b")
	startAgent(b, r, "a", agentOpts{transport: transport, services: map[string]string{"echo": echoAddr}, extra: "connections: 1\n", logLevel: "info"})
	startAgent(b, r, "b", agentOpts{transport: transport, services: map[string]string{"source": sourceAddr}, extra: "connections: 1\n", logLevel: "info"})
	waitDial(b, d, "echo.a.tether:1", 20*time.Second).Close()
	waitDial(b, d, "source.b.tether:1", 20*time.Second).Close()

	tunnel := func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", "echo.a.tether:1") }
	direct := func(ctx context.Context) (net.Conn, error) {
		var nd net.Dialer
		return nd.DialContext(ctx, "tcp", echoAddr)
	}
	p50 := map[string]float64{}
	floodRate := map[string]float64{} // the flood's MB/s while a made its round trips
	for _, path := range []struct {
		name  string
		dial  func(context.Context) (net.Conn, error)
		flood []string
	}{
		{"tunnel", tunnel, []string{"FAIRNESS_RELAY=" + d.Relay, "FAIRNESS_BACKEND=" + d.Backend, "FAIRNESS_KEY=" + d.APIKey, "FAIRNESS_TARGET=source.b.tether:1"}},
		{"direct", direct, []string{"FAIRNESS_TARGET=" + sourceAddr}},
	} {
		p50["alone/"+path.name] = pingP50(b, path.dial, pings)
		fp := startFlood(b, append(path.flood, "FAIRNESS_STREAMS="+strconv.Itoa(streams)))
		p50["flood/"+path.name] = pingP50(b, path.dial, pings)
		floodRate[path.name] = fp.stop()
	}
	b.ReportMetric(p50["alone/tunnel"], "tunnel-alone-p50-µs")
	b.ReportMetric(p50["flood/tunnel"], "tunnel-flood-p50-µs")
	b.ReportMetric(p50["alone/direct"], "direct-alone-p50-µs")
	b.ReportMetric(p50["flood/direct"], "direct-flood-p50-µs")
	b.ReportMetric(p50["flood/tunnel"]/p50["alone/tunnel"], "tunnel-ratio")
	b.ReportMetric(p50["flood/direct"]/p50["alone/direct"], "direct-ratio")
	b.ReportMetric(floodRate["tunnel"], "tunnel-flood-MB/s")
	b.ReportMetric(floodRate["direct"], "direct-flood-MB/s")
}

// fairnessHelper runs this test binary as a helper process (see
// runFairnessHelper) with role and env, until the benchmark ends, and
// returns the address it printed.
func fairnessHelper(b *testing.B, role string, env []string) string {
	b.Helper()
	p := startEnv(b, "fairness-"+role, append(env, "FAIRNESS_HELPER="+role), os.Args[0])
	p.waitOutput("fairness helper ready", 20*time.Second)
	out := p.out.String()
	i := strings.Index(out, "fairness helper ready ")
	addr, _, _ := strings.Cut(out[i+len("fairness helper ready "):], "\n")
	return strings.TrimSpace(addr)
}

// floodProc is a running flood helper process.
type floodProc struct {
	p     *proc
	start time.Time
	bytes int64 // read by the flood when start was taken
}

// startFlood runs the flood in a helper process and lets it reach its pace.
func startFlood(b *testing.B, env []string) *floodProc {
	b.Helper()
	p := startEnv(b, "fairness-flood", append(env, "FAIRNESS_HELPER=flood"), os.Args[0])
	p.waitOutput("fairness helper ready", 60*time.Second)
	time.Sleep(time.Second) // let the flood reach its pace before measuring
	return &floodProc{p: p, start: time.Now(), bytes: floodBytes(p)}
}

// stop ends the flood and returns the rate at which it read, in MB/s,
// since startFlood returned (to within the helper's 100 ms reports).
func (f *floodProc) stop() float64 {
	n, d := floodBytes(f.p)-f.bytes, time.Since(f.start)
	f.p.kill()
	return float64(n) / 1e6 / d.Seconds()
}

// floodBytes is the last total the flood helper printed.
func floodBytes(p *proc) int64 {
	out := p.out.String()
	i := strings.LastIndex(out, "fairness flood bytes ")
	if i < 0 {
		return 0
	}
	line, _, _ := strings.Cut(out[i+len("fairness flood bytes "):], "\n")
	n, _ := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
	return n
}

// runFairnessHelper is BenchmarkTenantFlood's helper process: the test
// binary run with FAIRNESS_HELPER set (runMain). "echo" and "source"
// serve an echo and an endless source on loopback; "flood" opens
// FAIRNESS_STREAMS streams to FAIRNESS_TARGET (through the relay's CONNECT
// door when FAIRNESS_RELAY is set) and reads them as fast as they come.
// Each prints "fairness helper ready" (and its address) and runs until it
// is killed; the flood then prints the bytes it has read every 100 ms.
func runFairnessHelper(role string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	switch role {
	case "echo", "source":
		handle := echo
		if role == "source" {
			handle = endlessSource
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fail(err)
		}
		fmt.Printf("fairness helper ready %s\n", l.Addr())
		for {
			c, err := l.Accept()
			if err != nil {
				return fail(err)
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	case "flood":
		dial := func(ctx context.Context) (net.Conn, error) {
			var nd net.Dialer
			return nd.DialContext(ctx, "tcp", os.Getenv("FAIRNESS_TARGET"))
		}
		if relay := os.Getenv("FAIRNESS_RELAY"); relay != "" {
			d := &client.Dialer{Relay: relay, Backend: os.Getenv("FAIRNESS_BACKEND"), APIKey: os.Getenv("FAIRNESS_KEY"), Timeout: 20 * time.Second}
			dial = func(ctx context.Context) (net.Conn, error) {
				return d.DialContext(ctx, "tcp", os.Getenv("FAIRNESS_TARGET"))
			}
		}
		n := envInt("FAIRNESS_STREAMS", 200)
		done := make(chan struct{})
		var total atomic.Int64
		for range n {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			c, err := dial(ctx)
			cancel()
			if err != nil {
				return fail(err)
			}
			go func() {
				defer func() { done <- struct{}{} }()
				buf := make([]byte, 256<<10)
				for {
					k, err := c.Read(buf)
					total.Add(int64(k))
					if err != nil {
						return
					}
				}
			}()
		}
		fmt.Printf("fairness helper ready %d streams\n", n)
		tick := time.NewTicker(100 * time.Millisecond)
		for {
			select {
			case <-done: // a stream ended: the relay or the service went away
				return 1
			case <-tick.C:
				fmt.Printf("fairness flood bytes %d\n", total.Load())
			}
		}
	}
	return fail(fmt.Errorf("unknown fairness helper %q", role))
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// pingP50 makes n 1-byte round trips to the echo service on one
// connection and returns their median in microseconds.
func pingP50(b *testing.B, dial func(context.Context) (net.Conn, error), n int) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dial(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	one := make([]byte, 1)
	for range 100 { // warm up
		c.Write(one)
		io.ReadFull(c, one)
	}
	ds := make([]time.Duration, n)
	for i := range n {
		start := time.Now()
		if _, err := c.Write(one); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, one); err != nil {
			b.Fatal(err)
		}
		ds[i] = time.Since(start)
	}
	median := percentile(ds, 0.5)
	return float64(median.Nanoseconds()) / 1e3
}
