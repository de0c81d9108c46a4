package test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/client"
)

// testCluster is relays sharing one PostgreSQL store, each on its own
// loopback address (127.0.0.2, .3, …) with a peer listener.
type testCluster struct {
	pg      *pgtest.Server
	kekFile string
	store   []string // --store and --ca-kek-file
	relays  []*relayProc
	admins  []*adminRelay // each relay's admin API, with clusterOpts.admin
}

// clusterOpts change what startClusterWith starts.
type clusterOpts struct {
	admin bool     // each relay serves its admin API
	extra []string // more serve flags for every relay
	// dsn, when set, is relay i's store URL (default the PostgreSQL
	// server's): a relay can reach it through a proxy.
	dsn func(pg *pgtest.Server, i int) string
	// extraFor, when set, gives relay i more serve flags (after extra).
	extraFor func(i int) []string
}

func startCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	return startClusterWith(t, n, clusterOpts{})
}

func startClusterWith(t *testing.T, n int, o clusterOpts) *testCluster {
	t.Helper()
	pg := pgtest.Start(t)
	kek := make([]byte, 32)
	rand.Read(kek)
	kekFile := filepath.Join(t.TempDir(), "ca.kek")
	if err := os.WriteFile(kekFile, []byte(base64.StdEncoding.EncodeToString(kek)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &testCluster{pg: pg, kekFile: kekFile, store: []string{"--store", pg.DSN(), "--ca-kek-file", kekFile}}
	for i := range n {
		dsn := pg.DSN()
		if o.dsn != nil {
			dsn = o.dsn(pg, i)
		}
		extra := slices.Clone(o.extra)
		if o.extraFor != nil {
			extra = append(extra, o.extraFor(i)...)
		}
		var adminAddr string
		if o.admin {
			adminAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
			extra = append(extra, "--admin-listen", adminAddr)
		}
		r := c.startOn(t, i, dsn, extra...)
		c.relays = append(c.relays, r)
		if o.admin {
			c.admins = append(c.admins, &adminRelay{relayProc: r, url: "https://" + adminAddr})
		}
	}
	if o.admin {
		// One operator token and one CA for every relay's admin API.
		token := c.admin(t, "operator", "token", "create", "--name", "alice")
		caFile := filepath.Join(t.TempDir(), "ca.crt")
		c.admin(t, "ca", "export", "--out", caFile)
		for _, a := range c.admins {
			a.token, a.caFile = token, caFile
		}
	}
	return c
}

// start starts relay i on 127.0.0.(i+2).
func (c *testCluster) start(t *testing.T, i int, extra ...string) *relayProc {
	t.Helper()
	return c.startOn(t, i, c.pg.DSN(), extra...)
}

// startOn starts relay i on 127.0.0.(i+2) with the store at dsn.
func (c *testCluster) startOn(t *testing.T, i int, dsn string, extra ...string) *relayProc {
	t.Helper()
	host := relayHost(i)
	args := append([]string{"--relay-id", relayID(i), "--peer-listen", host + ":0", "--store", dsn, "--ca-kek-file", c.kekFile}, extra...)
	return startRelay(t, relayOpts{agentHost: host, extra: args})
}

// relayHost is relay i's loopback address; relayID its id.
func relayHost(i int) string { return fmt.Sprintf("127.0.0.%d", i+2) }
func relayID(i int) string   { return fmt.Sprintf("relay-%d", i+1) }

// admin runs an admin command on the cluster's store.
func (c *testCluster) admin(t *testing.T, args ...string) string {
	t.Helper()
	return c.relays[0].admin(t, append(args, c.store...)...)
}

func (c *testCluster) dialer(r *relayProc, backend, key string) *client.Dialer {
	return &client.Dialer{Relay: r.connectAddr, Backend: backend, APIKey: key, Timeout: 20 * time.Second}
}

// dialerAll is a Dialer given every relay's CONNECT door, as a backend
// behind a load balancer in front of them all.
func (c *testCluster) dialerAll(backend, key string) *client.Dialer {
	d := &client.Dialer{Backend: backend, APIKey: key, Timeout: 20 * time.Second}
	for _, r := range c.relays {
		d.Relays = append(d.Relays, r.connectAddr)
	}
	return d
}

// relayList is `relay list` of the store.
func (c *testCluster) relayList(t *testing.T) []admin.Relay {
	t.Helper()
	var rs []admin.Relay
	if err := json.Unmarshal([]byte(c.admin(t, "relay", "list", "-o", "json")), &rs); err != nil {
		t.Fatal(err)
	}
	return rs
}

// waitRelays waits until relay list shows the relays of ids up (alive,
// not draining) and no other relay up.
func (c *testCluster) waitRelays(t *testing.T, d time.Duration, ids ...string) []admin.Relay {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		rs := c.relayList(t)
		var up []string
		for _, r := range rs {
			if r.Alive && !r.Draining {
				up = append(up, r.ID)
			}
		}
		slices.Sort(up)
		if slices.Equal(up, slices.Sorted(slices.Values(ids))) {
			return rs
		}
		if time.Now().After(deadline) {
			t.Fatalf("relays up after %v: %v, want %v", d, up, ids)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// clusterAgent enrols an agent of tenant through relay r and runs it
// with relay_connections k, the echo service and a status listener.
func (c *testCluster) clusterAgent(t *testing.T, r *relayProc, tenant string, k int, transport string) *statusAgent {
	t.Helper()
	stateDir, id := enroll(t, r.agentAddr, c.admin(t, "token", "create", "--tenant", tenant))
	status := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	a := runAgent(t, stateDir, id, r.agentAddr, agentOpts{transport: transport,
		extra:    fmt.Sprintf("relay_connections: %d\nstatus_listen: %q\n", k, status),
		services: map[string]string{"echo": tcpService(t, echo)}})
	return &statusAgent{agentProc: a, status: status}
}

// statusAgent is an agent with its status listener.
type statusAgent struct {
	*agentProc
	status string
}

// Status is the agent's status (GET /status).
func (a *statusAgent) Status() (agent.Status, error) {
	var st agent.Status
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + a.status + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("status: %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// connectedRelays is the ids of the relays the agent's slots are
// connected to, in slot order.
func connectedRelays(st agent.Status) []string {
	var ids []string
	for _, s := range st.Sessions {
		if s.State == agent.StateConnected {
			ids = append(ids, s.RelayID)
		}
	}
	return ids
}

// waitHolds waits until the agent's k slots are connected to k distinct
// relays, none of them in avoid, and returns their ids (sorted).
func (a *statusAgent) waitHolds(t *testing.T, k int, d time.Duration, avoid ...string) []string {
	t.Helper()
	deadline := time.Now().Add(d)
	var last []string
	var err error
	for {
		var st agent.Status
		if st, err = a.Status(); err == nil {
			last = connectedRelays(st)
			distinct := slices.Compact(slices.Sorted(slices.Values(last)))
			if len(last) == k && len(distinct) == k && !slices.ContainsFunc(distinct, func(id string) bool { return slices.Contains(avoid, id) }) {
				return distinct
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent %s: connected to %v after %v (%v), want %d distinct relays other than %v", a.id, last, d, err, k, avoid)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// echoDial dials addr through d, checks that a line comes back and
// closes: one whole use of a connection.
func echoDial(ctx context.Context, d *client.Dialer, addr, line string) error {
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got, err := readLine(c)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if got != line {
		return fmt.Errorf("echo %q, want %q", got, line)
	}
	return nil
}

// TestClusterForwarding: an agent holding one connection, to relay 1, is
// reached through every relay of the cluster (the others forward to relay
// 1); when relay 1 is killed, the agent moves to a relay of the list it
// was sent, and the remaining relays reach it there within 10 s.
func TestClusterForwarding(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "relay.yaml")
	writeConfig(t, cfg, forwardsYAML())
	c := startClusterWith(t, 3, clusterOpts{extra: []string{"--config", cfg}})
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

	// A relay-side forward on every relay (each listens on a port of its
	// own): the client's first bytes go with the request to the holding
	// relay, and reach the agent's service once it answered.
	writeConfig(t, cfg, forwardsYAML([3]string{"127.0.0.1:0", "echo.acme", "billing"}))
	for i, r := range c.relays {
		conn, err := net.DialTimeout("tcp", forwardListening(t, r.proc, "echo.acme"), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		echoOnce(t, conn, "through relay "+string(rune('1'+i))+"'s forward")
		conn.Close()
	}

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
