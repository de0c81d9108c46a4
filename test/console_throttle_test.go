package test

import (
	"bufio"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// servingAddrs reads the addresses a relay bound (port 0 included) from
// its "relay serving" log line.
func servingAddrs(t *testing.T, r *relayProc) map[string]string {
	t.Helper()
	for _, line := range strings.Split(r.Output(), "\n") {
		if !strings.Contains(line, `"msg":"relay serving"`) {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("relay serving line %q: %v", line, err)
		}
		out := map[string]string{}
		for k, v := range m {
			if s, ok := v.(string); ok {
				out[k] = s
			}
		}
		return out
	}
	t.Fatal("the relay logged no serving line")
	return nil
}

// startAdminRelayOn is startAdminRelay with the admin listener (and the
// metrics listener) on port 0 and more serve flags.
func startAdminRelayOn(t *testing.T, extra ...string) (*adminRelay, string) {
	t.Helper()
	r := startRelay(t, relayOpts{extra: append([]string{"--admin-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"}, extra...)})
	addrs := servingAddrs(t, r)
	a := &adminRelay{relayProc: r, url: "https://" + addrs["admin_addr"], caFile: filepath.Join(t.TempDir(), "ca.crt")}
	a.token = r.admin(t, "operator", "token", "create", "--name", "alice")
	r.admin(t, "ca", "export", "--out", a.caFile)
	pem, err := os.ReadFile(a.caFile)
	if err != nil {
		t.Fatal(err)
	}
	a.roots = x509.NewCertPool()
	if !a.roots.AppendCertsFromPEM(pem) {
		t.Fatal("ca export wrote no certificate")
	}
	return a, "http://" + addrs["metrics_addr"]
}

// clientFrom is a.httpClient keeping its connections, dialling from the
// loopback address ip (any 127.x.y.z is this host): a source of its own.
func (a *adminRelay) clientFrom(ip string, conns int) *http.Client {
	c := a.httpClient(nil)
	tr := c.Transport.(*http.Transport)
	tr.DisableKeepAlives = false
	tr.MaxIdleConnsPerHost = conns
	tr.DialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}).DialContext
	return c
}

// countLines counts the lines of a file.
func countLines(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		n++
	}
	return n
}

