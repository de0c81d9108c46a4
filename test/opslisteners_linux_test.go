package test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// opsAttempt is what became of one connection to an operator listener.
type opsAttempt int

const (
	opsHeld    opsAttempt = iota // answered, and left open and silent
	opsRefused                   // closed by the relay without an answer
	opsStuck                     // no answer in time: the relay did not accept it
)

// holdOps opens a connection from src to addr (over TLS when tlsConf is
// set), sends req and reads the answer's head. A connection answered is
// returned open, to be held idle.
func holdOps(t *testing.T, src, addr string, tlsConf *tls.Config, req string) (net.Conn, opsAttempt) {
	t.Helper()
	c, err := fromAddr(src).Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fail := func(err error) (net.Conn, opsAttempt) {
		c.Close()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, opsStuck
		}
		return nil, opsRefused
	}
	if tlsConf != nil {
		tc := tls.Client(c, tlsConf)
		if err := tc.Handshake(); err != nil {
			return fail(err)
		}
		c = tc
	}
	if _, err := io.WriteString(c, req); err != nil {
		return fail(err)
	}
	br := bufio.NewReader(c)
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return fail(err)
		}
		if l == "\r\n" {
			break
		}
	}
	c.SetDeadline(time.Time{})
	return c, opsHeld
}

// TestOpsListenersBoundIdleConnections: the metrics, admin and download
// listeners of a relay whose process may open 1024 file descriptors hold
// a bounded number of idle connections from one address and in all,
// close the others at accept (counted in tether_listener_refused_total),
// and never take the descriptors a backend's CONNECT needs. A metrics
// connection left idle is closed after 15 s.
func TestOpsListenersBoundIdleConnections(t *testing.T) {
	const fdLimit = 1024
	wrapper := filepath.Join(t.TempDir(), "relay.sh")
	if err := os.WriteFile(wrapper, []byte(fmt.Sprintf("#!/bin/sh\nulimit -n %d || exit 1\nexec %s \"$@\"\n", fdLimit, bins.relay)), 0o755); err != nil {
		t.Fatal(err)
	}
	files := t.TempDir()
	if err := os.WriteFile(filepath.Join(files, "install.sh"), []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := startRelay(t, relayOpts{bin: wrapper, extra: []string{"--metrics-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--download-listen", "127.0.0.1:0", "--download-dir", files}})
	r.addTenant(t, "acme")
	d := r.backend(t, "billing", "acme")
	startAgent(t, r, "acme", agentOpts{services: map[string]string{"echo": tcpService(t, echo)}})
	waitDial(t, d, echoTarget, 15*time.Second).Close()
	addrs := servingAddrs(t, r)
	pid := r.r.Proc.Pid()
	insecure := &tls.Config{InsecureSkipVerify: true} // what is measured is the listener, not its certificate
	listeners := []struct {
		name, addr string
		tls        *tls.Config
		req        string
		perAddress int // its bound per address
	}{
		{"admin", addrs["admin_addr"], insecure, "GET /v1/tenants HTTP/1.1\r\nHost: x\r\n\r\n", 64},
		{"download", addrs["download_addr"], insecure, "GET /install.sh HTTP/1.1\r\nHost: x\r\n\r\n", 64},
		{"metrics", addrs["metrics_addr"], nil, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 16},
	}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	connectWorks := func(when string) {
		t.Helper()
		dd := *d
		dd.Timeout = 5 * time.Second
		c, err := dd.Dial("tcp", echoTarget)
		if err != nil {
			t.Fatalf("a registered backend's CONNECT %s (relay fds %d of %d): %v", when, fdCount(t, pid), fdLimit, err)
		}
		echoThrough(t, c)
	}

	// 1. From one address each: far more connections than the process
	// has descriptors for, held idle.
	var firstMetrics net.Conn
	var metricsOpened time.Time
	for i, l := range listeners {
		src := fmt.Sprintf("127.0.0.%d", 8+i)
		n := map[opsAttempt]int{}
		for range 1100 {
			c, got := holdOps(t, src, l.addr, l.tls, l.req)
			n[got]++
			if c != nil {
				if l.name == "metrics" && firstMetrics == nil {
					firstMetrics, metricsOpened = c, time.Now()
				}
				held = append(held, c)
			}
			if got == opsStuck {
				break
			}
		}
		t.Logf("%s listener, one address: %d held, %d closed at once, %d not accepted; relay fds %d", l.name, n[opsHeld], n[opsRefused], n[opsStuck], fdCount(t, pid))
		if n[opsStuck] > 0 || n[opsHeld] > l.perAddress || n[opsHeld] == 0 {
			t.Fatalf("%s listener: one address held %d idle connections and %d went unanswered, want 1 to %d held and the rest closed at once",
				l.name, n[opsHeld], n[opsStuck], l.perAddress)
		}
	}
	connectWorks("while one address holds the operator listeners' connections")

	// 2. From many networks: each listener holds its total, and the
	// three together at most a quarter of the process's descriptors.
	total := len(held)
	for _, l := range listeners {
		n := map[opsAttempt]int{}
		for i := range 300 {
			c, got := holdOps(t, fmt.Sprintf("127.%d.%d.2", 1+i/200, i%200), l.addr, l.tls, l.req)
			n[got]++
			if c != nil {
				held = append(held, c)
			}
			if got == opsStuck {
				break
			}
		}
		t.Logf("%s listener, 300 networks: %d more held, %d closed at once, %d not accepted; relay fds %d", l.name, n[opsHeld], n[opsRefused], n[opsStuck], fdCount(t, pid))
		if n[opsStuck] > 0 {
			t.Fatalf("%s listener: %d connections from many networks went unanswered (relay fds %d of %d)", l.name, n[opsStuck], fdCount(t, pid), fdLimit)
		}
		total += n[opsHeld]
	}
	if total > fdLimit/4 {
		t.Fatalf("the operator listeners hold %d idle connections, want at most a quarter of the %d descriptors", total, fdLimit)
	}
	connectWorks("while the operator listeners are full")

	// 3. An idle metrics connection is closed after 15 s.
	firstMetrics.SetReadDeadline(metricsOpened.Add(25 * time.Second))
	if _, err := firstMetrics.Read(make([]byte, 1)); err == nil || !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("an idle metrics connection after %v: %v, want it closed after 15 s", time.Since(metricsOpened).Round(time.Second), err)
	}

	// 4. Every refusal was counted, by listener and reason.
	for _, c := range held {
		c.Close()
	}
	held = nil
	metricsURL := "http://" + addrs["metrics_addr"]
	var refused map[string]float64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		// The relay gives a closed connection's slots back once it reads its end.
		if refused = scrapeOnce(metricsURL); refused != nil || time.Now().After(deadline) {
			break
		}
	}
	if refused == nil {
		t.Fatal("/metrics unreachable 10 s after every held connection was closed")
	}
	for _, l := range listeners {
		for _, reason := range []string{"source_limited", "listener_full"} {
			k := fmt.Sprintf(`tether_listener_refused_total{listener=%q,reason=%q}`, l.name, reason)
			if refused[k] == 0 {
				t.Errorf("%s = 0, want the refusals counted", k)
			}
		}
	}
}

// scrapeOnce reads /metrics, or returns nil when it cannot.
func scrapeOnce(metricsURL string) map[string]float64 {
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(metricsURL, "http://"), 5*time.Second)
	if err != nil {
		return nil
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		return nil
	}
	// The body comes in chunks, whose boundaries may fall inside a line:
	// read it as HTTP.
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(raw), "\n") {
		if i := strings.LastIndexByte(line, ' '); i > 0 && strings.HasPrefix(line, "tether_") {
			var v float64
			if _, err := fmt.Sscan(line[i+1:], &v); err == nil {
				out[line[:i]] = v
			}
		}
	}
	return out
}

// fdCount is how many descriptors process pid has open.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
