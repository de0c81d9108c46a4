package agent

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

func TestStatusListenLoopbackOnly(t *testing.T) {
	for cfg, want := range map[string]string{
		"state_dir: /x\nstatus_listen: 0.0.0.0:7456\n":       `status_listen "0.0.0.0:7456": host "0.0.0.0" is not a loopback address`,
		"state_dir: /x\nstatus_listen: 10.1.2.3:7456\n":      "is not a loopback address",
		"state_dir: /x\nstatus_listen: ':7456'\n":            `host "" is not a loopback address`,
		"state_dir: /x\nstatus_listen: example.com:80\n":     "is not a loopback address",
		"state_dir: /x\nstatus_listen: 127.0.0.1\n":          "want host:port",
		"state_dir: /x\nreport_interval: -1s\n":              "report_interval must not be negative",
		"state_dir: /x\nstatus_listen: '[::1]:7456'\nx: 1\n": "field x not found",
	} {
		_, err := ParseConfig([]byte(cfg))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error containing %q", cfg, err, want)
		}
	}
	for _, addr := range []string{"127.0.0.1:7456", "'[::1]:7456'", "localhost:7456"} {
		c, err := ParseConfig([]byte("state_dir: /x\nstatus_listen: " + addr + "\n"))
		if err != nil || c.StatusListen == "" {
			t.Errorf("status_listen %s: got %v, want it accepted", addr, err)
		}
	}
}

func TestConfigHashCanonical(t *testing.T) {
	a, err := ParseConfig([]byte("state_dir: /x\nservices:\n  db: {address: 10.0.0.5:5432, backends: [reports-*, billing]}\n  api: 10.0.0.6:80\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseConfig([]byte("# the same services, other layout\nstate_dir: /y\nservices:\n  api: {address: 10.0.0.6:80}\n  db:\n    address: 10.0.0.5:5432\n    backends: [billing, reports-*]\n"))
	if err != nil {
		t.Fatal(err)
	}
	key := []byte("the agent's key")
	if ConfigHash(key, a.Services) != ConfigHash(key, b.Services) {
		t.Error("the same services in another layout and order hash differently")
	}
	if h := ConfigHash(key, a.Services); len(h) != 64 {
		t.Errorf("hash %q: want 64 hex digits", h)
	}
	for name, other := range map[string]map[string]Service{
		"address changed": {"db": {Address: "10.0.0.5:5433", Backends: []string{"billing", "reports-*"}}, "api": {Address: "10.0.0.6:80"}},
		"backend removed": {"db": {Address: "10.0.0.5:5432", Backends: []string{"billing"}}, "api": {Address: "10.0.0.6:80"}},
		"service removed": {"db": {Address: "10.0.0.5:5432", Backends: []string{"billing", "reports-*"}}},
		"none":            nil,
	} {
		if ConfigHash(key, other) == ConfigHash(key, a.Services) {
			t.Errorf("%s: same hash", name)
		}
	}
}

// An agent with a huge allowlist, every service failing, and long errors
// still sends a report that fits in one control message.
func TestSessionReportFits(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	svcs := map[string]Service{}
	for i := range 3000 {
		name := fmt.Sprintf("%s-%04d", strings.Repeat("s", 58), i)
		svcs[name] = Service{Address: "127.0.0.1:1"}
		a.rep.dialFailed(name, strings.Repeat("refused ", 1000))
	}
	a.services.Store(&svcs)
	msg := strings.Repeat("bad ", 100000)
	a.configErr.Store(&msg)
	s := &session{a: a, transport: TransportTCP, why: strings.Repeat("w", 200)}
	m := s.report()
	if _, err := protocol.AppendMessage(nil, m); err != nil {
		t.Fatalf("the report does not fit: %v", err)
	}
	if len(m.Services) != maxReportServices || len(m.DialFailures) != maxReportServices {
		t.Errorf("%d services, %d dial-failure entries; want %d each", len(m.Services), len(m.DialFailures), maxReportServices)
	}
	// The local status keeps everything.
	if st := a.Status(); len(st.Services) != 3000 || len(st.DialFailures) != 3000 {
		t.Errorf("status: %d services, %d dial-failure entries; want 3000 each", len(st.Services), len(st.DialFailures))
	}
}
