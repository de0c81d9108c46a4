// Command table turns the output of Tether's benchmarks (go test -bench,
// run by scripts/bench/run) into one markdown table: each figure for direct
// connections, for Tether over QUIC and over TCP, the ratio or difference to
// direct, the target from the performance issue, and whether it is met; and
// a second table that sets Tether over TCP beside two plain forwarders in a
// chain ("fwd", the floor of a relay-and-agent shape, without TLS or
// multiplexing) and says which of Tether-over-TCP's targets the chain
// itself misses. When a benchmark ran several times (-count), the median
// is used.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// results maps a benchmark name (without the GOMAXPROCS suffix) and a unit
// to every value reported.
type results map[string]map[string][]float64

var procSuffix = regexp.MustCompile(`-\d+$`)

func parse(path string) (results, error) {
	res := results{}
	if path == "" {
		return res, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || !strings.HasPrefix(fields[0], "Benchmark") {
			continue
		}
		name := procSuffix.ReplaceAllString(fields[0], "")
		if _, err := strconv.Atoi(fields[1]); err != nil {
			continue // not a result line
		}
		for i := 2; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				continue
			}
			if res[name] == nil {
				res[name] = map[string][]float64{}
			}
			res[name][fields[i+1]] = append(res[name][fields[i+1]], v)
		}
	}
	return res, sc.Err()
}

// get returns the median of name's unit values, or false.
func (r results) get(name, unit string) (float64, bool) {
	vs := r[name][unit]
	if len(vs) == 0 {
		return 0, false
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2], true
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2, true
}

type table struct {
	w    io.Writer
	fail int
	miss int
	// chainHeld and chainMissed count the floor table's targets that the
	// forwarder chain was held to, and those it misses itself.
	chainHeld, chainMissed int
}

func (t *table) header(title string) {
	fmt.Fprintf(t.w, "\n### %s\n\n", title)
	fmt.Fprintln(t.w, "| measure | direct | QUIC | QUIC vs direct | TCP | TCP vs direct | target | met |")
	fmt.Fprintln(t.w, "|---|---:|---:|---:|---:|---:|---|---|")
}