// metricSum adds the samples of a metric whose labels contain every
// label given (name="value").
func metricSum(t *testing.T, metricsURL, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get(metricsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		if slices.ContainsFunc(labels, func(l string) bool { return !strings.Contains(line, l) }) {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

// percentile returns the p-th percentile of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// A credential guesser at the admin API, 10 000 wrong operator tokens from
// one address over kept-alive connections: after a small burst it gets
// only 429 with Retry-After, while another address's valid requests all
// go through with their latency; the audit trail (store and audit.log)
// grows by a handful of summed records, whose counts add up to every
// attempt, and the metric counts every refusal.
func TestAdminAPIThrottlesCredentialGuessing(t *testing.T) {
	a, metricsURL := startAdminRelayOn(t)
	auditFile := filepath.Join(a.dataDir, "audit.log")
	linesBefore := countLines(t, auditFile)
	attacker, operator := a.clientFrom("127.0.0.1", 8), a.clientFrom("127.0.0.2", 1)
	whoami := func(c *http.Client, tok string) (int, string, time.Duration) {
		req, _ := http.NewRequest("GET", a.url+"/api/v1/whoami", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			return 0, err.Error(), 0
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Retry-After"), time.Since(start)
	}
	var baseline []time.Duration
	for range 30 {
		st, _, d := whoami(operator, a.token)
		if st != 200 {
			t.Fatalf("valid token before the flood: %d", st)
		}
		baseline = append(baseline, d)
	}

	const attempts, workers = 10000, 8
	var mu sync.Mutex
	statuses := map[int]int{}
	badRetryAfter := 0
	var wg sync.WaitGroup
	done := make(chan struct{})
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for i := w; i < attempts; i += workers {
				id := make([]byte, 8)
				rand.Read(id)
				st, ra, _ := whoami(attacker, "top1_"+hex.EncodeToString(id)+".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
				mu.Lock()
				statuses[st]++
				if n, err := strconv.Atoi(ra); st == http.StatusTooManyRequests && (err != nil || n < 1) {
					badRetryAfter++
				}
				mu.Unlock()
			}
		})
	}
	var during []time.Duration
	refused := 0
	operatorDone := make(chan struct{})
	go func() {
		defer close(operatorDone)
		tick := time.NewTicker(20 * time.Millisecond) // pacing the operator's requests, not waiting on anything
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			st, _, d := whoami(operator, a.token)
			if st != 200 {
				refused++
			}
			during = append(during, d)
		}
	}()
	wg.Wait()
	elapsed := time.Since(start)
	close(done)
	<-operatorDone

	t.Logf("%d wrong tokens in %v (%.0f/s): %v; the other address's valid requests: %d, p50 %v p90 %v (before the flood p50 %v p90 %v)",
		attempts, elapsed.Round(time.Millisecond), attempts/elapsed.Seconds(), statuses, len(during),
		percentile(during, .5), percentile(during, .9), percentile(baseline, .5), percentile(baseline, .9))
	// The burst (10), one more attempt every 5 s, and the attempts of
	// the 8 workers already past the check when the burst ran out.
	if maxFailures := 10 + int(elapsed/(5*time.Second)) + workers; statuses[http.StatusUnauthorized] > maxFailures ||
		statuses[http.StatusUnauthorized]+statuses[http.StatusTooManyRequests] != attempts {
		t.Errorf("statuses %v; want at most %d answered 401 and the rest 429", statuses, maxFailures)
	}
	if badRetryAfter > 0 {
		t.Errorf("%d answers 429 without a Retry-After in seconds", badRetryAfter)
	}
	if refused > 0 || len(during) == 0 {
		t.Errorf("the other address's valid requests: %d of %d refused", refused, len(during))
	}
	if p90, limit := percentile(during, .9), 10*percentile(baseline, .9)+250*time.Millisecond; p90 > limit {
		t.Errorf("the other address's p90 latency during the flood %v, over %v", p90, limit)
	}

	// Every refusal counted by door and reason.
	if n := metricSum(t, metricsURL, "tether_auth_refusals_total", `door="admin_api"`); n != attempts {
		t.Errorf("tether_auth_refusals_total{door=admin_api} = %v, want %d", n, attempts)
	}
	// A 429 is counted as throttled when the source was refused before
	// its token was looked at; an attempt already past that check when
	// the source ran out (at most one per worker) is counted as the bad
	// token it was, and answered 429 all the same.
	if n, answered := metricSum(t, metricsURL, "tether_auth_refusals_total", `door="admin_api"`, `reason="throttled"`), statuses[http.StatusTooManyRequests]; n > float64(answered) || float64(answered)-n > float64(workers) {
		t.Errorf("throttled refusals counted %v, answered 429 %d; want all but at most %d", n, answered, workers)
	}

	// Stop the relay: it writes the sums of the interval in progress.
	if err := a.stop(30 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	type summary struct {
		Kind    string
		Outcome string
		Detail  struct {
			Door, Source, Reason string
			Count                int
		}
	}
	var recs []summary
	for _, line := range strings.Split(strings.TrimSpace(a.admin(t, "audit", "--kind", "auth.refused", "-o", "json")), "\n") {
		if line == "" {
			continue
		}
		var s summary
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		recs = append(recs, s)
	}
	total := 0
	for _, r := range recs {
		if r.Detail.Source != "127.0.0.1" || r.Detail.Door != "admin_api" {
			t.Errorf("summary of %s at %s: only 127.0.0.1 failed", r.Detail.Source, r.Detail.Door)
		}
		total += r.Detail.Count
	}
	// Two reasons, at most two records each per one-minute interval.
	intervals := int(elapsed/time.Minute) + 2
	if len(recs) > 4*intervals || total != attempts {
		t.Errorf("%d auth.refused records counting %d attempts; want at most %d records counting %d", len(recs), total, 4*intervals, attempts)
	}
	grown := countLines(t, auditFile) - linesBefore
	t.Logf("the audit trail grew by %d records (%d in audit.log) for %d attempts", len(recs), grown, attempts)
	if grown > len(recs)+2 {
		t.Errorf("audit.log grew by %d lines for %d summaries", grown, len(recs))
	}
}

// The login form and the login page send a browser only to a path on
// this site, whatever next says.
func TestLoginRedirectStaysOnSite(t *testing.T) {
	a, _ := startAdminRelayOn(t)
	c := a.httpClient(nil)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for _, tc := range []struct{ next, want string }{
		{"/\t/evil.example/x", "/"},
		{"/\\evil.example/x", "/"},
		{"//evil.example/x", "/"},
		{"/%2F%2Fevil.example/x", "/"},
		{"/%5Cevil.example/x", "/"},
		{"/%09/evil.example/x", "/"},
		{"https://evil.example/x", "/"},
		{"http:evil.example", "/"},
		{"/ui/agents?tenant=acme", "/ui/agents?tenant=acme"},
	} {
		form := url.Values{"token": {a.token}, "next": {tc.next}}
		req, _ := http.NewRequest("POST", a.url+"/login", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != tc.want {
			t.Errorf("login with next=%q: %d to %q, want 303 to %q", tc.next, resp.StatusCode, resp.Header.Get("Location"), tc.want)
		}
		resp, err = c.Get(a.url + "/login?next=" + url.QueryEscape(tc.next))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf(`name="next" value="%s"`, strings.ReplaceAll(tc.want, "&", "&amp;")); !strings.Contains(string(body), want) {
			t.Errorf("login page with next=%q: no %s", tc.next, want)
		}
	}
}
