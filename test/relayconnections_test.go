package test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay"
)

// TestRelayConnectionsOneRelay: with one relay that sends no relay list,
// relay_connections: 2 keeps two connections to it, as connections: 2
// does; the reports tell the relay which relays the agent holds, and
// tether-agent status shows each slot's relay. Both keys at once is a
// config error.
func TestRelayConnectionsOneRelay(t *testing.T) {
	r := startInProcRelay(t)
	r.admin(t, "tenant", "add", "acme")
	addr := r.AgentAddr().String()
	for _, key := range []string{"relay_connections", "connections"} {
		t.Run(key, func(t *testing.T) {
			statusAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			stateDir, id := enroll(t, addr, r.admin(t, "token", "create", "--tenant", "acme"))
			a := runAgent(t, stateDir, id, addr, agentOpts{transport: "tcp",
				extra: fmt.Sprintf("%s: 2\nreport_interval: 300ms\nstatus_listen: %q\n", key, statusAddr)})
			la := waitReport(t, r, "acme", id, "a report of two connections", func(la relay.LiveAgent) bool { return len(la.Report.Relays) == 2 })
			for _, h := range la.Report.Relays {
				if h != (protocol.HeldRelay{ID: r.RelayID(), Addr: addr}) {
					t.Errorf("the report lists %+v, want the relay's address %s and its id %s", la.Report.Relays, addr, r.RelayID())
				}
			}
			if n := countLive(r, id); n != 2 {
				t.Errorf("the relay has %d sessions of the agent, want 2", n)
			}
			var st agent.Status
			if err := json.Unmarshal([]byte(mustRun(t, bins.agent, "status", "--config", a.config, "-o", "json")), &st); err != nil {
				t.Fatal(err)
			}
			// A relay on its own is a cluster of one: the list, once it
			// came, names it alone.
			if len(st.Sessions) != 2 || len(st.Cluster) > 1 || (len(st.Cluster) == 1 && st.Cluster[0].ID != r.RelayID()) {
				t.Fatalf("status: sessions %+v, cluster %+v; want two sessions and a cluster of this relay alone", st.Sessions, st.Cluster)
			}
			for _, s := range st.Sessions {
				if s.State != agent.StateConnected || s.Relay != addr || s.RelayID != r.RelayID() {
					t.Errorf("status session %+v, want connected to %s", s, addr)
				}
			}
			text := mustRun(t, bins.agent, "status", "--addr", statusAddr)
			t.Logf("tether-agent status:\n%s", text)
			if !strings.Contains(text, "RELAY ID") || strings.Count(text, addr) != 2 {
				t.Errorf("tether-agent status shows no RELAY ID column or not both connections:\n%s", text)
			}
		})
	}

	stateDir, _ := enroll(t, addr, r.admin(t, "token", "create", "--tenant", "acme"))
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("relays: [%q]\nstate_dir: %q\nconnections: 2\nrelay_connections: 2\nservices: {}\n", addr, stateDir)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := runCmd(t, bins.agent, "run", "--config", cfg); err == nil || !strings.Contains(stderr, "set relay_connections only") {
		t.Errorf("an agent with both connections and relay_connections: %v, %q; want a config error saying to set relay_connections only", err, stderr)
	}
}

// countLive counts the relay's sessions of agent id.
func countLive(r *inProcRelay, id string) int {
	n := 0
	for _, la := range r.LiveAgents("acme") {
		if la.Agent == id {
			n++
		}
	}
	return n
}
