package relay

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Unknown backend names cost the store little: a source throttled for
// failed attempts has names the relay does not know refused without a
// store read (a registered backend it knows still gets through from that
// source), and a name the store said it does not know is remembered for
// a while, from every source, until the change feed says a backend of
// that name was added.
func TestUnknownBackendNamesSpareTheStore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	r := runRelay(t, Config{DataDir: dir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: "127.0.0.1:0"})
	a := openAdmin(t, dir, "acme")
	key, err := a.AddBackend(ctx, "billing", []string{"acme"})
	if err != nil {
		t.Fatal(err)
	}
	// connect sends a CONNECT request from src with name and key and
	// returns the answer's status.
	connect := func(src, name, key string) int {
		t.Helper()
		c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}).DialContext(ctx, "tcp", r.ConnectAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(c, "CONNECT echo.acme.tether:7 HTTP/1.1\r\nHost: echo.acme.tether:7\r\nProxy-Authorization: Basic %s\r\n\r\n",
			base64.StdEncoding.EncodeToString([]byte(name+":"+key)))
		resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	lookups := func() uint64 {
		var m dto.Metric
		r.metrics.StoreDuration.WithLabelValues("backend_lookup").(prometheus.Histogram).Write(&m)
		return m.GetHistogram().GetSampleCount()
	}
	// Authenticated, billing's streams are refused no_agent (503): no
	// agent is connected.
	if st := connect("127.0.0.1", "billing", key); st != http.StatusServiceUnavailable {
		t.Fatalf("billing's valid key: %d, want 503 (authenticated; no agent)", st)
	}

	l0 := lookups()
	const n = 100
	start := time.Now()
	statuses := map[int]int{}
	for i := range n {
		statuses[connect("127.0.0.5", fmt.Sprintf("guess-%d", i), "tbk1_wrong")]++
	}
	reads := lookups() - l0
	limit := 10 + uint64(time.Since(start)/(5*time.Second))
	t.Logf("%d unknown names from one address: answers %v, %d store reads", n, statuses, reads)
	if statuses[http.StatusTooManyRequests] < n-int(limit) || reads > limit {
		t.Errorf("%d unknown names from one address: answers %v, %d store reads of backends; want 429 past the burst and at most %d reads", n, statuses, reads, limit)
	}
	// The throttled address, with billing's valid key: through.
	if st := connect("127.0.0.5", "billing", key); st != http.StatusServiceUnavailable {
		t.Errorf("billing's valid key from the throttled address: %d, want 503 (authenticated; no agent)", st)
	}

	// One unknown name from a fresh address, again and again: read once.
	l0 = lookups()
	for range 5 {
		if st := connect("127.0.0.6", "payroll", "tbk1_wrong"); st != http.StatusProxyAuthRequired {
			t.Fatalf("unknown name payroll: %d, want 407", st)
		}
	}
	if reads := lookups() - l0; reads != 1 {
		t.Errorf("an unknown name tried 5 times: %d store reads, want 1", reads)
	}
	// Added, the name is known as soon as the change feed says so.
	payroll, err := a.AddBackend(ctx, "payroll", []string{"acme"})
	if err != nil {
		t.Fatal(err)
	}
	added := time.Now()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st := connect("127.0.0.7", "payroll", payroll)
		if st == http.StatusServiceUnavailable {
			t.Logf("payroll authenticated %v after it was added", time.Since(added))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("payroll, added after its name was refused as unknown: still %d after 10 s; want it authenticated once the change feed tells", st)
		}
	}
}
