package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
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
	r.admin(t, "tenant", "limits", "acme", "--max-streams", "7")
	svc := labelledService(t, "acme", "db")
	startAgent(t, r, "acme", agentOpts{transport: "quic", services: map[string]string{"db": svc.addr, "echo": tcpService(t, echo)}})
	d := r.backend(t, "billing", "acme")

	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := httpStatus(t, "http://"+ops+path); code != http.StatusOK {
			t.Fatalf("%s: %d %s", path, code, body)
		}
	}

	// A stream held open is counted while it moves bytes, before it ends.
	long := waitDial(t, d, "echo.acme.tether:7", 30*time.Second)
	defer long.Close()
	const chunk = 64 << 10
	if _, err := long.Write(make([]byte, chunk)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(long, make([]byte, chunk)); err != nil {
		t.Fatal(err)
	}
	// A copy loop counts its bytes just after its write returns, which may
	// be a moment after the backend has read them: scrape until the counts
	// are there, for a few seconds at most.
	var m map[string]float64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		m = scrape(t, ops)
		short := ""
		for _, dir := range []string{"to_service", "from_service"} {
			if got := m[`tether_stream_bytes_total{direction="`+dir+`",tenant="acme"}`]; got < chunk {
				short = fmt.Sprintf("tether_stream_bytes_total %s = %v, want at least %d", dir, got, chunk)
			}
		}
		if short == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("while the stream is open: %s", short)
		}
	}
	for _, name := range []string{`tether_streams_active`, `tether_tenant_streams_active{tenant="acme"}`} {
		if got := m[name]; got != 1 {
			t.Errorf("%s = %v with one stream open, want 1", name, got)
		}
	}

	long.Close()

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

	// The agent's RTT is measured by heartbeats (every second here); the
	// stream closed above is counted once the relay has seen it end; the
	// limit applies once the relay followed the change.
	deadline := time.Now().Add(10 * time.Second)
	for {
		m = scrape(t, ops)
		if (m[`tether_agent_rtt_seconds_count{tenant="acme"}`] > 0 && m[`tether_streams_active`] == 0 && m[`tether_tenant_max_streams{tenant="acme"}`] > 0) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for name, want := range map[string]float64{
		`tether_agents_connected{tenant="acme"}`:                                                            1,
		`tether_agent_sessions{tenant="acme",transport="quic"}`:                                             2,
		`tether_agent_rtt_seconds_count{tenant="acme"}`:                                                     2,
		`tether_streams_opened_total{backend="billing",outcome="ok",service="db",tenant="acme"}`:            3,
		`tether_streams_opened_total{backend="billing",outcome="ok",service="echo",tenant="acme"}`:          1,
		`tether_streams_opened_total{backend="billing",outcome="unknown_service",service="",tenant="acme"}`: 20,
		`tether_streams_opened_total{backend="billing",outcome="not_allowed",service="",tenant=""}`:         20,
		`tether_agent_handshakes_total{outcome="ok"}`:                                                       2,
		`tether_stream_open_duration_seconds_count`:                                                         4,
		`tether_streams_active`: 0,
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
		`tether_store_duration_seconds_count{op="backend_lookup"}`,
		`tether_store_duration_seconds_count{op="audit_commit"}`,
		`tether_store_duration_seconds_count{op="change_feed"}`,
	} {
		if m[name] <= 0 {
			t.Errorf("%s = %v, want > 0", name, m[name])
		}
	}
	build := false
	for name, v := range m {
		if strings.HasPrefix(name, `tether_build_info{`) && strings.Contains(name, `go_version="go`) && strings.Contains(name, `commit="`) && v == 1 {
			build = true
		}
		// The old names are gone.
		if strings.HasPrefix(name, "tether_stream_open_seconds") || strings.HasPrefix(name, "tether_store_seconds") {
			t.Errorf("metric under its old name: %s", name)
		}
	}
	if !build {
		t.Error("no tether_build_info{version,commit,go_version} 1")
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

// The Grafana dashboard in deploy/ is valid JSON whose every query names
// metrics the README documents (the relay's own, or the Go and process
// collectors').
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("../deploy/grafana/tether.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("deploy/grafana/tether.json: %v", err)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := string(readme)
	name := regexp.MustCompile(`\btether_[a-z_]+`)
	queries := 0
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			queries++
			for _, m := range name.FindAllString(q.Expr, -1) {
				base := m
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					base = strings.TrimSuffix(base, suffix)
				}
				if !strings.Contains(documented, "`"+base+"`") {
					t.Errorf("panel %q queries %s, which the README does not document", p.Title, m)
				}
			}
		}
	}
	if queries < 20 {
		t.Errorf("%d queries in the dashboard", queries)
	}
}
