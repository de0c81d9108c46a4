package test

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// TestClusterStreamMemoryForwarded: relay 1 holds the agents of acme and
// globex, with a stream memory cap of 40 MiB; relay 2, uncapped, forwards
// streams to it. Relay 1 charges the streams relay 2 forwards against the
// same cap as those through its own front doors (4.5 MiB each once open,
// to an agent over TCP, against 2.5 MiB for a front door's), and a
// tenant's share while it is busy counts both:
//
//   - once billing's idle streams through relay 1's door hold acme's
//     share, acme's stream through relay 2 is refused by relay 1, and
//     relay 2, with no other relay holding acme, answers unavailable with
//     relay 1's reason; globex's stream through relay 2 opens;
//   - the other way round, once billing's streams through relay 2 hold
//     acme's share at relay 1, relay 1's own door refuses acme's stream
//     after at most one more;
//   - relay 1 counts each refusal in tether_stream_memory_refusals_total
//     by tenant, backend and reason, and once every stream is closed the
//     memory it holds (stream_memory_held_bytes in /debug/tether) is 0.
func TestClusterStreamMemoryForwarded(t *testing.T) {
	const mib = 1 << 20
	debug := "127.0.0.1:" + strconv.Itoa(freePort(t))
	c := startClusterWith(t, 2, clusterOpts{extraFor: func(i int) []string {
		if i == 0 {
			return []string{"--max-stream-memory", "40MiB", "--debug-listen", debug, "--metrics-listen", "127.0.0.1:0"}
		}
		return nil
	}})
	metricsURL := "http://" + servingAddrs(t, c.relays[0])["metrics_addr"]
	held := func() int64 { return relayStats(t, debug).StreamMemoryHeld }
	waitHeld := func(what string, want int64) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); held() != want; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("relay 1 holds %.1f MiB of stream memory, want %.1f MiB: %s", float64(held())/mib, float64(want)/mib, what)
			}
		}
	}
	c.admin(t, "tenant", "add", "acme")
	c.admin(t, "tenant", "add", "globex")
	billingKey := c.admin(t, "backend", "add", "billing", "--allow", "acme")
	payrollKey := c.admin(t, "backend", "add", "payroll", "--allow", "globex")
	for _, tenant := range []string{"acme", "globex"} {
		stateDir, id := enroll(t, c.relays[0].agentAddr, c.admin(t, "token", "create", "--tenant", tenant))
		a := runAgent(t, stateDir, id, c.relays[0].agentAddr, agentOpts{transport: "tcp", logLevel: "info", extra: "relay_connections: 1\n",
			services: map[string]string{"echo": tcpService(t, echo)}})
		a.waitOutput(`"relay_id":"relay-1"`, 20*time.Second)
	}
	acmeAt1 := c.dialer(c.relays[0], "billing", billingKey)
	acmeVia2 := c.dialer(c.relays[1], "billing", billingKey)
	globexVia2 := c.dialer(c.relays[1], "payroll", payrollKey)
	for _, d := range []*client.Dialer{acmeAt1, acmeVia2} {
		waitDial(t, d, "echo.acme.tether:7", 20*time.Second).Close()
	}
	waitDial(t, globexVia2, "echo.globex.tether:7", 20*time.Second).Close()
	waitHeld("the streams that found the agents closed", 0)

	var open []net.Conn
	closeAll := func() {
		for _, c := range open {
			c.Close()
		}
		open = nil
	}
	defer closeAll()
	// fill opens streams of d to acme until one is refused, at most max.
	fill := func(d *client.Dialer, max int) (int, error) {
		for n := 0; n < max; n++ {
			conn, err := d.Dial("tcp", "echo.acme.tether:7")
			if err != nil {
				return n, err
			}
			open = append(open, conn)
		}
		return max, nil
	}
	isShare := func(err error) bool {
		return errors.Is(err, client.ErrUnavailable) && strings.Contains(err.Error(), `tenant "acme"`) && strings.Contains(err.Error(), "its share")
	}

	// acme's share taken at relay 1's door: 10 streams of 2.5 MiB, and the
	// eleventh refused (three quarters of the cap held).
	n, err := fill(acmeAt1, 100)
	t.Logf("billing holds %d idle streams to acme through relay 1's door; the next: %v", n, err)
	if !isShare(err) {
		t.Fatalf("acme's stream past its share at relay 1's door: %v; want unavailable for its share", err)
	}
	if conn, err := acmeVia2.Dial("tcp", "echo.acme.tether:7"); err == nil {
		open = append(open, conn)
		t.Fatal("acme's stream through relay 2 opened at relay 1 while acme holds its share there; want it refused")
	} else if !isShare(err) {
		t.Fatalf("acme's stream through relay 2 while acme holds its share at relay 1: %v; want unavailable for its share", err)
	}
	conn, err := globexVia2.Dial("tcp", "echo.globex.tether:7")
	if err != nil {
		t.Fatalf("globex's stream through relay 2 while acme holds its share at relay 1: %v; want it open", err)
	}
	globexOpen := conn
	defer globexOpen.Close()

	// The other way round: acme's streams through relay 2 take its share
	// at relay 1 (4 of 4.5 MiB beside globex's 4.5 MiB: a fifth, charged
	// 8.5 MiB while it opens, would pass three quarters of the cap), and
	// relay 1's door then gives acme one stream more at most.
	closeAll()
	waitHeld("acme's streams through relay 1's door closed, globex's forwarded one open", 4*mib+512<<10)
	n, err = fill(acmeVia2, 100)
	t.Logf("billing holds %d idle streams to acme through relay 2; the next: %v", n, err)
	if !isShare(err) {
		t.Fatalf("acme's stream through relay 2 past its share at relay 1: %v; want unavailable for its share", err)
	}
	if n != 4 {
		t.Errorf("%d of acme's streams through relay 2 opened before relay 1 refused one, want 4", n)
	}
	n, err = fill(acmeAt1, 100)
	t.Logf("and then %d through relay 1's door; the next: %v", n, err)
	if !isShare(err) || n > 1 {
		t.Fatalf("acme's streams through relay 1's door while its forwarded streams hold its share there: %d opened, then %v; want at most 1, then unavailable for its share", n, err)
	}

	if got := metricSum(t, metricsURL, "tether_stream_memory_refusals_total", `tenant="acme"`, `backend="billing"`, `reason="tenant_share"`); got != 4 {
		t.Errorf(`relay 1's tether_stream_memory_refusals_total{tenant="acme",backend="billing",reason="tenant_share"} = %v, want 4 (two at its door, two forwarded)`, got)
	}
	if got := metricSum(t, metricsURL, "tether_stream_memory_refusals_total", `tenant="globex"`); got != 0 {
		t.Errorf(`relay 1's tether_stream_memory_refusals_total{tenant="globex"} = %v, want 0`, got)
	}
	closeAll()
	globexOpen.Close()
	waitHeld("every stream closed", 0)
}

