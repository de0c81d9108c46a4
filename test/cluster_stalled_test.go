package test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// TestClusterStalledAgentElsewhere: the tenant's only agent is connected
// to relay 1 and stops answering (SIGSTOP, as a hung machine); a backend
// dials through relay 2. Once relay 1 has stopped routing to the agent,
// relay 2's dial is refused with no_agent at once, saying that the agent's
// relay found it not answering, rather than after waiting (up to 2 s) for
// the agent to move to another relay as a leaving relay's agents do.
func TestClusterStalledAgentElsewhere(t *testing.T) {
	// The default heartbeat: the session outlives its stall by 20 s and more.
	c := startClusterWith(t, 2, clusterOpts{extra: []string{"--heartbeat", "10s"}})
	c.admin(t, "tenant", "add", "acme")
	key := c.admin(t, "backend", "add", "billing", "--allow", "acme")
	stateDir, id := enroll(t, c.relays[0].agentAddr, c.admin(t, "token", "create", "--tenant", "acme"))
	a := runAgent(t, stateDir, id, c.relays[0].agentAddr, agentOpts{transport: "tcp", logLevel: "info", extra: "relay_connections: 1\n",
		services: map[string]string{"echo": tcpService(t, echo)}})
	a.waitOutput(`"relay_id":"relay-1"`, 20*time.Second)
	d := c.dialer(c.relays[1], "billing", key)
	conn := waitDial(t, d, "echo.acme.tether:7", 20*time.Second)
	if err := echoLine(conn, "before"); err != nil {
		t.Fatal(err)
	}
	conn.Close()

	thaw := a.freeze(t)
	defer thaw()
	// Relay 1 pings the idle agent every heartbeat and, with no answer,
	// stops routing to it (the session stays until three heartbeats pass).
	c.relays[0].waitOutput("agent stopped answering", 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	conn, err := d.DialContext(ctx, "tcp", "echo.acme.tether:7")
	took := time.Since(start)
	if err == nil {
		conn.Close()
		t.Fatal("a stream to the frozen agent opened")
	}
	if !errors.Is(err, client.ErrNoAgent) || !strings.Contains(err.Error(), "stopped answering heartbeats") || took > time.Second {
		t.Fatalf("a dial through relay 2 with the agent at relay 1 not answering: %v after %v; want no_agent saying so at once", err, took.Round(time.Millisecond))
	}
	t.Logf("refused after %v: %v", took.Round(time.Millisecond), err)

	// Thawed, the agent carries streams through relay 2 again.
	thaw()
	conn = waitDial(t, d, "echo.acme.tether:7", 30*time.Second)
	defer conn.Close()
	if err := echoLine(conn, "after"); err != nil {
		t.Fatal(err)
	}
}
