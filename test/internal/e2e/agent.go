package e2e

import (
	"cmp"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Agent is an enrolled tether-agent run process.
type Agent struct {
	*Proc
	StateDir string
	Config   string
	ID       string
}

// AgentOptions configure an agent's run.
type AgentOptions struct {
	Transport string              // auto (default), quic or tcp
	Services  map[string]string   // name → host:port
	Backends  map[string][]string // service name → the only backends the agent lets reach it
	Extra     string              // more YAML
	LogLevel  string              // default debug
	// Wrap is put before the agent's command line, e.g. "ip netns exec
	// NAME" to run the agent in a network namespace.
	Wrap []string
}

// Enroll enrols an agent with a token, running bin (tether-agent) after
// wrap, and returns its state directory and id.
func Enroll(t testing.TB, wrap []string, bin, relayAddr, token string) (stateDir, id string) {
	t.Helper()
	stateDir = filepath.Join(t.TempDir(), "state")
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	argv := append(slices.Clone(wrap), bin, "enroll", "--relay", relayAddr, "--token-file", tokenFile, "--state-dir", stateDir)
	id = MustRun(t, argv...)
	return stateDir, id
}

// AgentConfig is the YAML configuration of an agent with state directory
// stateDir connecting to relayAddr: JSON logs, a short reconnect backoff
// (100 ms to 1 s) and o's transport, services and extra YAML.
func AgentConfig(stateDir, relayAddr string, o AgentOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, "relays: [%q]\nstate_dir: %q\ntransport: %s\nreconnect: {initial: 100ms, max: 1s}\nlog: {level: %s, format: json}\n",
		relayAddr, stateDir, cmp.Or(o.Transport, "auto"), cmp.Or(o.LogLevel, "debug"))
	if len(o.Services) == 0 {
		b.WriteString("services: {}\n")
	} else {
		b.WriteString("services:\n")
		for _, name := range slices.Sorted(maps.Keys(o.Services)) {
			addr := o.Services[name]
			if bs := o.Backends[name]; len(bs) > 0 {
				fmt.Fprintf(&b, "  %s: {address: %q, backends: [%s]}\n", name, addr, strings.Join(bs, ", "))
				continue
			}
			fmt.Fprintf(&b, "  %s: %q\n", name, addr)
		}
	}
	b.WriteString(o.Extra)
	return b.String()
}

// RunAgent writes a config for an enrolled state directory, runs bin
// (tether-agent) with it and waits until it has connected to the relay.
func RunAgent(t testing.TB, bin, stateDir, id, relayAddr string, o AgentOptions) *Agent {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(cfg, []byte(AgentConfig(stateDir, relayAddr, o)), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &Agent{StateDir: stateDir, Config: cfg, ID: id}
	argv := append(slices.Clone(o.Wrap), bin, "run", "--config", cfg)
	a.Proc = Start(t, "tether-agent "+id, nil, argv...)
	a.WaitOutput(`"msg":"connected to relay"`, 20*time.Second)
	return a
}