func num(v float64, ok bool) string {
	if !ok {
		return "–"
	}
	switch {
	case v >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

// versus is v relative to base: their ratio, or their difference v − base.
// Targets are checked against it.
func versus(v, base float64, ratio bool) float64 {
	if ratio {
		return v / base
	}
	return v - base
}

// relative is the cell comparing v with base: their ratio ("0.25×") or
// their signed difference ("+134.0", "−3.00").
func relative(v, base float64, ratio bool) string {
	switch {
	case ratio:
		return strconv.FormatFloat(v/base, 'f', 2, 64) + "×"
	case v >= base:
		return "+" + num(v-base, true)
	default:
		return "−" + num(base-v, true)
	}
}

// verdict is "yes", "**no**" or "–" when there is no target or no data.
func (t *table) verdict(has, ok bool) string {
	switch {
	case !has:
		return ""
	case ok:
		return "yes"
	default:
		t.fail++
		return "**no**"
	}
}

// checkFunc tells whether a figure meets a target for a transport, given
// the figure relative to direct (rel: a ratio or a difference) and the
// figure itself (v).
type checkFunc func(transport string, rel, v float64) bool

// goal is a target of the performance issue that rows of both tables are
// held to.
type goal struct {
	text  string
	check checkFunc
}

var (
	pingPongGoal  = goal{"+ ≤ 60 µs", func(_ string, rel, _ float64) bool { return rel <= 60 }}
	firstByteGoal = goal{"+ ≤ 250 µs", func(_ string, rel, _ float64) bool { return rel <= 250 }}
	opensGoal     = goal{"≥ 5000/s", func(_ string, _, v float64) bool { return v >= 5000 }}
	pgbenchGoal   = goal{"≥ 0.70×", func(_ string, rel, _ float64) bool { return rel >= 0.70 }}
)

// comparison is a row comparing QUIC and TCP with direct.
type comparison struct {
	label, bench, unit string
	// ratio reports tunnel/direct; otherwise tunnel − direct.
	ratio bool
	// target describes the goal; check tells whether a value (ratio or
	// difference) meets it for a transport.
	target string
	check  checkFunc
}

func (t *table) compare(r results, c comparison) {
	d, dok := r.get(c.bench+"/direct", c.unit)
	cells := []string{c.label + " (" + c.unit + ")", num(d, dok)}
	allMet, has := true, false
	for _, tr := range []string{"quic", "tcp"} {
		v, ok := r.get(c.bench+"/"+tr, c.unit)
		cells = append(cells, num(v, ok))
		if !ok || !dok {
			cells = append(cells, "–")
			if c.check != nil {
				t.miss++
			}
			continue
		}
		cells = append(cells, relative(v, d, c.ratio))
		if c.check != nil {
			has = true
			allMet = allMet && c.check(tr, versus(v, d, c.ratio), v)
		}
	}
	cells = append(cells, c.target, t.verdict(has, allMet))
	fmt.Fprintln(t.w, "| "+strings.Join(cells, " | ")+" |")
}

// single is a row with one value per transport and no direct counterpart.
func (t *table) single(r results, label, benchFmt, unit, target string, check func(tr string, v float64) bool) {
	cells := []string{label + " (" + unit + ")", "–"}
	allMet, has := true, false
	for _, tr := range []string{"quic", "tcp"} {
		v, ok := r.get(fmt.Sprintf(benchFmt, tr), unit)
		cells = append(cells, num(v, ok), "")
		if ok && check != nil {
			has = true
			allMet = allMet && check(tr, v)
		} else if !ok && check != nil {
			t.miss++
		}
	}
	cells = append(cells, target, t.verdict(has, allMet))
	fmt.Fprintln(t.w, "| "+strings.Join(cells, " | ")+" |")
}

// fleetSizes lists the fleet sizes BenchmarkFleet ran with transport (any
// transport if ""), smallest first.
func fleetSizes(f results, transport string) []string {
	var sizes []string
	for name := range f {
		if s, ok := strings.CutPrefix(name, "BenchmarkFleet/fleet-"); ok {
			n, tr, _ := strings.Cut(s, "/")
			if (transport == "" || tr == transport) && !slices.Contains(sizes, n) {
				sizes = append(sizes, n)
			}
		}
	}
	slices.SortFunc(sizes, func(a, b string) int { x, _ := strconv.Atoi(a); y, _ := strconv.Atoi(b); return x - y })
	return sizes
}

// autoStorm is a table of the reconnect storms run with the agents'
// default transport (auto: QUIC, falling back to TCP when a QUIC handshake
// takes longer than quic_timeout), if the fleet runs had any.
func (t *table) autoStorm(f results) {
	sizes := fleetSizes(f, "auto")
	if len(sizes) == 0 {
		return
	}
	fmt.Fprintf(t.w, "\n### Reconnect storm with the agents' default transport (auto)\n\n")
	fmt.Fprintln(t.w, "| agents | all back (s) | agents left on TCP | streams failed after one retry | target | met |")
	fmt.Fprintln(t.w, "|---:|---:|---:|---:|---|---|")
	for _, n := range sizes {
		bench := "BenchmarkFleet/fleet-" + n + "/auto"
		back, bok := f.get(bench, "storm-reconnect-all-s")
		onTCP, tok := f.get(bench, "storm-agents-on-tcp")
		failed, fok := f.get(bench, "storm-streams-failed-after-retry")
		target, verdict := "", ""
		if n == "10000" {
			target = "≤ 30 s, 0 failed"
			if !bok || !fok {
				t.miss++
			}
			verdict = t.verdict(bok && fok, back <= 30 && failed == 0)
		}
		fmt.Fprintf(t.w, "| %s | %s | %s | %s | %s | %s |\n", n, num(back, bok), num(onTCP, tok), num(failed, fok), target, verdict)
	}
}

// floorRow is a row of the floor table: bench's figure for direct, for the
// forwarder chain and for Tether over TCP.
type floorRow struct {
	label, bench, unit string
	ratio              bool // compare by ratio; otherwise by difference
	r                  results
	// target is the row's target for Tether over TCP, if it has one; check
	// tells whether the chain's figure would meet it.
	target string
	check  checkFunc
}

// floor prints the table that sets Tether over TCP beside two plain
// forwarders (path "fwd"), if the runs had that path.
func (t *table) floor(rows []floorRow) {
	have := false
	for _, row := range rows {
		if _, ok := row.r.get(row.bench+"/fwd", row.unit); ok {
			have = true
		}
	}
	if !have {
		return
	}
	fmt.Fprintf(t.w, "\n### The same shape without Tether: two plain forwarders (fwd)\n\n")
	fmt.Fprintln(t.w, "| measure | direct | fwd | fwd vs direct | TCP | TCP vs direct | TCP vs fwd | target | fwd meets it |")
	fmt.Fprintln(t.w, "|---|---:|---:|---:|---:|---:|---:|---|---|")
	rel := func(v, base float64, ok, bok, ratio bool) string {
		if !ok || !bok {
			return "–"
		}
		return relative(v, base, ratio)
	}
	for _, row := range rows {
		d, dok := row.r.get(row.bench+"/direct", row.unit)
		f, fok := row.r.get(row.bench+"/fwd", row.unit)
		c, cok := row.r.get(row.bench+"/tcp", row.unit)
		meets := ""
		if row.check != nil && fok && dok {
			t.chainHeld++
			if row.check("tcp", versus(f, d, row.ratio), f) {
				meets = "yes"
			} else {
				meets = "no"
				t.chainMissed++
			}
		}
		fmt.Fprintf(t.w, "| %s (%s) | %s | %s | %s | %s | %s | %s | %s | %s |\n", row.label, row.unit, num(d, dok), num(f, fok),
			rel(f, d, fok, dok, row.ratio), num(c, cok), rel(c, d, cok, dok, row.ratio), rel(c, f, cok, fok, row.ratio), row.target, meets)
	}
}

func main() {
	unpinned := flag.String("unpinned", "", "BenchmarkTunnel output, unpinned")
	pinned := flag.String("pinned", "", "BenchmarkTunnel output, all processes on one CPU")
	fleet := flag.String("fleet", "", "BenchmarkFleet output")
	pg := flag.String("pgbench", "", "BenchmarkPgbench output")
	flag.Parse()
	load := func(p string) results {
		r, err := parse(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, "table:", err)
			os.Exit(2)
		}
		return r
	}
	render(os.Stdout, load(*unpinned), load(*pinned), load(*fleet), load(*pg))
}

// render writes the tables for the unpinned and pinned BenchmarkTunnel
// results u and p, the fleet results f and the pgbench results g.
func render(w io.Writer, u, p, f, g results) {
	t := &table{w: w}

	// One-stream throughput: the QUIC and the TCP target; the floor table
	// holds the chain to the TCP one.
	oneStream := func(tr string, rel, _ float64) bool {
		if tr == "quic" {
			return rel >= 0.16
		}
		return rel >= 0.30
	}
	t.header("Throughput, CPU and memory (unpinned)")
	for _, dir := range []string{"upload", "download"} {
		t.compare(u, comparison{label: dir + ", 1 stream", bench: "BenchmarkTunnel/" + dir + "-1", unit: "MB/s", ratio: true,
			target: "QUIC ≥ 0.16×, TCP ≥ 0.30×", check: oneStream})
		one := map[string]float64{}
		for _, tr := range []string{"quic", "tcp"} {
			one[tr], _ = u.get("BenchmarkTunnel/"+dir+"-1/"+tr, "MB/s")
		}
		t.compare(u, comparison{label: dir + ", 8 streams", bench: "BenchmarkTunnel/" + dir + "-8", unit: "MB/s", ratio: true,
			target: "≥ 1 stream", check: func(tr string, _ float64, v float64) bool { return v >= 0.95*one[tr] }})
	}
	for _, dir := range []string{"upload", "download"} {
		for _, side := range []string{"relay", "agent"} {
			t.single(u, side+" CPU, "+dir, "BenchmarkTunnel/"+dir+"-1/%s", side+"-cpu-s/GB", "", nil)
		}
	}
	for _, side := range []string{"relay", "agent"} {
		t.single(u, side+" CPU per new connection", "BenchmarkTunnel/first-byte/%s", side+"-cpu-µs/conn", "", nil)
	}
	t.single(u, "agent resident memory, idle", "BenchmarkTunnel/agent-rss-idle/%s", "MiB", "≤ 25 MiB",
		func(_ string, v float64) bool { return v <= 25 })
	t.single(u, "agent resident memory, peak under load", "BenchmarkTunnel/agent-rss-peak/%s", "MiB", "", nil)

	for _, mode := range []struct {
		name string
		r    results
	}{{"unpinned", u}, {"pinned to one CPU", p}} {
		if len(mode.r) == 0 {
			continue
		}
		pinnedMode := mode.name != "unpinned"
		t.header("Latency and stream opens (" + mode.name + ")")
		var p50 = map[string]float64{}
		for _, tr := range []string{"quic", "tcp"} {
			p50[tr], _ = mode.r.get("BenchmarkTunnel/pingpong-64B/"+tr, "p50-µs")
		}
		check := func(f checkFunc) checkFunc {
			if !pinnedMode {
				return nil
			}
			return f
		}
		target := func(s string) string {
			if !pinnedMode {
				return ""
			}
			return s
		}
		t.compare(mode.r, comparison{label: "64 B ping-pong p50", bench: "BenchmarkTunnel/pingpong-64B", unit: "p50-µs",
			target: target(pingPongGoal.text), check: check(pingPongGoal.check)})
		t.compare(mode.r, comparison{label: "64 B ping-pong p99", bench: "BenchmarkTunnel/pingpong-64B", unit: "p99-µs",
			target: target("≤ 3× own p50"), check: check(func(tr string, _, v float64) bool { return v <= 3*p50[tr] })})
		t.compare(mode.r, comparison{label: "64 B ping-pong p99.9", bench: "BenchmarkTunnel/pingpong-64B", unit: "p99.9-µs"})
		t.compare(mode.r, comparison{label: "new connection to first byte p50", bench: "BenchmarkTunnel/first-byte", unit: "p50-µs",
			target: target(firstByteGoal.text), check: check(firstByteGoal.check)})
		t.compare(mode.r, comparison{label: "new connection to first byte p99", bench: "BenchmarkTunnel/first-byte", unit: "p99-µs"})
		t.compare(mode.r, comparison{label: "stream opens, 32 clients", bench: "BenchmarkTunnel/opens", unit: "opens/s", ratio: true,
			target: target(opensGoal.text), check: check(opensGoal.check)})
	}

	if len(f) > 0 {
		for _, n := range fleetSizes(f, "") {
			t.header("Fleet of " + n + " idle agents, one relay")
			fb := "BenchmarkFleet/fleet-" + n + "/%s"
			t.single(f, "relay resident memory per agent", fb, "relay-rss-KiB/agent", "QUIC ≤ 256, TCP ≤ 64 KiB",
				func(tr string, v float64) bool {
					if tr == "quic" {
						return v <= 256
					}
					return v <= 64
				})
			t.single(f, "relay Go heap per agent", fb, "relay-heap-KiB/agent", "", nil)
			t.single(f, "relay goroutine stacks per agent", fb, "relay-stack-KiB/agent", "", nil)
			t.single(f, "relay goroutines per agent", fb, "relay-goroutines/agent", "", nil)
			t.single(f, "relay resident memory", fb, "relay-rss-MiB", "", nil)
			t.single(f, "enrolment rate", fb, "enrolments/s", "", nil)
			t.single(f, "all agents connected after start", fb, "connect-all-s", "", nil)
			stormTarget, stormCheck := "", func(string, float64) bool { return true }
			if n == "10000" {
				stormTarget, stormCheck = "≤ 30 s", func(_ string, v float64) bool { return v <= 30 }
			}
			t.single(f, "relay killed → all agents back", fb, "storm-reconnect-all-s", stormTarget, stormCheck)
			t.single(f, "handshake failures in the storm", fb, "storm-handshake-failures", "", nil)
			t.single(f, "handshakes turned away by admission", fb, "storm-handshakes-throttled", "", nil)
			t.single(f, "backend streams opened in the storm", fb, "storm-streams", "", nil)
			t.single(f, "streams failed after one retry", fb, "storm-streams-failed-after-retry", "0",
				func(_ string, v float64) bool { return v == 0 })
		}
	}

	t.autoStorm(f)

	if len(g) > 0 {
		t.header("pgbench through the tunnel (8 clients)")
		for _, w := range []string{"select", "tpcb"} {
			t.compare(g, comparison{label: "pgbench " + w, bench: "BenchmarkPgbench/" + w, unit: "tps", ratio: true,
				target: pgbenchGoal.text, check: pgbenchGoal.check})
			t.compare(g, comparison{label: "pgbench " + w + " latency", bench: "BenchmarkPgbench/" + w, unit: "latency-ms"})
		}
	}

	// The floor table holds the plain chain to Tether-over-TCP's targets,
	// so that every run says which of them the shape itself misses here.
	floor := []floorRow{}
	for _, dir := range []string{"upload", "download"} {
		oneFwd, _ := u.get("BenchmarkTunnel/"+dir+"-1/fwd", "MB/s")
		floor = append(floor,
			floorRow{label: dir + ", 1 stream", bench: "BenchmarkTunnel/" + dir + "-1", unit: "MB/s", ratio: true, r: u,
				target: "≥ 0.30×", check: oneStream},
			floorRow{label: dir + ", 8 streams", bench: "BenchmarkTunnel/" + dir + "-8", unit: "MB/s", ratio: true, r: u,
				target: "≥ 1 stream", check: func(_ string, _, v float64) bool { return v >= 0.95*oneFwd }})
	}
	for _, dir := range []string{"upload", "download"} {
		for _, side := range []string{"relay", "agent"} {
			floor = append(floor, floorRow{label: side + " CPU, " + dir, bench: "BenchmarkTunnel/" + dir + "-1",
				unit: side + "-cpu-s/GB", ratio: true, r: u})
		}
	}
	for _, side := range []string{"relay", "agent"} {
		floor = append(floor, floorRow{label: side + " CPU per new connection", bench: "BenchmarkTunnel/first-byte",
			unit: side + "-cpu-µs/conn", ratio: true, r: u})
	}
	p50Fwd, _ := p.get("BenchmarkTunnel/pingpong-64B/fwd", "p50-µs")
	floor = append(floor,
		floorRow{label: "64 B ping-pong p50, pinned", bench: "BenchmarkTunnel/pingpong-64B", unit: "p50-µs", r: p,
			target: pingPongGoal.text, check: pingPongGoal.check},
		floorRow{label: "64 B ping-pong p99, pinned", bench: "BenchmarkTunnel/pingpong-64B", unit: "p99-µs", r: p,
			target: "≤ 3× own p50", check: func(_ string, _, v float64) bool { return v <= 3*p50Fwd }},
		floorRow{label: "new connection to first byte p50, pinned", bench: "BenchmarkTunnel/first-byte", unit: "p50-µs", r: p,
			target: firstByteGoal.text, check: firstByteGoal.check},
		floorRow{label: "stream opens, pinned", bench: "BenchmarkTunnel/opens", unit: "opens/s", ratio: true, r: p,
			target: opensGoal.text, check: opensGoal.check},
		floorRow{label: "pgbench select", bench: "BenchmarkPgbench/select", unit: "tps", ratio: true, r: g,
			target: pgbenchGoal.text, check: pgbenchGoal.check},
		floorRow{label: "pgbench tpcb", bench: "BenchmarkPgbench/tpcb", unit: "tps", ratio: true, r: g,
			target: pgbenchGoal.text, check: pgbenchGoal.check},
	)
	t.floor(floor)

	fmt.Fprintln(w)
	switch {
	case t.fail > 0:
		fmt.Fprintf(w, "**%d target rows not met.**", t.fail)
	default:
		fmt.Fprint(w, "All measured targets met.")
	}
	if t.miss > 0 {
		fmt.Fprintf(w, " %d figures with a target were not measured.", t.miss)
	}
	if t.chainHeld > 0 {
		fmt.Fprintf(w, " Two plain forwarders in Tether's place miss %d of the %d targets they were held to (last table).", t.chainMissed, t.chainHeld)
	}
	fmt.Fprintln(w)
}
