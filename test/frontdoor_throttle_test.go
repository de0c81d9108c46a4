package test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// Outcomes of a front-door attempt, as the throttling tests count them.
const (
	outcomeOK              = "ok"
	outcomeUnauthenticated = "unauthenticated"
	outcomeRateLimited     = "rate_limited"
)

// frontDoor is one of the relay's front doors, tried with a backend name
// and API key from a source address (any 127.x.y.z is this host).
type frontDoor struct {
	name string // as the relay names it in metrics and audit records
	try  func(t *testing.T, src, backend, key string) string
}

// throttleRelay is a relay with its three front doors, metrics, a tenant
// acme whose agent serves an echo service, and the backend billing.
type throttleRelay struct {
	*relayProc
	metricsURL string
	billing    *client.Dialer
	doors      []frontDoor
}

const echoTarget = "echo.acme.tether:7"

func startThrottleRelay(t *testing.T) *throttleRelay {
	t.Helper()
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r := startRelay(t, relayOpts{extra: []string{"--connect-tls-listen", tlsAddr, "--metrics-listen", "127.0.0.1:0"}})
	r.addTenant(t, "acme")
	d := r.backend(t, "billing", "acme")
	startAgent(t, r, "acme", agentOpts{services: map[string]string{"echo": tcpService(t, echo)}})
	waitDial(t, d, echoTarget, 15*time.Second).Close()
	caPEM, err := os.ReadFile(filepath.Join(r.dataDir, "ca", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	tlsConf, err := client.RelayTLSConfig(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	tr := &throttleRelay{relayProc: r, metricsURL: "http://" + servingAddrs(t, r)["metrics_addr"], billing: d}
	tr.doors = []frontDoor{
		{"socks5", func(t *testing.T, src, backend, key string) string {
			return socksTry(t, src, r.socksAddr, backend, key)
		}},
		{"connect", func(t *testing.T, src, backend, key string) string {
			return connectTry(t, src, r.connectAddr, nil, backend, key)
		}},
		{"connect-tls", func(t *testing.T, src, backend, key string) string {
			return connectTry(t, src, tlsAddr, tlsConf, backend, key)
		}},
	}
	return tr
}

// fromAddr is a dialer whose connections come from the loopback address
// src.
func fromAddr(src string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
}

// echoThrough checks that c echoes a line back, and closes it.
func echoThrough(t *testing.T, c net.Conn) string {
	t.Helper()
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Errorf("write through the tunnel: %v", err)
		return "error"
	}
	if got, err := bufio.NewReader(c).ReadString('\n'); err != nil || got != "ping\n" {
		t.Errorf("echo through the tunnel: %q, %v", got, err)
		return "error"
	}
	return outcomeOK
}

// connectTry dials echoTarget through a CONNECT door (TLS when tlsConf is
// set) from src with a backend name and key: ok (and the echo works), or
// the refusal's code.
func connectTry(t *testing.T, src, addr string, tlsConf *tls.Config, backend, key string) string {
	t.Helper()
	d := &client.Dialer{Relay: addr, Backend: backend, APIKey: key, TLSConfig: tlsConf, NetDialer: fromAddr(src), Timeout: 20 * time.Second}
	c, err := d.DialContext(context.Background(), "tcp", echoTarget)
	if err == nil {
		return echoThrough(t, c)
	}
	var ce *client.Error
	if !errors.As(err, &ce) {
		t.Errorf("CONNECT from %s: %v", src, err)
		return "error"
	}
	return ce.Code.String()
}

// socksTry dials echoTarget through the SOCKS5 door from src with a
// backend name and key, one message at a time: ok (and the echo works),
// unauthenticated for an RFC 1929 failure status, rate_limited for the
// reply 0x01 after the authentication exchange.
func socksTry(t *testing.T, src, addr, backend, key string) string {
	t.Helper()
	c, err := fromAddr(src).Dial("tcp", addr)
	if err != nil {
		t.Errorf("SOCKS5 from %s: %v", src, err)
		return "error"
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fail := func(what string, err error) string {
		t.Helper()
		c.Close()
		t.Errorf("SOCKS5 from %s: %s: %v", src, what, err)
		return "error"
	}
	var buf [10]byte
	if _, err := c.Write([]byte{5, 1, 2}); err != nil {
		return fail("greeting", err)
	}
	if _, err := io.ReadFull(c, buf[:2]); err != nil || buf[0] != 5 || buf[1] != 2 {
		return fail(fmt.Sprintf("method selection % x", buf[:2]), err)
	}
	msg := []byte{1, byte(len(backend))}
	msg = append(msg, backend...)
	msg = append(msg, byte(len(key)))
	msg = append(msg, key...)
	if _, err := c.Write(msg); err != nil {
		return fail("authentication", err)
	}
	if _, err := io.ReadFull(c, buf[:2]); err != nil || buf[0] != 1 {
		return fail(fmt.Sprintf("authentication status % x", buf[:2]), err)
	}
	if buf[1] != 0 {
		c.Close()
		return outcomeUnauthenticated
	}
	host, port, _ := net.SplitHostPort(echoTarget)
	p, _ := strconv.Atoi(port)
	msg = append([]byte{5, 1, 0, 3, byte(len(host))}, host...)
	msg = binary.BigEndian.AppendUint16(msg, uint16(p))
	if _, err := c.Write(msg); err != nil {
		return fail("request", err)
	}
	if _, err := io.ReadFull(c, buf[:]); err != nil {
		return fail("reply", err)
	}
	switch buf[1] {
	case 0:
		c.SetDeadline(time.Time{})
		return echoThrough(t, c)
	case 1:
		c.Close()
		return outcomeRateLimited
	}
	c.Close()
	return fmt.Sprintf("reply 0x%02x", buf[1])
}

// wrongKey is an API key of the right form that no backend has.
func wrongKey() string {
	b := make([]byte, 32)
	rand.Read(b)
	return "tbk1_" + base64.RawURLEncoding.EncodeToString(b)
}

// At every front door, wrong API keys from one address are refused
// unauthenticated for a burst of 10, then rate_limited; the same address
// with a valid key still gets through (valid credentials are never
// throttled), another address is not affected, and the three doors share
// the count (they share the credentials). Wrong keys for one backend
// name from many addresses are throttled too, while that backend's valid
// key keeps working. Every refusal is counted by door and reason, and
// audited: one by one for each source's burst, summed beyond.
func TestFrontDoorsThrottleWrongAPIKeys(t *testing.T) {
	r := startThrottleRelay(t)
	start := time.Now()
	refusals := map[string]int{} // door → refused attempts
	throttled := map[string]int{}
	for i, door := range r.doors {
		src := fmt.Sprintf("127.0.0.%d", 11+i)
		guess := "guess-" + door.name
		began := time.Now()
		var got []string
		for range 15 {
			got = append(got, door.try(t, src, guess, wrongKey()))
		}
		n := map[string]int{}
		for _, o := range got {
			n[o]++
		}
		// The burst of 10, and one more attempt for every 5 s the burst
		// took to spend.
		refill := int(time.Since(began) / (5 * time.Second))
		if got[0] != outcomeUnauthenticated || got[14] != outcomeRateLimited || n[outcomeUnauthenticated] < 10 || n[outcomeUnauthenticated] > 10+refill ||
			n[outcomeUnauthenticated]+n[outcomeRateLimited] != 15 {
			t.Errorf("%s: 15 wrong keys from %s answered %v; want 10 unauthenticated, then rate_limited", door.name, src, got)
		}
		refusals[door.name] += 15
		throttled[door.name] += n[outcomeRateLimited]

		// The throttled address, with the valid key: through.
		if o := door.try(t, src, r.billing.Backend, r.billing.APIKey); o != outcomeOK {
			t.Errorf("%s: the valid key from the throttled address %s: %s, want through", door.name, src, o)
		}
		// Another address: through with the valid key, and a wrong key
		// refused as such, not throttled.
		if o := door.try(t, "127.0.0.2", r.billing.Backend, r.billing.APIKey); o != outcomeOK {
			t.Errorf("%s: the valid key from another address: %s, want through", door.name, o)
		}
		if o := door.try(t, "127.0.0.2", "someone", wrongKey()); o != outcomeUnauthenticated {
			t.Errorf("%s: a wrong key from another address: %s, want unauthenticated", door.name, o)
		}
		refusals[door.name]++
	}
	// The doors share the count: the address throttled at the SOCKS5 door
	// is throttled at CONNECT's.
	if o := r.doors[1].try(t, "127.0.0.11", "guess-socks5", wrongKey()); o != outcomeRateLimited {
		t.Errorf("a wrong key at CONNECT from the address throttled at SOCKS5: %s, want rate_limited", o)
	}
	refusals["connect"]++
	throttled["connect"]++

	// A raw CONNECT answer to a throttled address: 429, the code and
	// Retry-After.
	c, err := fromAddr("127.0.0.12").Dial("tcp", r.connectAddr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", echoTarget, echoTarget,
		base64.StdEncoding.EncodeToString([]byte("guess-connect:"+wrongKey())))
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	c.Close()
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Tether-Error") != "rate_limited" || err != nil || ra < 1 {
		t.Errorf("raw CONNECT from a throttled address: %s, Tether-Error %q, Retry-After %q, body %q; want 429 rate_limited with Retry-After",
			resp.Status, resp.Header.Get("Tether-Error"), resp.Header.Get("Retry-After"), body)
	}
	refusals["connect"]++
	throttled["connect"]++

	// Wrong keys for billing from twelve addresses, one each: the name is
	// throttled after its burst, and billing's valid key still works.
	var byName []string
	for i := range 12 {
		byName = append(byName, r.doors[1].try(t, fmt.Sprintf("127.0.1.%d", i+1), "billing", wrongKey()))
	}
	if byName[0] != outcomeUnauthenticated || byName[11] != outcomeRateLimited {
		t.Errorf("wrong keys for billing from twelve addresses: %v; want unauthenticated, then rate_limited", byName)
	}
	for _, o := range byName {
		if o == outcomeRateLimited {
			throttled["connect"]++
		}
	}
	refusals["connect"] += len(byName)
	if o := r.doors[1].try(t, "127.0.1.12", "billing", r.billing.APIKey); o != outcomeOK {
		t.Errorf("billing's valid key while its name is throttled: %s, want through", o)
	}

	for door, n := range refusals {
		if got := metricSum(t, r.metricsURL, "tether_auth_refusals_total", `door="`+door+`"`); got != float64(n) {
			t.Errorf("tether_auth_refusals_total{door=%q} = %v, want %d", door, got, n)
		}
		if got := metricSum(t, r.metricsURL, "tether_auth_refusals_total", `door="`+door+`"`, `reason="throttled"`); got != float64(throttled[door]) {
			t.Errorf("tether_auth_refusals_total{door=%q,reason=throttled} = %v, want %d", door, got, throttled[door])
		}
	}

	// Stopped, the relay writes the sums of the interval. Each source's
	// first refusals are audited one by one, the rest summed: together
	// they count every refusal, door by door, with the names claimed.
	if err := r.stop(30 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	audited := map[string]int{}
	names := map[string]bool{}
	for _, rec := range auditRecords(t, r.relayProc, "--kind", "auth.refused") {
		d, _ := rec["detail"].(map[string]any)
		door, _ := d["door"].(string)
		n, _ := d["count"].(float64)
		audited[door] += int(n)
		ids, _ := d["identities"].([]any)
		for _, id := range ids {
			names[fmt.Sprint(id)] = true
		}
	}
	one := map[string]int{}
	for _, rec := range auditRecords(t, r.relayProc, "--kind", "stream") {
		if rec["actor"] != "unauthenticated" {
			continue
		}
		d, _ := rec["detail"].(map[string]any)
		door, _ := d["door"].(string)
		audited[door]++
		host, _, _ := net.SplitHostPort(fmt.Sprint(d["remote"]))
		one[host]++
		names[fmt.Sprint(d["claimed_backend"])] = true
	}
	for door, n := range refusals {
		if audited[door] != n {
			t.Errorf("the audit trail of door %s counts %d refusals, want %d", door, audited[door], n)
		}
	}
	for _, name := range []string{"guess-socks5", "guess-connect", "guess-connect-tls", "billing"} {
		if !names[name] {
			t.Errorf("no audit record names %q (%v)", name, names)
		}
	}
	// One by one: at most the burst of each source (and one more for each
	// 5 s the test took).
	for remote, n := range one {
		if limit := 10 + int(time.Since(start)/(5*time.Second)); n > limit {
			t.Errorf("%d refusals from %s audited one by one, want at most %d", n, remote, limit)
		}
	}
}

// A flood of 10 000 wrong API keys at the CONNECT door from one address:
// after the burst every answer is rate_limited, while another address's
// valid requests all go through with their latency; the audit trail
// grows by the burst's records and a handful of summed ones, which
// together count every attempt, and the metric counts them all.
func TestFrontDoorFloodKeepsTheAuditTrailBounded(t *testing.T) {
	r := startThrottleRelay(t)
	auditFile := filepath.Join(r.dataDir, "audit.log")
	connect := r.doors[1]
	var baseline []time.Duration
	for range 20 {
		start := time.Now()
		if o := connect.try(t, "127.0.0.2", r.billing.Backend, r.billing.APIKey); o != outcomeOK {
			t.Fatalf("valid key before the flood: %s", o)
		}
		baseline = append(baseline, time.Since(start))
	}
	// A stream's record is written as it ends, after its client has
	// gone: the set-up's stream and the 20 above are all in the file
	// before the lines are counted, so that every stream record after
	// them is a valid request's during the flood.
	for deadline := time.Now().Add(20 * time.Second); okStreamRecords(t, auditFile) < 21; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d stream records in the audit file 20 s after 21 streams ended", okStreamRecords(t, auditFile))
		}
	}
	linesBefore := countLines(t, auditFile)

	const attempts, workers = 10000, 8
	var mu sync.Mutex
	outcomes := map[string]int{}
	var wg sync.WaitGroup
	done := make(chan struct{})
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for i := w; i < attempts; i += workers {
				id := make([]byte, 4)
				rand.Read(id)
				o := connect.try(t, "127.0.0.1", "guess-"+hex.EncodeToString(id), wrongKey())
				mu.Lock()
				outcomes[o]++
				mu.Unlock()
			}
		})
	}
	var during []time.Duration
	refused, valid := 0, 0
	operatorDone := make(chan struct{})
	go func() {
		defer close(operatorDone)
		tick := time.NewTicker(20 * time.Millisecond) // pacing the valid requests, not waiting on anything
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			s := time.Now()
			if o := connect.try(t, "127.0.0.2", r.billing.Backend, r.billing.APIKey); o != outcomeOK {
				refused++
			}
			valid++
			during = append(during, time.Since(s))
		}
	}()
	wg.Wait()
	elapsed := time.Since(start)
	close(done)
	<-operatorDone

	t.Logf("%d wrong keys in %v (%.0f/s): %v; the other address's valid requests: %d, p50 %v p90 %v (before the flood p50 %v p90 %v)",
		attempts, elapsed.Round(time.Millisecond), attempts/elapsed.Seconds(), outcomes, len(during),
		percentile(during, .5), percentile(during, .9), percentile(baseline, .5), percentile(baseline, .9))
	// The burst (10), one more attempt every 5 s, and the attempts of
	// the workers already past the check when the burst ran out.
	if maxFailures := 10 + int(elapsed/(5*time.Second)) + workers; outcomes[outcomeUnauthenticated] > maxFailures ||
		outcomes[outcomeUnauthenticated]+outcomes[outcomeRateLimited] != attempts {
		t.Errorf("outcomes %v; want at most %d unauthenticated and the rest rate_limited", outcomes, maxFailures)
	}
	if refused > 0 || valid == 0 {
		t.Errorf("the other address's valid requests: %d of %d refused", refused, valid)
	}
	if p90, limit := percentile(during, .9), 10*percentile(baseline, .9)+250*time.Millisecond; p90 > limit {
		t.Errorf("the other address's p90 latency during the flood %v, over %v", p90, limit)
	}
	if n := metricSum(t, r.metricsURL, "tether_auth_refusals_total", `door="connect"`); n != attempts {
		t.Errorf("tether_auth_refusals_total{door=connect} = %v, want %d", n, attempts)
	}

	// Stopped, the relay writes the sums of the interval in progress.
	if err := r.stop(30 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	raw, err := os.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")[linesBefore:]
	kinds := map[string]int{}
	total, streams := 0, 0
	for _, line := range lines {
		var rec struct {
			Kind, Outcome, Actor string
			Detail               struct {
				Door, Source, Remote string
				Count                int
			}
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		switch {
		case rec.Kind == "auth.refused":
			if rec.Detail.Door != "connect" || rec.Detail.Source != "127.0.0.1" {
				t.Errorf("a summary of door %s, source %s: only 127.0.0.1 failed, at CONNECT", rec.Detail.Door, rec.Detail.Source)
			}
			total += rec.Detail.Count
		case rec.Kind == "stream" && rec.Actor == "unauthenticated":
			if h, _, _ := net.SplitHostPort(rec.Detail.Remote); h != "127.0.0.1" {
				t.Errorf("a refusal of %s audited: only 127.0.0.1 failed", rec.Detail.Remote)
			}
			total++
			kinds["stream (refused one by one)"]++
			continue
		case rec.Kind == "stream" && rec.Outcome == "ok":
			streams++ // the valid requests' streams
			continue
		}
		kinds[rec.Kind]++
	}
	refusalRecords := kinds["auth.refused"] + kinds["stream (refused one by one)"]
	t.Logf("the audit trail grew by %d lines for %d refused attempts and %d valid requests: %d about refusals (%v), %d streams",
		len(lines), attempts, valid, refusalRecords, kinds, streams)
	// One by one: the burst of 10 and one more every 5 s. Summed: two
	// reasons (bad_key, throttled), at most two records each per
	// one-minute interval, 8 if the flood straddles the end of one. At
	// most 20 for a flood of under half a minute.
	bound := 10 + int(elapsed/(5*time.Second)) + 4*(int(elapsed/time.Minute)+2)
	if elapsed < 30*time.Second {
		bound = 20
	}
	if refusalRecords > bound {
		t.Errorf("%d audit records about %d refused attempts; want at most %d", refusalRecords, attempts, bound)
	}
	if total != attempts {
		t.Errorf("the audit records count %d refused attempts, want %d", total, attempts)
	}
	if other := len(lines) - streams - refusalRecords; other > 5 || streams > valid {
		t.Errorf("the audit trail grew by %d records besides those about refusals, and %d stream records for %d valid requests: %v", other, streams, valid, kinds)
	}
}

// okStreamRecords counts the records of streams that opened in the audit
// file at path.
func okStreamRecords(t *testing.T, path string) int {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for line := range strings.SplitSeq(strings.TrimSpace(string(raw)), "\n") {
		var rec struct{ Kind, Outcome string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Kind == "stream" && rec.Outcome == "ok" {
			n++
		}
	}
	return n
}
