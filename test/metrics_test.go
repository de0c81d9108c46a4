package test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// scrape fetches a relay's /metrics and returns each sample line's value
// by its name and labels, as printed.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func httpStatus(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestMetricsAndHealth(t *testing.T) {
	ops := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r := startRelay(t, relayOpts{extra: []string{"--metrics-listen", ops}})
	r.addTenant(t, "acme")
	svc := labelledService(t, "acme", "db")
	startAgent(t, r, "acme", agentOpts{transport: "quic", services: map[string]string{"db": svc.addr}})
	d := r.backend(t, "billing", "acme")

	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := httpStatus(t, "http://"+ops+path); code != http.StatusOK {
			t.Fatalf("%s: %d %s", path, code, body)
		}
	}
	for range 3 {
		if body, err := fetch(d, "db.acme.tether:80"); err != nil || body != "tenant=acme service=db" {
			t.Fatalf("fetch: %q, %v", body, err)
		}
	}
	// Refusals with names made up by the backend.
	for i := range 20 {
		if _, err := fetch(d, fmt.Sprintf("svc%d.acme.tether:80", i)); protocol.CodeOf(err) != protocol.CodeUnknownService {
			t.Fatalf("unknown service: %v", err)
		}
		if _, err := fetch(d, fmt.Sprintf("db.t%d.tether:80", i)); protocol.CodeOf(err) != protocol.CodeNotAllowed {
			t.Fatalf("ungranted tenant: %v", err)
		}
	}

	deadline := time.Now().Add(10 * time.Second)
	var m map[string]float64
	for {
		m = scrape(t, ops)
		if m[`tether_stream_bytes_total{direction="from_service",tenant="acme"}`] > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for name, want := range map[string]float64{
		`tether_agents_connected{tenant="acme",transport="quic"}`:                         2,
		`tether_streams_opened_total{outcome="ok",service="db",tenant="acme"}`:            3,
		`tether_streams_opened_total{outcome="unknown_service",service="",tenant="acme"}`: 20,
		`tether_streams_opened_total{outcome="not_allowed",service="",tenant=""}`:         20,
		`tether_agent_handshakes_total{outcome="ok"}`:                                     2,
		`tether_stream_open_seconds_count`:                                                3,
	} {
		if got := m[name]; got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	for _, name := range []string{
		`tether_stream_bytes_total{direction="from_service",tenant="acme"}`,
		`tether_stream_bytes_total{direction="to_service",tenant="acme"}`,
		`tether_ca_certificate_expiry_timestamp_seconds`,
		`tether_agent_certificate_expiry_timestamp_seconds{tenant="acme"}`,
		`tether_store_seconds_count{op="backend_lookup"}`,
		`tether_store_seconds_count{op="audit_commit"}`,
		`tether_store_seconds_count{op="change_feed"}`,
	} {
		if m[name] <= 0 {
			t.Errorf("%s = %v, want > 0", name, m[name])
		}
	}
	// Names a backend made up never become label values.
	for name := range m {
		if strings.Contains(name, `"svc`) || strings.Contains(name, `tenant="t`) {
			t.Errorf("a requested name became a label: %s", name)
		}
	}
	if exp := m[`tether_agent_certificate_expiry_timestamp_seconds{tenant="acme"}`]; time.Unix(int64(exp), 0).Before(time.Now()) {
		t.Errorf("agent certificate expiry %v is in the past", exp)
	}
}
