//go:build linux

package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/relay/client"
	"github.com/tetherhq/tether/test/internal/e2e"
)

// env is one test's topology, its impairing router, a relay in the root
// namespace (with its default heartbeat, 10 s) and a backend allowed to
// reach every tenant of the relay.
type env struct {
	tp      *topology
	router  *router
	relay   *e2e.Relay
	backend *client.Dialer
}

// newEnv builds the topology, starts the router without impairment and
// the relay, and adds tenants.
func newEnv(t *testing.T, tenants ...string) *env {
	t.Helper()
	e := &env{tp: newTopology(t)}
	e.router = startRouter(t, e.tp)
	e.relay = e2e.StartRelay(t, bins.Relay, e2e.RelayOptions{AgentHost: e.tp.relayIP.String()})
	for _, tn := range tenants {
		e.relay.AddTenant(t, tn)
	}
	e.backend = e.relay.Backend(t, "backend", "*")
	return e
}

// startAgent enrols an agent of tenant from the agent namespace (through
// the router) and runs it there.
func (e *env) startAgent(t *testing.T, tenant string, o e2e.AgentOptions) *e2e.Agent {
	t.Helper()
	o.Wrap = wrap(e.tp.agent)
	stateDir, id := e2e.Enroll(t, o.Wrap, bins.Agent, e.relay.AgentAddr, e.relay.Token(t, tenant))
	return e2e.RunAgent(t, bins.Agent, stateDir, id, e.relay.AgentAddr, o)
}

// httpService serves h on the services' side of the agent's LAN and
// returns its address; it stops when the test ends.
func (e *env) httpService(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(e.tp.lanIP.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ln) })
	t.Cleanup(func() {
		srv.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// hello answers every request with name.
func hello(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, name)
	})
}

// endless answers with a body of a gigabyte, sent 16 KiB every 10 ms,
// until the client goes or the server closes: a long download that a
// dead path interrupts.
var endless = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Length", fmt.Sprint(1<<30))
	chunk := make([]byte, 16<<10)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := w.Write(chunk); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
	}
})

// get asks for http://service.tenant.tether/ through the relay on a new
// tunnel and returns the body.
func (e *env) get(ctx context.Context, service, tenant string) (string, error) {
	tr := &http.Transport{DialContext: e.backend.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+service+"."+tenant+".tether/", nil)
	if err != nil {
		return "", err
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// download is a download from the endless service through the relay,
// read by a goroutine until it ends.
type download struct {
	body  io.ReadCloser
	ended chan ended // the read's end, once
	wg    sync.WaitGroup
}

// ended is how and when a download ended: err is never nil, since the
// body is endless.
type ended struct {
	at  time.Time
	err error
}

// startDownload starts a download of service of tenant and waits for its
// first 64 KiB; a cleanup stops it.
func (e *env) startDownload(t *testing.T, service, tenant string) *download {
	t.Helper()
	tr := &http.Transport{DialContext: e.backend.DialContext, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	req, err := http.NewRequest("GET", "http://"+service+"."+tenant+".tether/", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("start a download through the tunnel: %v", err)
	}
	d := &download{body: resp.Body, ended: make(chan ended, 1)}
	first := make(chan struct{})
	d.wg.Go(func() {
		buf := make([]byte, 32<<10)
		var n int64
		started := first
		for {
			k, err := resp.Body.Read(buf)
			n += int64(k)
			if n >= 64<<10 && started != nil {
				close(started)
				started = nil
			}
			if err != nil {
				if err == io.EOF {
					err = fmt.Errorf("clean end after %d bytes of a %d-byte body: %w", n, 1<<30, io.ErrUnexpectedEOF)
				}
				d.ended <- ended{time.Now(), err}
				return
			}
		}
	})
	t.Cleanup(func() {
		d.body.Close()
		d.wg.Wait()
	})
	select {
	case <-first:
	case end := <-d.ended:
		t.Fatalf("the download ended before 64 KiB: %v", end.err)
	case <-time.After(20 * time.Second):
		t.Fatal("no 64 KiB of the download within 20 s")
	}
	return d
}

// count is how many times the output of p holds s.
func count(p *e2e.Proc, s string) int { return strings.Count(p.Output(), s) }

// loggedAt is when p logged the line holding s for the (n+1)-th time,
// from the line's own "time" field (the processes log JSON), so that
// when a test looks does not change what it measures.
func loggedAt(p *e2e.Proc, s string, n int) (time.Time, bool) {
	for line := range strings.Lines(p.Output()) {
		if !strings.Contains(line, s) {
			continue
		}
		if n--; n >= 0 {
			continue
		}
		var rec struct {
			Time time.Time `json:"time"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			return time.Time{}, false
		}
		return rec.Time, true
	}
	return time.Time{}, false
}

// waitLogged waits up to limit after from for p to log s for the (n+1)-th
// time and returns how long after from it did; ok is false if it did not.
func waitLogged(p *e2e.Proc, s string, n int, from time.Time, limit time.Duration) (time.Duration, bool) {
	if _, ok := waitFor(from, limit, func() bool { return count(p, s) > n }); !ok {
		return 0, false
	}
	at, ok := loggedAt(p, s, n)
	if !ok {
		return 0, false
	}
	return at.Sub(from), true
}

// waitFor polls cond every 20 ms until it holds or limit has passed since
// from; it returns when it held (relative to from) and whether it did.
// The processes' output has no event to wait on, hence the polling.
func waitFor(from time.Time, limit time.Duration, cond func() bool) (time.Duration, bool) {
	for {
		if cond() {
			return time.Since(from), true
		}
		if time.Since(from) > limit {
			return time.Since(from), false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Log messages the tests wait for.
const (
	msgConnected = `"msg":"connected to relay"`
	msgLost      = `"msg":"connection to relay lost; reconnecting"`
)

var statusAddrRE = regexp.MustCompile(`"msg":"status listener up".*?"addr":"([^"]+)"`)

// status runs tether-agent status against a's status listener (in the
// agent namespace) and decodes its JSON.
func (e *env) status(t *testing.T, a *e2e.Agent) agent.Status {
	t.Helper()
	m := statusAddrRE.FindStringSubmatch(a.Output())
	if m == nil {
		t.Fatalf("the agent logged no status listener address:\n%s", a.Output())
	}
	out := e2e.MustRun(t, append(wrap(e.tp.agent), bins.Agent, "status", "--addr", m[1], "-o", "json")...)
	var st agent.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("tether-agent status -o json: %v\n%s", err, out)
	}
	return st
}

// dialResult is one stream open through the relay.
type dialResult struct {
	at   time.Duration // after the fault began
	took time.Duration
	body string
	err  error
}

func (d dialResult) String() string {
	if d.err != nil {
		return fmt.Sprintf("at %v: failed after %v: %v", d.at.Round(10*time.Millisecond), d.took.Round(10*time.Millisecond), d.err)
	}
	return fmt.Sprintf("at %v: %q in %v", d.at.Round(10*time.Millisecond), d.body, d.took.Round(10*time.Millisecond))
}

// timedGet is get with a limit, timed from the fault's beginning.
func (e *env) timedGet(since time.Time, limit time.Duration, service, tenant string) dialResult {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	start := time.Now()
	body, err := e.get(ctx, service, tenant)
	return dialResult{at: start.Sub(since), took: time.Since(start), body: body, err: err}
}
