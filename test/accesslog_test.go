package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/agent/accesslog"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay"
	"github.com/tetherhq/tether/relay/client"
)

// accessLogLines reads an agent's access log with tether-agent access-log
// -o json: the stream lines, oldest first.
func accessLogLines(t *testing.T, a *agentProc, args ...string) []accesslog.Entry {
	t.Helper()
	out := mustRun(t, bins.agent, append([]string{"access-log", "--config", a.config, "-o", "json"}, args...)...)
	var es []accesslog.Entry
	for _, line := range strings.Split(out, "\n") {
		if line == "" {
			continue
		}
		var e accesslog.Entry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("access-log line %q: %v", line, err)
		}
		if e.Type == accesslog.TypeStream {
			es = append(es, e)
		}
	}
	return es
}

// verifyAccessLog runs tether-agent access-log --verify -o json and
// returns its result and exit status.
func verifyAccessLog(t *testing.T, args ...string) (accesslog.Result, int) {
	t.Helper()
	stdout, stderr, err := runCmd(t, bins.agent, append([]string{"access-log", "--verify", "-o", "json"}, args...)...)
	code := 0
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var res accesslog.Result
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("access-log --verify (exit %d): %v\nstdout: %s\nstderr: %s", code, err, stdout, stderr)
	}
	return res, code
}

