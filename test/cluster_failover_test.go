package test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestClusterRelayKilled: relay 1 holds an agent with relay_connections
// 2 (over QUIC) and an agent with relay_connections 1 (over TCP). Killed
// with SIGKILL, new dials to both through each remaining relay succeed
// within 10 s, and each agent holds its K relays again, without relay 1.
func TestClusterRelayKilled(t *testing.T) {
	c := startCluster(t, 3)
	c.admin(t, "tenant", "add", "two")
	c.admin(t, "tenant", "add", "one")
	key := c.admin(t, "backend", "add", "billing", "--allow", "two,one")
	two := c.clusterAgent(t, c.relays[0], "two", 2, "quic")
	one := c.clusterAgent(t, c.relays[0], "one", 1, "tcp")
	// Each agent reached relay 1 first, through its configured address,
	// and stays there; the agent of two holds another relay too.
	held := two.waitHolds(t, 2, 20*time.Second)
	if !slices.Contains(held, "relay-1") {
		t.Fatalf("the agent of two holds %v, not relay 1 it was configured with", held)
	}
	if got := one.waitHolds(t, 1, 20*time.Second); got[0] != "relay-1" {
		t.Fatalf("the agent of one holds %v, want relay 1", got)
	}
	for _, r := range c.relays {
		for _, tenant := range []string{"two", "one"} {
			if err := echoDial(context.Background(), c.dialer(r, "billing", key), "echo."+tenant+".tether:7", "before"); err != nil {
				t.Fatalf("%s through %s before the kill: %v", tenant, r.agentAddr, err)
			}
		}
	}

	c.relays[0].kill()
	killed := time.Now()
	var wg sync.WaitGroup
	for _, r := range c.relays[1:] {
		for _, tenant := range []string{"two", "one"} {
			wg.Go(func() {
				conn := waitDial(t, c.dialer(r, "billing", key), "echo."+tenant+".tether:7", 10*time.Second)
				defer conn.Close()
				if err := echoLine(conn, "after relay 1 was killed"); err != nil {
					t.Errorf("%s through %s: %v", tenant, r.agentAddr, err)
				}
				t.Logf("%s reached through %s %v after relay 1 was killed", tenant, r.agentAddr, time.Since(killed).Round(time.Millisecond))
			})
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	got := two.waitHolds(t, 2, 20*time.Second, "relay-1")
	t.Logf("the agent with relay_connections 2 holds %v again %v after the kill", got, time.Since(killed).Round(time.Millisecond))
	got = one.waitHolds(t, 1, 20*time.Second, "relay-1")
	t.Logf("the agent with relay_connections 1 holds %v again %v after the kill", got, time.Since(killed).Round(time.Millisecond))
	// The store agrees: the relays' presence rows count each agent on K
	// live relays.
	deadline := time.Now().Add(15 * time.Second)
	for {
		agents, sessions := 0, 0
		for _, r := range c.relayList(t) {
			if r.Alive {
				agents += r.Agents
				sessions += r.Sessions
			}
		}
		if agents == 3 && sessions == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the live relays hold %d agent sessions (%d agents by relay), want 3 (2 + 1)", sessions, agents)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestClusterRollingRestart: every relay in turn is stopped (SIGTERM),
// waited for, and started again on the same addresses and data
// directory, while a backend given every relay's CONNECT door keeps
// opening new connections to two tenants whose agents hold two relays
// each. None fails; a typed refusal (unavailable included) counts as a
// failure.
func TestClusterRollingRestart(t *testing.T) {
	c := startCluster(t, 3)
	var agents []*statusAgent
	tenants := []string{"acme", "beta"}
	for i, tenant := range tenants {
		c.admin(t, "tenant", "add", tenant)
		agents = append(agents, c.clusterAgent(t, c.relays[i], tenant, 2, []string{"quic", "tcp"}[i]))
	}
	key := c.admin(t, "backend", "add", "billing", "--allow", strings.Join(tenants, ","))
	for _, a := range agents {
		a.waitHolds(t, 2, 20*time.Second)
	}
	d := c.dialerAll("billing", key)
	for _, tenant := range tenants {
		conn := waitDial(t, d, "echo."+tenant+".tether:7", 20*time.Second)
		conn.Close()
	}

	// The steady stream of new connections: each dial carries a line and
	// closes; the next follows at once.
	ctx, stop := context.WithCancel(context.Background())
	var load sync.WaitGroup
	var dials, failures atomic.Int64
	var mu sync.Mutex // guards failed
	var failed []string
	for w := range 4 {
		load.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				tenant := tenants[(w+i)%len(tenants)]
				dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				err := echoDial(dctx, d, "echo."+tenant+".tether:7", fmt.Sprintf("worker %d dial %d", w, i))
				cancel()
				if ctx.Err() != nil {
					return
				}
				dials.Add(1)
				if err != nil {
					failures.Add(1)
					mu.Lock()
					failed = append(failed, fmt.Sprintf("%s at %s: %v", tenant, time.Now().Format("15:04:05.000"), err))
					mu.Unlock()
				}
			}
		})
	}
	progress := func(n int64) {
		t.Helper()
		// The backend dials on: n more dials done.
		want := dials.Load() + n
		deadline := time.Now().Add(30 * time.Second)
		for dials.Load() < want {
			if time.Now().After(deadline) {
				t.Fatalf("the backend's dials stalled at %d", dials.Load())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	progress(20)
	began := time.Now()
	all := []string{"relay-1", "relay-2", "relay-3"}
	for i, r := range c.relays {
		stopAt := time.Now()
		if err := r.stop(30 * time.Second); err != nil {
			t.Fatalf("relay %d exited with %v after SIGTERM", i+1, err)
		}
		t.Logf("relay %d stopped in %v; %d dials so far", i+1, time.Since(stopAt).Round(time.Millisecond), dials.Load())
		r.restart()
		waitCount(t, r.proc, `"msg":"relay serving"`, 2, 20*time.Second)
		// As an operator would, before the next relay: the restarted
		// relay is up in the list, and each agent holds two relays.
		c.waitRelays(t, 20*time.Second, all...)
		for _, a := range agents {
			a.waitHolds(t, 2, 20*time.Second)
		}
		progress(20)
	}
	stop()
	load.Wait()
	t.Logf("rolling restart of 3 relays in %v: %d dials, %d failed", time.Since(began).Round(time.Millisecond), dials.Load(), failures.Load())
	for _, f := range failed {
		t.Errorf("dial failed: %s", f)
	}
}

// TestClusterRelayAdded: a fourth relay joining a cluster of three moves
// nothing: every agent keeps its K relays and none reconnects, although
// the agents were chosen so that the new relay is the one each ranks
// first; the new relay holds no agent until one needs a relay.
func TestClusterRelayAdded(t *testing.T) {
	c := startCluster(t, 3)
	c.admin(t, "tenant", "add", "acme")
	// Enrol agents until three rank relay 4 first among the four relays
	// (each does with a chance of 1 in 4): agents that would move to it
	// if a joining relay drew agents.
	var agents []*statusAgent
	for enrolled := 0; len(agents) < 3; enrolled++ {
		if enrolled == 40 {
			t.Fatal("40 agents enrolled and fewer than three rank relay 4 first")
		}
		r := c.relays[enrolled%3]
		stateDir, id := enroll(t, r.agentAddr, c.admin(t, "token", "create", "--tenant", "acme"))
		if rendezvousBest("acme", id, "relay-1", "relay-2", "relay-3", "relay-4") != "relay-4" {
			continue
		}
		status := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		a := runAgent(t, stateDir, id, r.agentAddr, agentOpts{transport: []string{"tcp", "quic"}[len(agents)%2],
			extra: fmt.Sprintf("relay_connections: 2\nstatus_listen: %q\n", status)})
		agents = append(agents, &statusAgent{agentProc: a, status: status})
	}
	holds := make([][]string, len(agents))
	connects := make([]int, len(agents))
	for i, a := range agents {
		holds[i] = a.waitHolds(t, 2, 20*time.Second)
		waitKnowsRelays(t, a.agentProc, 3)
	}
	for i, a := range agents {
		connects[i] = strings.Count(a.out.String(), `"msg":"connected to relay"`)
	}

	c.relays = append(c.relays, c.start(t, 3))
	for _, a := range agents {
		waitKnowsRelays(t, a.agentProc, 4)
	}
	// Every agent has heard of relay 4 from each of its relays (the list
	// logged above), and acts on a list as it hears it: had any meant to
	// move, it would have within a heartbeat of the cluster or two.
	c.waitRelays(t, 20*time.Second, "relay-1", "relay-2", "relay-3", "relay-4")
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		for i, a := range agents {
			if n := strings.Count(a.out.String(), `"msg":"connected to relay"`); n != connects[i] {
				t.Fatalf("agent %d connected again after relay 4 joined (%d connections, %d before):\n%s", i, n, connects[i], a.out.String())
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i, a := range agents {
		if got := a.waitHolds(t, 2, time.Second); !slices.Equal(got, holds[i]) {
			t.Errorf("agent %d holds %v after relay 4 joined, %v before", i, got, holds[i])
		}
		// The agent ranks relay 4 first (as chosen), so it stayed put by
		// design, not by chance.
		if st, err := a.Status(); err != nil || len(st.Cluster) != 4 || st.Cluster[0].ID != "relay-4" {
			t.Errorf("agent %d ranks %+v (%v), want relay 4 first of 4 (rendezvousBest no longer mirrors the agent's ranking?)", i, st.Cluster, err)
		}
	}
	for _, r := range c.relayList(t) {
		if r.ID == "relay-4" && r.Sessions != 0 {
			t.Errorf("relay 4 holds %d agent sessions, want none", r.Sessions)
		}
	}
}

// rendezvousBest is the relay of ids that agent id of tenant ranks
// first, as the agent ranks relays (rendezvous hashing, agent/cluster.go:
// the highest SHA-256 of "tenant/agent", a zero byte and the relay id).
func rendezvousBest(tenant, id string, ids ...string) string {
	best, bestScore := "", uint64(0)
	for _, r := range ids {
		h := sha256.Sum256([]byte(tenant + "/" + id + "\x00" + r))
		if s := binary.BigEndian.Uint64(h[:8]); best == "" || s > bestScore {
			best, bestScore = r, s
		}
	}
	return best
}

// TestClusterRelayDiesMidStream: a relay dying with forwarded streams in
// flight ends them at once, as README says: when the entry relay dies,
// its host closes the backend's connection; when the relay holding the
// agent dies, the entry relay resets the backend's connection (a read
// fails with "connection reset", never an end of data that could pass
// for a complete answer).
func TestClusterRelayDiesMidStream(t *testing.T) {
	c := startCluster(t, 3)
	c.admin(t, "tenant", "add", "acme")
	key := c.admin(t, "backend", "add", "billing", "--allow", "acme")
	a := c.clusterAgent(t, c.relays[0], "acme", 1, "tcp")
	a.waitHolds(t, 1, 20*time.Second)
	// Both enter another relay than relay 1, which holds the agent.
	viaRelay2 := waitDial(t, c.dialer(c.relays[1], "billing", key), "echo.acme.tether:7", 20*time.Second)
	defer viaRelay2.Close()
	viaRelay3 := waitDial(t, c.dialer(c.relays[2], "billing", key), "echo.acme.tether:7", 20*time.Second)
	defer viaRelay3.Close()
	for _, s := range []net.Conn{viaRelay2, viaRelay3} {
		if err := echoLine(s, "before"); err != nil {
			t.Fatal(err)
		}
	}

	c.relays[2].kill() // the entry relay of viaRelay3
	killed := time.Now()
	viaRelay3.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, viaRelay3)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the entry relay died and the backend's connection through it is still open 5 s later")
	}
	t.Logf("entry relay killed: the backend's connection ended after %v (%v)", time.Since(killed).Round(time.Millisecond), err)
	if err := echoLine(viaRelay2, "the other stream carries on"); err != nil {
		t.Fatalf("a stream entering relay 2 after relay 3 died: %v", err)
	}

	c.relays[0].kill() // the relay holding the agent
	killed = time.Now()
	viaRelay2.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.Copy(io.Discard, viaRelay2)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the relay holding the agent died: the backend's read through relay 2 ended with %v, want a connection reset", err)
	}
	t.Logf("holding relay killed: relay 2 reset the backend's connection after %v", time.Since(killed).Round(time.Millisecond))
}