// TestClusterHolderAtMemoryCap: acme's agents are connected to relay 1,
// whose stream memory cap (10 MiB) holds one forwarded stream (4.5 MiB
// once open, to an agent over TCP; 8.5 MiB while it opens), and to relay
// 2, uncapped; globex's only to relay 1. Backends enter relay 3. acme's
// first stream goes to relay 1; its second, past relay 1's cap, is
// refused there with unavailable and opened through relay 2. globex's
// stream, past relay 1's cap with no other relay holding globex, is
// answered unavailable, naming relay 1's cap. Relay 1 counts both
// refusals, and holds nothing once the streams are closed.
func TestClusterHolderAtMemoryCap(t *testing.T) {
	const mib = 1 << 20
	debug := "127.0.0.1:" + strconv.Itoa(freePort(t))
	c := startClusterWith(t, 3, clusterOpts{extraFor: func(i int) []string {
		if i == 0 {
			return []string{"--max-stream-memory", "10MiB", "--debug-listen", debug, "--metrics-listen", "127.0.0.1:0"}
		}
		return nil
	}})
	metricsURL := "http://" + servingAddrs(t, c.relays[0])["metrics_addr"]
	c.admin(t, "tenant", "add", "acme")
	c.admin(t, "tenant", "add", "globex")
	billingKey := c.admin(t, "backend", "add", "billing", "--allow", "acme")
	payrollKey := c.admin(t, "backend", "add", "payroll", "--allow", "globex")
	for _, a := range []struct {
		tenant string
		relay  int
	}{{"acme", 0}, {"acme", 1}, {"globex", 0}} {
		stateDir, id := enroll(t, c.relays[a.relay].agentAddr, c.admin(t, "token", "create", "--tenant", a.tenant))
		ag := runAgent(t, stateDir, id, c.relays[a.relay].agentAddr, agentOpts{transport: "tcp", logLevel: "info", extra: "relay_connections: 1\n",
			services: map[string]string{"echo": tcpService(t, echo)}})
		ag.waitOutput(`"relay_id":"`+relayID(a.relay)+`"`, 20*time.Second)
	}
	acme := c.dialer(c.relays[2], "billing", billingKey)
	globex := c.dialer(c.relays[2], "payroll", payrollKey)
	// Wait until relay 3 knows both of acme's holders: while globex's
	// stream fills relay 1's cap, acme's opens (through relay 2) once it
	// does.
	waitDial(t, globex, "echo.globex.tether:7", 20*time.Second).Close()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		conn := waitDial(t, globex, "echo.globex.tether:7", 20*time.Second)
		other, err := acme.Dial("tcp", "echo.acme.tether:7")
		conn.Close()
		if err == nil {
			other.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("acme's stream through relay 3 while globex's fills relay 1's cap: %v", err)
		}
	}
	held := func() int64 { return relayStats(t, debug).StreamMemoryHeld }
	waitHeld := func(what string, want int64) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); held() != want; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("relay 1 holds %.1f MiB of stream memory, want %.1f MiB: %s", float64(held())/mib, float64(want)/mib, what)
			}
		}
	}
	waitHeld("the first streams closed", 0)
	before := metricSum(t, metricsURL, "tether_stream_memory_refusals_total", `reason="cap"`)

	first, err := acme.Dial("tcp", "echo.acme.tether:7")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if err := echoLine(first, "first"); err != nil {
		t.Fatal(err)
	}
	// Relay 1, holding the most of acme's agents with relay 2 and first
	// by id, took it.
	waitHeld("acme's first stream open through relay 1", 4*mib+512<<10)
	second, err := acme.Dial("tcp", "echo.acme.tether:7")
	if err != nil {
		t.Fatalf("acme's second stream, past relay 1's cap, relay 2 holding acme too: %v; want it opened through relay 2", err)
	}
	defer second.Close()
	if err := echoLine(second, "second"); err != nil {
		t.Fatal(err)
	}
	if h := held(); h != 4*mib+512<<10 {
		t.Errorf("relay 1 holds %.1f MiB with acme's second stream open, want 4.5 MiB (the second went through relay 2)", float64(h)/mib)
	}
	if conn, err := globex.Dial("tcp", "echo.globex.tether:7"); err == nil {
		conn.Close()
		t.Fatal("globex's stream past relay 1's cap, relay 1 its only holder: opened")
	} else if !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), "max_stream_memory 10 MiB") {
		t.Fatalf("globex's stream past relay 1's cap, relay 1 its only holder: %v; want unavailable naming relay 1's cap", err)
	}
	if got := metricSum(t, metricsURL, "tether_stream_memory_refusals_total", `reason="cap"`) - before; got != 2 {
		t.Errorf(`relay 1's tether_stream_memory_refusals_total{reason="cap"} grew by %v, want 2 (acme's second stream, globex's)`, got)
	}
	first.Close()
	second.Close()
	waitHeld("every stream closed", 0)
}