// streamAudit waits until the relay's audit trail holds at least n stream
// records of tenant that count says to count, and returns them all; more
// are more flags of tether-relay audit (e.g. --since).
func streamAudit(t *testing.T, dataDir, tenant string, n int, count func(map[string]any) bool, more ...string) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out := mustRun(t, bins.relay, append([]string{"audit", "-o", "json", "--kind", "stream", "--tenant", tenant, "--data-dir", dataDir}, more...)...)
		var recs []map[string]any
		counted := 0
		for _, line := range strings.Split(out, "\n") {
			if line == "" {
				continue
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("audit line %q: %v", line, err)
			}
			recs = append(recs, m)
			if count(m) {
				counted++
			}
		}
		if counted >= n {
			return recs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d stream audit records of %s after 20s, want %d: %v", counted, tenant, n, recs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// agentOutcome counts the stream records whose outcome the agent decided
// (served, or refused by the agent).
func agentOutcome(rec map[string]any) bool {
	switch rec["outcome"] {
	case "ok", "not_allowed", "unknown_service", "target_unreachable":
		return true
	}
	return false
}

func detail(rec map[string]any, key string) any {
	d, _ := rec["detail"].(map[string]any)
	return d[key]
}

// TestAccessLogMatchesRelayAudit: streams allowed and refused by a real
// agent over QUIC and over TCP each get a line in the agent's access
// log that matches the relay's audit record of the same stream; the log
// verifies; and verify finds an edited, a removed, two swapped lines and
// a truncated file at the right line.
func TestAccessLogMatchesRelayAudit(t *testing.T) {
	for _, tr := range []string{"quic", "tcp"} {
		t.Run(tr, func(t *testing.T) { testAccessLogMatchesRelayAudit(t, tr) })
	}
}

func testAccessLogMatchesRelayAudit(t *testing.T, transport string) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	billing := r.backend(t, "billing", "acme")
	other := r.backend(t, "other", "acme")
	echoAddr := tcpService(t, echo)
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "tenant page\n") }))
	t.Cleanup(web.Close)
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := closed.Addr().String()
	closed.Close()
	a := startAgent(t, r, "acme", agentOpts{transport: transport,
		services: map[string]string{"echo": echoAddr, "web": web.Listener.Addr().String(), "dead": deadAddr},
		backends: map[string][]string{"echo": {"billing"}},
	})

	// Allowed: an echo over a raw connection, and an HTTP request.
	c := waitDial(t, billing, "echo.acme.tether:7", 10*time.Second)
	echoReq := c.(*client.Conn).RequestID
	echoOnce(t, c, "hello through the tunnel")
	c.Close()
	hc := &http.Client{Transport: &http.Transport{DialContext: billing.DialContext, DisableKeepAlives: true}, Timeout: 20 * time.Second}
	resp, err := hc.Get("http://web.acme.tether/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "tenant page\n" {
		t.Fatalf("GET through the tunnel: %q", body)
	}
	hc.CloseIdleConnections()
	// Refused by the agent: a backend its config does not allow, a
	// service it does not have, a service that is down.
	for _, tc := range []struct {
		d    *client.Dialer
		addr string
		want error
	}{
		{other, "echo.acme.tether:7", client.ErrNotAllowed},
		{billing, "nosuch.acme.tether:80", client.ErrUnknownService},
		{billing, "dead.acme.tether:80", client.ErrTargetUnreachable},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		c, err := tc.d.DialContext(ctx, "tcp", tc.addr)
		cancel()
		if err == nil {
			c.Close()
			t.Fatalf("dial %s as %s: accepted, want %v", tc.addr, tc.d.Backend, tc.want)
		}
		if !errors.Is(err, tc.want) {
			t.Fatalf("dial %s as %s: %v, want %v", tc.addr, tc.d.Backend, err, tc.want)
		}
	}
	recs := streamAudit(t, r.dataDir, "acme", 5, agentOutcome)
	// A clean stop writes every line and ends the log with a checkpoint.
	if err := a.stop(20 * time.Second); err != nil {
		t.Fatalf("agent stop: %v", err)
	}

	lines := accessLogLines(t, a)
	if len(lines) != 5 {
		t.Fatalf("%d stream lines in the access log, want 5: %+v", len(lines), lines)
	}
	// The sessions the relay admitted for the agent (agent.connect).
	sessions := map[string]bool{}
	for _, rec := range auditRecords(t, r, "--kind", "agent.connect", "--tenant", "acme") {
		if s, _ := detail(rec, "session").(string); rec["outcome"] == "ok" && rec["agent"] == a.id && s != "" {
			sessions[s] = true
		}
	}
	// Every record, stream or refusal, carries the request id the relay
	// sent the agent: the two sides match one to one by it.
	byRequest := map[string]map[string]any{}
	for _, rec := range recs {
		req, _ := detail(rec, "request").(string)
		if req == "" {
			t.Errorf("audit record without a request id: %v", rec)
			continue
		}
		byRequest[req] = rec
	}
	sawEcho := false
	for _, l := range lines {
		if l.Code == "ok" {
			rec, ok := byRequest[l.Request]
			if !ok {
				t.Errorf("access log line of request %q (%s): no audit record of that request at the relay; audit: %v", l.Request, l.Service, recs)
				continue
			}
			if rec["outcome"] != "ok" || detail(rec, "service") != l.Service || rec["actor"] != l.Backend || rec["agent"] != a.id ||
				detail(rec, "bytes_to_service") != float64(l.BytesToService) || detail(rec, "bytes_from_service") != float64(l.BytesFromService) {
				t.Errorf("request %s: agent's line %+v, relay's record %v: they disagree", l.Request, l, rec)
			}
			if l.End != accesslog.EndClosed || l.BytesToService == 0 || l.BytesFromService == 0 {
				t.Errorf("request %s: %+v, want a clean end with bytes both ways", l.Request, l)
			}
			sawEcho = sawEcho || (l.Request == echoReq && l.Service == "echo")
			continue
		}
		rec, ok := byRequest[l.Request]
		if !ok || rec["outcome"] != l.Code || detail(rec, "service") != l.Service || rec["actor"] != l.Backend {
			t.Errorf("refusal %+v in the access log: the relay's record of request %q is %v, want the same refusal", l, l.Request, rec)
			continue
		}
		if l.End != accesslog.EndRefused || l.Request == "" || l.Message == "" {
			t.Errorf("refusal %+v: want end refused, the relay's request id and a message", l)
		}
		// The relay's record names the agent that refused and its
		// session, as the agent's line does, and as the record of a
		// stream it opened would: a session the relay admitted for it.
		if sess := detail(rec, "session"); rec["agent"] != a.id || sess != l.Session || !sessions[l.Session] {
			t.Errorf("refusal %s of request %s: the relay's record names agent %v, session %v; want agent %s and the session of the agent's line, %q, one of the sessions the relay admitted for it %v",
				l.Code, l.Request, rec["agent"], sess, a.id, l.Session, sessions)
		}
	}
	if !sawEcho {
		t.Errorf("no line for the echo stream, request %s (the id the relay answered the CONNECT with)", echoReq)
	}
	for _, code := range []string{"not_allowed", "unknown_service", "target_unreachable"} {
		n := 0
		for _, l := range lines {
			if l.Code == code {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d lines with code %s, want 1", n, code)
		}
	}
	if got := accessLogLines(t, a, "--service", "echo", "--backend", "billing"); len(got) != 1 || got[0].Request != echoReq {
		t.Errorf("access-log --service echo --backend billing: %+v, want the echo stream only", got)
	}

	fp, err := agent.LogKeyFingerprint(a.stateDir)
	if err != nil {
		t.Fatalf("the enrolled agent's access log key: %v", err)
	}
	res, code := verifyAccessLog(t, "--config", a.config)
	if code != 0 || !res.Intact || !res.CleanStop || res.Checkpoints == 0 || res.Verified != res.Checkpoints || res.Pinned != fp || res.KeyLines == 0 || res.CAOnly != 0 {
		t.Fatalf("verify: exit %d, %+v; want 0, intact, ending with the checkpoint of a clean stop, every checkpoint verified with the state directory's log key %s", code, res, fp)
	}
	// A copy anywhere, against the fingerprint the tenant recorded; and
	// without it, the key the log starts from, not pinned.
	copyDir := t.TempDir()
	b, err := os.ReadFile(filepath.Join(a.stateDir, "access-log", "access.log"))
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(copyDir, "access.log")
	if err := os.WriteFile(copyPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if res, code := verifyAccessLog(t, "--file", copyPath, "--key", fp); code != 0 || !res.Intact || res.Pinned != fp {
		t.Fatalf("verify --file COPY --key %s: exit %d, %+v", fp, code, res)
	}
	if res, code := verifyAccessLog(t, "--file", copyPath); code != 0 || !res.Intact || res.Pinned != "" || res.FirstKey != fp {
		t.Fatalf("verify --file COPY: exit %d, %+v; want intact, not pinned, from %s", code, res, fp)
	}
	if res, code := verifyAccessLog(t, "--file", copyPath, "--key", strings.Repeat("0", 64)); code != 1 || res.Intact || res.Problem.Kind != accesslog.ProblemKey {
		t.Fatalf("verify --file COPY --key (another): exit %d, %+v; want exit 1, a key problem", code, res)
	}
	testAccessLogTampering(t, a)
}

// testAccessLogTampering edits copies of the agent's (stopped) log and
// checks that verify reports each change at its line.
func testAccessLogTampering(t *testing.T, a *agentProc) {
	path := filepath.Join(a.stateDir, "access-log", "access.log")
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSuffix(orig, []byte("\n")), []byte("\n"))
	if len(lines) < 7 { // start, 5 streams, checkpoint
		t.Fatalf("access log has %d lines, want at least 7", len(lines))
	}
	join := func(ls [][]byte) []byte { return append(bytes.Join(ls, []byte("\n")), '\n') }
	clone := func() [][]byte {
		out := make([][]byte, len(lines))
		for i := range lines {
			out[i] = bytes.Clone(lines[i])
		}
		return out
	}
	for _, tc := range []struct {
		name string
		data func() []byte
		kind string
		line int
	}{
		{"edited line", func() []byte {
			ls := clone()
			ls[2] = bytes.Replace(ls[2], []byte(`"backend":"backend:`), []byte(`"backend":"backend:x`), 1)
			return join(ls)
		}, accesslog.ProblemAltered, 3},
		{"removed line", func() []byte {
			ls := clone()
			return join(append(ls[:2], ls[3:]...))
		}, accesslog.ProblemRemoved, 3},
		{"two lines swapped", func() []byte {
			ls := clone()
			ls[2], ls[3] = ls[3], ls[2]
			return join(ls)
		}, accesslog.ProblemReordered, 3},
		{"truncated file", func() []byte {
			return append(join(lines[:3]), lines[3][:len(lines[3])/2]...)
		}, accesslog.ProblemTruncated, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			copyPath := filepath.Join(t.TempDir(), "access.log")
			if err := os.WriteFile(copyPath, tc.data(), 0o600); err != nil {
				t.Fatal(err)
			}
			res, code := verifyAccessLog(t, "--config", a.config, "--file", copyPath)
			if code != 1 || res.Intact || res.Problem == nil {
				t.Fatalf("verify: exit %d, %+v; want exit 1 with a problem", code, res)
			}
			if p := res.Problem; p.Kind != tc.kind || p.File != "access.log" || p.Line != tc.line {
				t.Fatalf("verify: %v, want %s at access.log:%d", p, tc.kind, tc.line)
			}
		})
	}
	// The original still verifies: the copies were edited, not the log.
	if res, code := verifyAccessLog(t, "--config", a.config); code != 0 || !res.Intact {
		t.Fatalf("verify of the untouched log: exit %d, %+v", code, res)
	}
	// The same, in YAML and as text; and the log itself in YAML: the lines
	// that -o json prints, as a list.
	var ys map[string]any
	if err := yaml.Unmarshal([]byte(mustRun(t, bins.agent, "access-log", "--verify", "-o", "yaml", "--config", a.config)), &ys); err != nil || ys["intact"] != true || ys["lines"] != len(lines) {
		t.Errorf("access-log --verify -o yaml: %v, %v; want intact, %d lines", ys, err, len(lines))
	}
	if text := mustRun(t, bins.agent, "access-log", "--verify", "--config", a.config); !strings.Contains(text, fmt.Sprintf("intact: %d lines", len(lines))) {
		t.Errorf("access-log --verify:\n%s", text)
	}
	var items []map[string]any
	if err := yaml.Unmarshal([]byte(mustRun(t, bins.agent, "access-log", "-o", "yaml", "--config", a.config)), &items); err != nil || len(items) != len(lines) {
		t.Fatalf("access-log -o yaml: %d items (%v), want the %d lines", len(items), err, len(lines))
	}
	for i, line := range lines {
		var e map[string]any
		if err := json.Unmarshal(line, &e); err != nil || e["type"] != items[i]["type"] || fmt.Sprint(e["seq"]) != fmt.Sprint(items[i]["seq"]) {
			t.Errorf("access-log -o yaml item %d: %v, want line %s", i, items[i], line)
		}
	}
	// Usage errors exit with 2.
	for _, args := range [][]string{{"-o", "xml"}, {"--since", "1h"}, {"--service", "echo"}} {
		if _, _, err := runCmd(t, bins.agent, append([]string{"access-log", "--verify", "--config", a.config}, args...)...); exitCode(err) != 2 {
			t.Errorf("access-log --verify %s: %v, want exit status 2", strings.Join(args, " "), err)
		}
	}
}

