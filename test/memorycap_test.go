package test

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// Streams whose receive windows a hostile pair fills (the service sends
// without end, the backend never reads) make the relay hold at most its
// stream memory cap, and one tenant at most half of it: the streams past
// it are refused with unavailable, naming the cap, at the CONNECT and
// SOCKS5 doors; the relay's heap stays
// under the cap; and once the streams close, new ones open again.
func TestStreamMemoryCap(t *testing.T) {
	for _, tc := range []struct {
		transport string
		charge    int64 // one stream's worst case (frontdoor.YamuxStreamMemory, QUICStreamMemory)
	}{
		{"tcp", 2<<20 + 512<<10},
		{"quic", 6<<20 + 512<<10},
	} {
		t.Run(tc.transport, func(t *testing.T) { testStreamMemoryCap(t, tc.transport, tc.charge) })
	}
}

func testStreamMemoryCap(t *testing.T, transport string, charge int64) {
	const memCap = 40 << 20
	const maxCharge = 6<<20 + 512<<10 // charged while a stream opens (frontdoor.MaxStreamMemory)
	debug := "127.0.0.1:" + strconv.Itoa(freePort(t))
	r := startRelay(t, relayOpts{extra: []string{"--max-stream-memory", "40MiB", "--debug-listen", debug}})
	r.addTenant(t, "acme")
	d := r.backend(t, "billing", "acme")
	var written atomic.Int64
	flood := tcpService(t, func(c net.Conn) {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Write(buf)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	startAgent(t, r, "acme", agentOpts{transport: transport, services: map[string]string{"flood": flood}, logLevel: "info"})
	waitDial(t, d, "flood.acme.tether:1", 20*time.Second).Close()
	base := relayStatsGC(t, debug).HeapInuse

	// Open streams that nobody reads until the relay refuses one. acme is
	// the only tenant: it may hold up to three quarters of the cap, and
	// past it no more than its share, a quarter (less than what it holds
	// then).
	want := int((memCap*3/4-maxCharge)/charge) + 1
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	var refusal error
	for len(open) <= 2*want {
		c, err := d.Dial("tcp", "flood.acme.tether:1")
		if err != nil {
			refusal = err
			break
		}
		open = append(open, c)
	}
	t.Logf("%s: %d streams open when the relay refused one: %v", transport, len(open), refusal)
	if !errors.Is(refusal, client.ErrUnavailable) || !strings.Contains(refusal.Error(), "max_stream_memory 40 MiB") {
		t.Fatalf("stream %d past the tenant's share: got %v, want unavailable naming max_stream_memory 40 MiB", len(open)+1, refusal)
	}
	if len(open) != want {
		t.Errorf("%d streams opened under a 40 MiB cap (one tenant: three quarters of it), want %d at %d bytes each", len(open), want, charge)
	}
	// The SOCKS5 door maps it like its other refusals of capacity.
	if c, code, err := socksDial(r.socksAddr, d.Backend, d.APIKey, "flood.acme.tether", 1); err != nil || code != 3 {
		if c != nil {
			c.Close()
		}
		t.Fatalf("SOCKS5 past the cap: reply %d, %v; want 3 (network unreachable, as for unavailable)", code, err)
	}

	// Wait for the windows to fill: the service's writes stop moving.
	last, still := int64(-1), time.Now()
	for deadline := time.Now().Add(30 * time.Second); time.Since(still) < 500*time.Millisecond; time.Sleep(50 * time.Millisecond) {
		if n := written.Load(); n != last {
			last, still = n, time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatal("the service's writes never stopped: nothing fills")
		}
	}
	heap := relayStatsGC(t, debug).HeapInuse
	grew := int64(heap) - int64(base)
	t.Logf("%s: %d streams full (%.1f MiB written by the service); relay heap %.1f MiB, %.1f MiB over its %.1f MiB before",
		transport, len(open), float64(last)/(1<<20), float64(heap)/(1<<20), float64(grew)/(1<<20), float64(base)/(1<<20))
	if grew > memCap {
		t.Errorf("the relay's heap grew %.1f MiB with its streams full, over the 40 MiB cap", float64(grew)/(1<<20))
	}
	if grew > int64(len(open))*charge {
		t.Errorf("the relay's heap grew %.1f MiB for %d streams, over their worst case of %.1f MiB each", float64(grew)/(1<<20), len(open), float64(charge)/(1<<20))
	}

	// Closed, the streams give their memory back: new ones open.
	for _, c := range open {
		c.Close()
	}
	open = nil
	waitDial(t, d, "flood.acme.tether:1", 10*time.Second).Close()
}

// One tenant's backend holding idle streams up to what the relay lets it
// take does not take the others' streams with it: past three quarters of
// the stream memory cap a tenant may hold a quarter, so backend payroll's stream to
// tenant globex opens while billing's streams to acme hold all acme may;
// acme's refusal names the tenant and its share, and the refusals are
// counted in tether_stream_memory_refusals_total by tenant and reason.
func TestStreamMemoryCapSharedByTenants(t *testing.T) {
	r := startRelay(t, relayOpts{extra: []string{"--max-stream-memory", "40MiB", "--metrics-listen", "127.0.0.1:0"}})
	metricsURL := "http://" + servingAddrs(t, r)["metrics_addr"]
	r.addTenant(t, "acme")
	r.addTenant(t, "globex")
	acme := r.backend(t, "billing", "acme")
	globex := r.backend(t, "payroll", "globex")
	startAgent(t, r, "acme", agentOpts{transport: "tcp", services: map[string]string{"echo": tcpService(t, echo)}})
	startAgent(t, r, "globex", agentOpts{transport: "tcp", services: map[string]string{"echo": tcpService(t, echo)}})
	waitDial(t, acme, "echo.acme.tether:7", 20*time.Second).Close()
	waitDial(t, globex, "echo.globex.tether:7", 20*time.Second).Close()

	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	var refusal error
	for len(open) < 100 {
		c, err := acme.Dial("tcp", "echo.acme.tether:7")
		if err != nil {
			refusal = err
			break
		}
		open = append(open, c)
	}
	t.Logf("billing holds %d idle streams to acme's echo; the next: %v", len(open), refusal)
	for i := range 2 {
		c, err := globex.Dial("tcp", "echo.globex.tether:7")
		if err != nil {
			t.Fatalf("payroll's stream %d to globex while billing holds acme's share: %v; want it open", i+1, err)
		}
		open = append(open, c)
	}
	if !errors.Is(refusal, client.ErrUnavailable) || !strings.Contains(refusal.Error(), `tenant "acme"`) || !strings.Contains(refusal.Error(), "its share") {
		t.Fatalf("acme's stream past its share: %v; want unavailable naming tenant acme and its share", refusal)
	}
	if n := metricSum(t, metricsURL, "tether_stream_memory_refusals_total", `tenant="acme"`, `backend="billing"`, `reason="tenant_share"`); n != 1 {
		t.Errorf("tether_stream_memory_refusals_total{tenant=acme,reason=tenant_share} = %v, want 1", n)
	}
	if n := metricSum(t, metricsURL, "tether_stream_memory_refusals_total", `tenant="globex"`); n != 0 {
		t.Errorf("tether_stream_memory_refusals_total{tenant=globex} = %v, want 0", n)
	}
	// Each open stream to an agent over TCP is charged 2.5 MiB.
	const mib = 1 << 20
	m := scrape(t, strings.TrimPrefix(metricsURL, "http://"))
	if held, limit := m["tether_stream_memory_held_bytes"], m["tether_stream_memory_cap_bytes"]; held != float64(len(open))*2.5*mib || limit != 40*mib {
		t.Errorf("tether_stream_memory_held_bytes %v and _cap_bytes %v with %d streams open; want %v and %v", held, limit, len(open), float64(len(open))*2.5*mib, 40*mib)
	}
}
