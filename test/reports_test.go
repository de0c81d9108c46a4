package test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/relay"
	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/client"
)

// inProcRelay is a relay run in the test process, so that the test can
// read what it keeps about live agents (LiveAgents); admin commands run the
// tether-relay binary on the same data directory.
type inProcRelay struct {
	*relay.Relay
	dataDir string
}

func startInProcRelay(t *testing.T) *inProcRelay {
	t.Helper()
	return startInProcRelayWith(t, nil)
}

// startInProcRelayWith is startInProcRelay with the relay's Config
// changed by tune first (when not nil).
func startInProcRelayWith(t *testing.T, tune func(*relay.Config)) *inProcRelay {
	t.Helper()
	dir := t.TempDir()
	cfg := relay.Config{
		DataDir: dir, AgentListen: "127.0.0.1:0", SOCKSListen: relay.Off, ConnectListen: "127.0.0.1:0",
		HeartbeatInterval: time.Second, Logger: slog.New(slog.NewJSONHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if tune != nil {
		tune(&cfg)
	}
	r, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("relay Run: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("relay Run did not return after its context was cancelled")
		}
	})
	return &inProcRelay{Relay: r, dataDir: dir}
}

func (r *inProcRelay) admin(t *testing.T, args ...string) string {
	t.Helper()
	return mustRun(t, bins.relay, append(args, "--data-dir", r.dataDir)...)
}

