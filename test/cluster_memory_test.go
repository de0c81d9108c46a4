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
