package agent

import (
	"slices"
	"strings"
	"testing"
)

func TestServiceBackends(t *testing.T) {
	c, err := ParseConfig([]byte(`
state_dir: /x
services:
  db:
    address: 10.0.0.5:5432
    backends: [billing, reports-*]
  api: 10.0.0.6:80
`))
	if err != nil {
		t.Fatal(err)
	}
	db, api := c.Services["db"], c.Services["api"]
	for backend, want := range map[string]bool{
		"backend:billing":     true,
		"backend:reports-eu":  true,
		"backend:billing2":    false,
		"backend:analytics":   false,
		"billing":             false, // not a backend identity
		"":                    false,
		"agent:billing":       false,
		"backend:billing/../": false,
	} {
		if got := db.allows(backend); got != want {
			t.Errorf("db.allows(%q) = %v, want %v", backend, got, want)
		}
	}
	if !api.allows("backend:anyone") {
		t.Error("a service without a backends list refused a backend")
	}
}

func TestServiceBackendsRefused(t *testing.T) {
	for cfg, want := range map[string]string{
		"state_dir: /x\nservices: {db: {address: a:1, backends: ['*']}}\n":        "leave backends out",
		"state_dir: /x\nservices: {db: {address: a:1, backends: [Billing]}}\n":    "services.db.backends[0]",
		"state_dir: /x\nservices: {db: {address: a:1, backends: ['a**']}}\n":      "single *",
		"state_dir: /x\nservices: {db: {address: a:1, backends: billing}}\n":      "parse config",
		"state_dir: /x\nservices: {db: {address: a:1, backends: ['bad/name']}}\n": "services.db.backends[0]",
		// An empty list would allow every backend: refused, whether
		// written so or left by a file cut off after "backends:".
		"state_dir: /x\nservices: {db: {address: a:1, backends: []}}\n":        "backends is empty",
		"state_dir: /x\nservices:\n  db:\n    address: a:1\n    backends:\n":   "backends is empty",
		"state_dir: /x\nservices:\n  db:\n    address: a:1\n    backends: ~\n": "backends is empty",
	} {
		_, err := ParseConfig([]byte(cfg))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error containing %q", cfg, err, want)
		}
	}
}

// relay_connections is the number of connection slots; connections, its
// former name, means the same; both at once is an error.
func TestRelayConnections(t *testing.T) {
	for _, tc := range []struct {
		yaml    string
		want    int
		wantErr string
	}{
		{"", 2, ""},
		{"relay_connections: 3\n", 3, ""},
		{"connections: 1\n", 1, ""},
		{"relay_connections: 16\n", 16, ""},
		{"relay_connections: 17\n", 0, "relay_connections 17: want 1 to 16"},
		{"relay_connections: -1\n", 0, "relay_connections -1: want 1 to 16"},
		{"connections: 17\n", 0, "connections 17: want 1 to 16"},
		{"connections: 2\nrelay_connections: 2\n", 0, "set relay_connections only"},
	} {
		c, err := ParseConfig([]byte("state_dir: /x\n" + tc.yaml))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: got %v, want an error containing %q", tc.yaml, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.yaml, err)
			continue
		}
		c.setDefaults()
		if c.RelayConnections != tc.want {
			t.Errorf("%q: got %d connection slots, want %d", tc.yaml, c.RelayConnections, tc.want)
		}
	}
}

// A changed number of connections, under either name, is named among the
// settings that need a restart; the same number under the other name is
// no change.
func TestRelayConnectionsNeedRestart(t *testing.T) {
	a := &Agent{cfg: Config{StateDir: "/x", Connections: 2}}
	a.cfg.setDefaults()
	for _, tc := range []struct {
		cfg  Config
		want bool
	}{
		{Config{StateDir: "/x"}, false},
		{Config{StateDir: "/x", RelayConnections: 2}, false},
		{Config{StateDir: "/x", Connections: 2}, false},
		{Config{StateDir: "/x", RelayConnections: 3}, true},
		{Config{StateDir: "/x", Connections: 1}, true},
	} {
		got := slices.Contains(a.needsRestart(tc.cfg), "relay_connections")
		if got != tc.want {
			t.Errorf("%+v: relay_connections needs a restart: %v, want %v", tc.cfg, got, tc.want)
		}
	}
}

// A service's port is checked with the rest of the file: one that no
// dial can use (0, beyond 65535, not a number nor a known service name)
// is an error there, not an "unreachable" refusal of every stream.
func TestServicePortChecked(t *testing.T) {
	for addr, ok := range map[string]bool{
		"10.0.0.5:5432":      true,
		"[fe80::1%eth0]:22":  true,
		"db.internal:65535":  true,
		"db.internal:https":  true,
		"10.0.0.5:0":         false,
		"10.0.0.5:65536":     false,
		"10.0.0.5:99999":     false,
		"10.0.0.5:-1":        false,
		"10.0.0.5:no-such-x": false,
	} {
		_, err := ParseConfig([]byte("state_dir: /x\nservices: {db: \"" + addr + "\"}\n"))
		switch {
		case ok && err != nil:
			t.Errorf("%s: %v", addr, err)
		case !ok && (err == nil || !strings.Contains(err.Error(), "want 1 to 65535")):
			t.Errorf("%s: got %v, want an error about the port", addr, err)
		}
	}
}