// tWriter sends the relay's log lines to the test log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// waitReport polls the relay until the report of agent id satisfies ok.
func waitReport(t *testing.T, r *inProcRelay, tenant, id, what string, ok func(relay.LiveAgent) bool) relay.LiveAgent {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last relay.LiveAgent
	for {
		for _, la := range r.LiveAgents(tenant) {
			if la.Agent == id && la.Report != nil {
				last = la
				if ok(la) {
					return la
				}
			}
		}
		if time.Now().After(deadline) {
			rep, _ := json.Marshal(last.Report)
			t.Fatalf("%s: not seen at the relay within 30s; last report: %s", what, rep)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAgentReports runs a real agent against a relay and checks what the
// relay learns from its reports: identity and platform, transport, RTT,
// bytes moved through a real service (while the stream is still open),
// a dial failure to a closed port, a broken config edit and its fix, and
// the certificate expiry. The agent's status listener and tether-agent
// status show the same; the store records when the agent was last seen.
func TestAgentReports(t *testing.T) {
	r := startInProcRelay(t)
	r.admin(t, "tenant", "add", "acme")
	key := r.admin(t, "backend", "add", "billing", "--tenants", "acme")
	d := &client.Dialer{Relay: r.ConnectAddr().String(), Backend: "billing", APIKey: key, Timeout: 20 * time.Second}

	echoAddr := tcpService(t, echo)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := closed.Addr().String()
	closed.Close() // nothing listens there: dials are refused
	statusAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))

	testStart := time.Now()
	stateDir, id := enroll(t, r.AgentAddr().String(), r.admin(t, "token", "create", "--tenant", "acme"))
	a := runAgent(t, stateDir, id, r.AgentAddr().String(), agentOpts{
		services: map[string]string{"echo": echoAddr, "dead": deadAddr},
		extra:    fmt.Sprintf("report_interval: 300ms\nstatus_listen: %q\n", statusAddr),
	})

	// The first report: who and what the agent is.
	la := waitReport(t, r, "acme", id, "a report with an RTT", func(la relay.LiveAgent) bool { return la.Report.RTTMicros > 0 })
	rep := la.Report
	host, _ := os.Hostname()
	hashKey, err := agent.ReadConfigHashKey(stateDir) // made at the agent's first start
	if err != nil {
		t.Fatal(err)
	}
	wantHash := agent.ConfigHash(hashKey, map[string]agent.Service{"echo": {Address: echoAddr}, "dead": {Address: deadAddr}})
	certPair, err := tls.LoadX509KeyPair(filepath.Join(stateDir, "agent.crt"), filepath.Join(stateDir, "agent.key"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"agent_version", rep.AgentVersion, "dev"},
		{"os", rep.OS, runtime.GOOS},
		{"arch", rep.Arch, runtime.GOARCH},
		{"hostname", rep.Hostname, host},
		{"transport", rep.Transport, la.Transport},
		{"transport_why", rep.TransportWhy, "auto: QUIC preferred"},
		{"services", strings.Join(rep.Services, ","), "dead,echo"},
		{"config_hash", rep.ConfigHash, wantHash},
		{"config_error", rep.ConfigError, ""},
		{"cert_not_after", rep.CertNotAfter, certPair.Leaf.NotAfter.UnixMilli()},
		{"streams_total", rep.StreamsTotal, uint64(0)},
	} {
		if c.got != c.want {
			t.Errorf("report %s: got %v, want %v", c.name, c.got, c.want)
		}
	}
	if started := time.UnixMilli(rep.StartedAt); started.Before(testStart.Add(-time.Second)) || started.After(time.Now()) {
		t.Errorf("report started_ms: %v, want between %v and now", started, testStart)
	}
	if la.Transport != "quic" {
		t.Errorf("session transport %q, want quic (auto over loopback)", la.Transport)
	}

	// Bytes through a real service show while the stream is still open.
	const size = 1 << 20
	conn := waitDial(t, d, "echo.acme.tether:7", 20*time.Second)
	defer conn.Close()
	payload := make([]byte, size)
	go conn.Write(payload)
	if _, err := io.ReadFull(conn, make([]byte, size)); err != nil {
		t.Fatalf("read the echo back: %v", err)
	}
	waitReport(t, r, "acme", id, "1 MiB each way on an open stream", func(la relay.LiveAgent) bool {
		return la.Report.BytesOut == size && la.Report.BytesIn == size && la.Report.StreamsOpen == 1 && la.Report.StreamsTotal == 1
	})

	// A dial to the closed port fails and is counted for its service.
	dctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	if c, err := d.DialContext(dctx, "tcp", "dead.acme.tether:1"); err == nil {
		c.Close()
		t.Fatal("dial to a closed port through the agent succeeded")
	}
	cancel()
	la = waitReport(t, r, "acme", id, "a dial failure of service dead", func(la relay.LiveAgent) bool { return la.Report.DialFailures["dead"] == 1 })
	if len(la.Report.DialFailures) != 1 || !strings.Contains(la.Report.LastDialError, `service "dead" refused the connection`) {
		t.Errorf("dial failures %v, last error %q; want only dead, refused", la.Report.DialFailures, la.Report.LastDialError)
	}
	if strings.Contains(la.Report.LastDialError, deadAddr) {
		t.Errorf("last dial error %q names the service's internal address", la.Report.LastDialError)
	}

	// The status listener and tether-agent status say the same.
	out := mustRun(t, bins.agent, "status", "--config", a.config, "-o", "json")
	var st agent.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	if st.AgentID != id || st.Tenant != "acme" || st.BytesOut != size || st.DialFailures["dead"] != 1 || st.ConfigHash != wantHash || len(st.Sessions) != 2 {
		t.Errorf("status: %+v", st)
	}
	for _, s := range st.Sessions {
		if s.State != agent.StateConnected || s.Relay != r.AgentAddr().String() || s.Transport != "quic" || s.TransportWhy == "" || s.SessionID == "" || s.RTTMicros <= 0 || s.Since.IsZero() {
			t.Errorf("status session: %+v", s)
		}
	}
	// -o yaml: the same fields; -o text, the spelling of earlier
	// versions, is the default's table.
	var ys map[string]any
	if err := yaml.Unmarshal([]byte(mustRun(t, bins.agent, "-o", "yaml", "status", "--addr", statusAddr)), &ys); err != nil || ys["agent_id"] != id || ys["tenant"] != "acme" {
		t.Errorf("status -o yaml: %v (%v)", ys, err)
	}
	text := mustRun(t, bins.agent, "status", "--addr", statusAddr)
	if again := mustRun(t, bins.agent, "status", "--addr", statusAddr, "-o", "text"); !strings.Contains(again, id+" (tenant acme)") {
		t.Errorf("status -o text:\n%s", again)
	}
	t.Logf("tether-agent status:\n%s", text)
	for _, want := range []string{id + " (tenant acme)", "certificate", "1048576 to services, 1048576 from services", "dead 1", "connected", "quic (auto: QUIC preferred)"} {
		if !strings.Contains(text, want) {
			t.Errorf("tether-agent status: no %q in\n%s", want, text)
		}
	}

	// A broken config edit shows at the relay, and the fix clears it.
	head := fmt.Sprintf("relays: [%q]\nstate_dir: %q\nreconnect: {initial: 100ms, max: 1s}\nlog: {level: debug, format: json}\nreport_interval: 1h\nstatus_listen: %q\n", r.AgentAddr().String(), stateDir, statusAddr)
	replaceAgentConfig(t, a, head+"services:\n  echo: not-an-address\n", true)
	la = waitReport(t, r, "acme", id, "the config error", func(la relay.LiveAgent) bool { return la.Report.ConfigError != "" })
	if !strings.Contains(la.Report.ConfigError, "does not validate at services") || strings.Contains(la.Report.ConfigError, "not-an-address") || la.Report.ConfigHash != wantHash {
		t.Errorf("config error %q, hash %s; want the setting named, not the bad address (which stays on the agent's machine), and the old services (hash %s) in force", la.Report.ConfigError, la.Report.ConfigHash, wantHash)
	}
	replaceAgentConfig(t, a, head+fmt.Sprintf("services:\n  echo: %q\n", echoAddr), true)
	newHash := agent.ConfigHash(hashKey, map[string]agent.Service{"echo": {Address: echoAddr}})
	la = waitReport(t, r, "acme", id, "the fixed config", func(la relay.LiveAgent) bool {
		return la.Report.ConfigError == "" && la.Report.ConfigHash == newHash
	})
	if !slices.Equal(la.Report.Services, []string{"echo"}) {
		t.Errorf("services after the fix: %v, want [echo]", la.Report.Services)
	}
	conn.Close()

	// The store has when the agent was last seen: written soon after it
	// connected, and again when it leaves.
	lastSeen := func() time.Time {
		var list []admin.AgentInfo
		if err := json.Unmarshal([]byte(r.admin(t, "agent", "list", "-o", "json")), &list); err != nil || len(list) != 1 {
			t.Fatalf("agent list: %v %v", list, err)
		}
		if list[0].LastSeen == nil {
			return time.Time{}
		}
		return *list[0].LastSeen
	}
	waitFor(t, "last seen recorded", func() bool { return !lastSeen().IsZero() })
	if ls := lastSeen(); ls.Before(testStart.Truncate(time.Second)) || ls.After(time.Now()) {
		t.Errorf("last seen %v, want between %v and now", ls, testStart)
	}
	table := r.admin(t, "agent", "list")
	if !strings.Contains(table, "LAST SEEN") || strings.Contains(table, "never") {
		t.Errorf("agent list table:\n%s", table)
	}
	// Last seen has a resolution of a second: leave two between the
	// connect's record and the disconnect.
	atConnect := lastSeen()
	for time.Since(atConnect) < 2*time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	if err := a.stop(10 * time.Second); err != nil {
		t.Logf("agent stop: %v", err)
	}
	waitFor(t, "the agent gone from the relay", func() bool { return len(r.LiveAgents("acme")) == 0 })
	waitFor(t, "last seen moved on at the disconnect", func() bool { return lastSeen().After(atConnect) })
}

// TestAgentReportsAChangeAtOnce: with reports due only hourly, a broken
// config still reaches the relay within seconds (a change is reported a
// second after it happens), and so does its fix.
func TestAgentReportsAChangeAtOnce(t *testing.T) {
	r := startInProcRelay(t)
	r.admin(t, "tenant", "add", "acme")
	echoAddr := tcpService(t, echo)
	stateDir, id := enroll(t, r.AgentAddr().String(), r.admin(t, "token", "create", "--tenant", "acme"))
	a := runAgent(t, stateDir, id, r.AgentAddr().String(), agentOpts{services: map[string]string{"echo": echoAddr}, extra: "report_interval: 1h\n"})
	la := waitReport(t, r, "acme", id, "the first report", func(relay.LiveAgent) bool { return true })
	hash := la.Report.ConfigHash
	if _, stderr, err := runCmd(t, bins.agent, "status", "--config", a.config); err == nil || !strings.Contains(stderr, "has no status_listen") {
		t.Errorf("status of an agent without status_listen: %v, %q; want an error saying so", err, stderr)
	}
	head := fmt.Sprintf("relays: [%q]\nstate_dir: %q\nreconnect: {initial: 100ms, max: 1s}\nlog: {level: debug, format: json}\nreport_interval: 1h\n", r.AgentAddr().String(), stateDir)
	replaceAgentConfig(t, a, head+"services:\n  echo: {address: 127.0.0.1:1, colour: blue}\n", false)
	la = waitReport(t, r, "acme", id, "the config error", func(la relay.LiveAgent) bool { return la.Report.ConfigError != "" })
	if !strings.Contains(la.Report.ConfigError, "does not parse at line") || strings.Contains(la.Report.ConfigError, "colour") || la.Report.ConfigHash != hash {
		t.Errorf("config error %q, hash %s; want the line of the unknown key named (not what the file says there) and the old hash %s", la.Report.ConfigError, la.Report.ConfigHash, hash)
	}
	replaceAgentConfig(t, a, head+fmt.Sprintf("services:\n  echo: %q\n  web: %q\n", echoAddr, echoAddr), true)
	key, err := agent.ReadConfigHashKey(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	want := agent.ConfigHash(key, map[string]agent.Service{"echo": {Address: echoAddr}, "web": {Address: echoAddr}})
	waitReport(t, r, "acme", id, "the fix", func(la relay.LiveAgent) bool { return la.Report.ConfigError == "" && la.Report.ConfigHash == want })
}

// waitFor polls cond for up to 30s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
	}
}
