package test

import (
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/client"
)

// testCluster is relays sharing one PostgreSQL store, each on its own
// loopback address (127.0.0.2, .3, …) with a peer listener.
type testCluster struct {
	relays []*relayProc
	store  []string // --store and --ca-kek-file
}

func startCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	pg := pgtest.Start(t)
	kek := make([]byte, 32)
	rand.Read(kek)
	kekFile := filepath.Join(t.TempDir(), "ca.kek")
	if err := os.WriteFile(kekFile, []byte(base64.StdEncoding.EncodeToString(kek)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &testCluster{store: []string{"--store", pg.DSN(), "--ca-kek-file", kekFile}}
	for i := range n {
		c.relays = append(c.relays, c.start(t, i))
	}
	return c
}

// start starts relay i on 127.0.0.(i+2).
func (c *testCluster) start(t *testing.T, i int) *relayProc {
	t.Helper()
	host := "127.0.0." + string(rune('2'+i))
	extra := append([]string{"--relay-id", "relay-" + string(rune('1'+i)), "--peer-listen", host + ":0"}, c.store...)
	return startRelay(t, relayOpts{agentHost: host, extra: extra})
}

// admin runs an admin command on the cluster's store.
func (c *testCluster) admin(t *testing.T, args ...string) string {
	t.Helper()
	return c.relays[0].admin(t, append(args, c.store...)...)
}

func (c *testCluster) dialer(r *relayProc, backend, key string) *client.Dialer {
	return &client.Dialer{Relay: r.connectAddr, Backend: backend, APIKey: key, Timeout: 20 * time.Second}
}

// TestClusterForwarding: an agent holding one connection, to relay 1, is
// reached through every relay of the cluster (the others forward to relay
// 1); when relay 1 is killed, the agent moves to a relay of the list it
// was sent, and the remaining relays reach it there within 10 s.
func TestClusterForwarding(t *testing.T) {
	c := startCluster(t, 3)
	c.admin(t, "tenant", "add", "acme")
	key := c.admin(t, "backend", "add", "billing", "--allow", "acme")
	stateDir, id := enroll(t, c.relays[0].agentAddr, c.admin(t, "token", "create", "--tenant", "acme"))
	a := runAgent(t, stateDir, id, c.relays[0].agentAddr, agentOpts{transport: "tcp", extra: "relay_connections: 1\n",
		services: map[string]string{"echo": tcpService(t, echo)}})
	a.waitOutput(`"relay_id":"relay-1"`, 20*time.Second)
	waitKnowsRelays(t, a, 3)

	for i, r := range c.relays {
		conn := waitDial(t, c.dialer(r, "billing", key), "echo.acme.tether:7", 20*time.Second)
		echoOnce(t, conn, "through relay "+string(rune('1'+i)))
		conn.Close()
	}
	// The entry relay audits the forwarded stream with the relay that
	// carried it.
	waitCount(t, c.relays[1].proc, `"relay":"relay-1"`, 1, 10*time.Second)

	c.relays[0].kill()
	start := time.Now()
	for _, r := range c.relays[1:] {
		conn := waitDial(t, c.dialer(r, "billing", key), "echo.acme.tether:7", 10*time.Second)
		echoOnce(t, conn, "after relay 1 was killed")
		conn.Close()
	}
	t.Logf("after relay 1 was killed, both other relays reached the agent within %v", time.Since(start).Round(time.Millisecond))
	if out := a.out.String(); strings.Count(out, c.relays[0].agentAddr) == 0 {
		t.Fatalf("the agent never named relay 1's address:\n%s", out)
	}
}

// waitKnowsRelays waits until the agent logged a relay list of n relays.
func waitKnowsRelays(t *testing.T, a *agentProc, n int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		for _, line := range strings.Split(a.out.String(), "\n") {
			if strings.Contains(line, `"msg":"relays of the cluster"`) && strings.Count(line, `"relay-`) == n {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent never logged a list of %d relays", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