func exitCode(err error) int {
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// TestAccessLogRotation: with a tiny rotation size the log spans many
// files, the chain runs across them and across a restart of the agent,
// and access-log prints every stream, oldest first.
func TestAccessLogRotation(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	billing := r.backend(t, "billing", "acme")
	a := startAgent(t, r, "acme", agentOpts{transport: "tcp", services: map[string]string{"echo": tcpService(t, echo)},
		extra: "access_log: {max_size: 2KiB, max_files: 1000}\n"})
	var want []string
	dial := func(n int) {
		for i := range n {
			c := waitDial(t, billing, "echo.acme.tether:7", 10*time.Second)
			want = append(want, c.(*client.Conn).RequestID)
			echoOnce(t, c, fmt.Sprintf("line %d", i))
			c.Close()
		}
	}
	dial(20)
	streamAudit(t, r.dataDir, "acme", 20, agentOutcome)
	if err := a.stop(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	a.restart()
	a.waitOutput(`"msg":"connected to relay"`, 20*time.Second)
	dial(5)
	streamAudit(t, r.dataDir, "acme", 25, agentOutcome)
	if err := a.stop(20 * time.Second); err != nil {
		t.Fatal(err)
	}

	res, code := verifyAccessLog(t, "--config", a.config)
	if code != 0 || !res.Intact || res.Follows != accesslog.Genesis {
		t.Fatalf("verify: exit %d, %+v; want intact from the start of the chain", code, res)
	}
	if len(res.Files) < 4 || res.Checkpoints < len(res.Files) || res.Verified != res.Checkpoints {
		t.Fatalf("verify: %d files, %d checkpoints (%d verified); want several files, each closed by a verified checkpoint", len(res.Files), res.Checkpoints, res.Verified)
	}
	var got []string
	for _, l := range accessLogLines(t, a) {
		got = append(got, l.Request)
	}
	// Oldest first: the streams of the first run, then those of the
	// second. Within a run, lines follow the order in which the agent saw
	// streams end, which back-to-back streams may swap.
	sorted := func(s []string) string { return strings.Join(slices.Sorted(slices.Values(s)), " ") }
	if len(got) != len(want) || sorted(got[:20]) != sorted(want[:20]) || sorted(got[20:]) != sorted(want[20:]) {
		t.Fatalf("access-log requests:\n%v\nwant the 20 streams of the first run, then the 5 of the second:\n%v", got, want)
	}
}

// TestAccessLogRequiredRefusesStreams: an agent whose access log cannot
// be written and that has access_log: {required: true} refuses streams as
// unavailable, with a message that reaches the backend; its status and its
// report to the relay say why, and the agent's log says it loudly.
func TestAccessLogRequiredRefusesStreams(t *testing.T) {
	r := startInProcRelay(t)
	r.admin(t, "tenant", "add", "acme")
	key := r.admin(t, "backend", "add", "billing", "--tenants", "acme")
	d := &client.Dialer{Relay: r.ConnectAddr().String(), Backend: "billing", APIKey: key, Timeout: 20 * time.Second}
	blocker := filepath.Join(t.TempDir(), "not-a-directory")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil { // even root cannot make a directory under a file
		t.Fatal(err)
	}
	statusAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	stateDir, id := enroll(t, r.AgentAddr().String(), r.admin(t, "token", "create", "--tenant", "acme"))
	a := runAgent(t, stateDir, id, r.AgentAddr().String(), agentOpts{
		services: map[string]string{"echo": tcpService(t, echo)},
		extra: fmt.Sprintf("access_log: {path: %q, required: true}\nstatus_listen: %q\nreport_interval: 300ms\n",
			filepath.Join(blocker, "access.log"), statusAddr),
	})
	a.waitOutput("access log cannot be written", 10*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", "echo.acme.tether:7")
	if err == nil {
		c.Close()
		t.Fatal("dial: accepted, want the stream refused: the access log cannot be written")
	}
	var ce *client.Error
	if !errors.Is(err, client.ErrUnavailable) || !errors.As(err, &ce) || !strings.Contains(ce.Message, "access log") {
		t.Fatalf("dial: %v, want unavailable with a message about the access log", err)
	}
	if status, code := connectStatus(t, r.ConnectAddr().String(), "billing", key, "echo.acme.tether:7"); status != http.StatusServiceUnavailable || code != protocol.CodeUnavailable.String() {
		t.Fatalf("CONNECT: %d %q, want 503 unavailable", status, code)
	}
	waitReport(t, r, "acme", id, "access_log_error in the report", func(la relay.LiveAgent) bool { return la.Report.AccessLogError != "" })
	out := mustRun(t, bins.agent, "status", "--addr", statusAddr, "-o", "json")
	var st struct {
		AccessLog      string `json:"access_log"`
		AccessLogError string `json:"access_log_error"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if st.AccessLog != filepath.Join(blocker, "access.log") || st.AccessLogError == "" {
		t.Fatalf("status: %s; want the access log's path and its error", out)
	}
	if text := mustRun(t, bins.agent, "status", "--addr", statusAddr); !strings.Contains(text, "access log error") {
		t.Errorf("status: no access log error line in\n%s", text)
	}
}

// TestAccessLogKeepsStreamsCutAtStop: a stream still open when the agent
// is stopped, to a service that never closes its side, ends when the
// agent's drain timeout cuts it; its line is still written, before the
// log's last checkpoint.
func TestAccessLogKeepsStreamsCutAtStop(t *testing.T) {
	const drain = time.Second
	for _, transport := range []string{"tcp", "quic"} {
		t.Run(transport, func(t *testing.T) {
			r := startRelay(t, relayOpts{})
			r.addTenant(t, "acme")
			d := r.backend(t, "billing", "acme")
			svc, got, _ := holdingService(t)
			a := startAgent(t, r, "acme", agentOpts{transport: transport, services: map[string]string{"hold": svc},
				extra: "drain_timeout: " + drain.String() + "\n"})
			c := waitDial(t, d, "hold.acme.tether:7", 20*time.Second)
			defer c.Close()
			req := c.(*client.Conn).RequestID
			const query = "SELECT 1;\n"
			if _, err := io.WriteString(c, query); err != nil {
				t.Fatal(err)
			}
			select {
			case <-got:
			case <-time.After(10 * time.Second):
				t.Fatal("the service did not receive the query")
			}
			if err := a.stop(drain + 5*time.Second); err != nil {
				t.Fatalf("agent exit after SIGTERM: %v", err)
			}
			lines := accessLogLines(t, a)
			if len(lines) != 1 || lines[0].Request != req || lines[0].Code != "ok" || lines[0].End != accesslog.EndCut || lines[0].BytesToService != int64(len(query)) {
				t.Fatalf("access log: %+v; want one line for request %s, ok, cut at the drain timeout, %d bytes to the service", lines, req, len(query))
			}
			if res, code := verifyAccessLog(t, "--config", a.config); code != 0 || !res.CleanStop {
				t.Fatalf("verify: exit %d, %+v; want intact, ending with the stop checkpoint after the cut stream's line", code, res)
			}
		})
	}
}
