package test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
	"github.com/tetherhq/tether/test/internal/e2e"
)

// TestClusterRevokeAndUngrant: changes made through one relay's admin
// API apply on another relay at once. A grant removed through relay 2
// refuses new streams on relay 3 within 2 s; an agent connected to relay
// 3 only, revoked through relay 1, has the stream it carries closed
// within 5 s.
func TestClusterRevokeAndUngrant(t *testing.T) {
	c := startClusterWith(t, 3, clusterOpts{admin: true})
	c.admin(t, "tenant", "add", "acme")
	billingKey := c.admin(t, "backend", "add", "billing", "--allow", "acme")
	opsKey := c.admin(t, "backend", "add", "ops", "--allow", "acme")
	a := c.clusterAgent(t, c.relays[2], "acme", 1, "tcp")
	if got := a.waitHolds(t, 1, 20*time.Second); got[0] != "relay-3" {
		t.Fatalf("the agent holds %v, want relay 3", got)
	}
	billing := c.dialer(c.relays[2], "billing", billingKey)
	ops := c.dialer(c.relays[2], "ops", opsKey)
	held := waitDial(t, ops, "echo.acme.tether:7", 20*time.Second)
	defer held.Close()
	if err := echoLine(held, "held open through relay 3"); err != nil {
		t.Fatal(err)
	}

	t.Run("UngrantThroughRelay2", func(t *testing.T) {
		if err := echoDial(context.Background(), billing, "echo.acme.tether:7", "granted"); err != nil {
			t.Fatalf("billing through relay 3 before the change: %v", err)
		}
		c.admins[1].mustCtl(t, "backend", "ungrant", "billing", "acme")
		// The grant is gone once tetherctl has returned: the 2 s are
		// relay 3's, not tetherctl's start and its call.
		changed := time.Now()
		for {
			err := echoDial(context.Background(), billing, "echo.acme.tether:7", "after the ungrant")
			if errors.Is(err, client.ErrNotAllowed) {
				break
			}
			if el := time.Since(changed); el > 2*time.Second {
				t.Fatalf("billing still reaches acme through relay 3 %v after its grant was removed through relay 2 (%v)", el.Round(time.Millisecond), err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("relay 3 refused billing %v after its grant was removed through relay 2", time.Since(changed).Round(time.Millisecond))
	})

	t.Run("RevokeThroughRelay1", func(t *testing.T) {
		if err := echoLine(held, "before the revocation"); err != nil {
			t.Fatal(err)
		}
		closed := make(chan error, 1)
		go func() {
			held.SetReadDeadline(time.Now().Add(time.Minute))
			_, err := io.ReadAll(held)
			closed <- err
		}()
		revoked := time.Now()
		c.admins[0].mustCtl(t, "agent", "revoke", a.id, "--reason", "test")
		select {
		case err := <-closed:
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("the stream was never closed")
			}
			t.Logf("the stream through relay 3 ended %v after the agent was revoked through relay 1 (%v)", time.Since(revoked).Round(time.Millisecond), err)
		case <-time.After(5 * time.Second):
			t.Fatal("the revoked agent's stream through relay 3 is still open 5 s after the revocation through relay 1")
		}
		c.relays[2].waitOutput(`"msg":"closed a revoked agent's sessions"`, 5*time.Second)
		if err := echoDial(context.Background(), ops, "echo.acme.tether:7", "after the revocation"); !errors.Is(err, client.ErrNoAgent) {
			t.Fatalf("a dial after the revocation: %v, want no_agent", err)
		}
	})
}

// TestClusterMaxAgents: a tenant's max agents counts its agents on every
// relay. With a limit of one, a second agent connecting to relay 2 is
// refused while the first is connected to relay 1, and admitted once the
// first has stopped.
func TestClusterMaxAgents(t *testing.T) {
	c := startCluster(t, 2)
	c.admin(t, "tenant", "add", "acme")
	// Both agents are enrolled first: the limit refuses enrolments too.
	firstDir, firstID := enroll(t, c.relays[0].agentAddr, c.admin(t, "token", "create", "--tenant", "acme"))
	stateDir, id := enroll(t, c.relays[1].agentAddr, c.admin(t, "token", "create", "--tenant", "acme"))
	c.admin(t, "tenant", "limits", "acme", "--max-agents", "1")
	first := runAgent(t, firstDir, firstID, c.relays[0].agentAddr, agentOpts{transport: "tcp", extra: "relay_connections: 1\n"})
	// The first agent's presence is in the store once relay 1 counts it.
	c.waitAgents(t, 1, 10*time.Second)

	second := startAgentProc(t, stateDir, id, c.relays[1].agentAddr, agentOpts{transport: "tcp", extra: "relay_connections: 1\n"})
	second.waitOutput("limit_exceeded", 20*time.Second)
	c.relays[1].waitOutput(`already has 1 agents connected`, 10*time.Second)
	if strings.Contains(second.out.String(), `"msg":"connected to relay"`) {
		t.Fatalf("the second agent connected while the first was connected to another relay:\n%s", second.out.String())
	}

	if err := first.stop(20 * time.Second); err != nil {
		t.Fatalf("first agent: %v", err)
	}
	second.waitOutput(`"msg":"connected to relay"`, 30*time.Second)
}

// waitAgents waits until the live relays hold n agents between them.
func (c *testCluster) waitAgents(t *testing.T, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := 0
		for _, r := range c.relayList(t) {
			if r.Alive {
				got += r.Agents
			}
		}
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the live relays hold %d agents after %v, want %d", got, d, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startAgentProc runs an enrolled agent without waiting for it to
// connect.
func startAgentProc(t *testing.T, stateDir, id, relayAddr string, o agentOpts) *agentProc {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(cfg, []byte(e2e.AgentConfig(stateDir, relayAddr, e2e.AgentOptions{Transport: o.transport, Services: o.services, Extra: o.extra})), 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, "tether-agent "+id, bins.agent, "run", "--config", cfg)
	return &agentProc{proc: p, stateDir: stateDir, config: cfg, id: id}
}

// TestClusterRolloutOffersOnce: an agent with a session on each of two
// relays is offered a rollout's release once, by one of them: the offer
// is claimed in the store. The agent is stopped (SIGSTOP) before the
// rollout starts, so that it answers no offer and each relay, offering
// every 300 ms, would offer it on its own session were the claim not
// shared.
func TestClusterRolloutOffersOnce(t *testing.T) {
	c := startClusterWith(t, 2, clusterOpts{extra: []string{"--update-interval", "300ms", "--heartbeat", "10s"}})
	c.admin(t, "tenant", "add", "acme")
	keyDir := t.TempDir()
	mustRun(t, bins.relay, "release", "keygen", "--out", keyDir)
	a := c.clusterAgent(t, c.relays[0], "acme", 2, "tcp")
	if got := a.waitHolds(t, 2, 20*time.Second); strings.Join(got, ",") != "relay-1,relay-2" {
		t.Fatalf("the agent holds %v, want both relays", got)
	}
	if err := a.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer a.Signal(syscall.SIGCONT)
	c.admin(t, "release", "publish", "--file", bins.agent, "--version", "9.0.0", "--key", filepath.Join(keyDir, "release.key"),
		"--os", runtime.GOOS, "--arch", runtime.GOARCH)
	c.admin(t, "release", "rollout", "9.0.0", "--agents", a.id)
	const offered = `"msg":"update offered"`
	deadline := time.Now().Add(20 * time.Second)
	for c.relays[0].count(offered)+c.relays[1].count(offered) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no relay offered the update within 20 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Several offer rounds of both relays (300 ms each) pass: each relay
	// offered, or found the offer claimed three times.
	const claimed = `update offered to this agent elsewhere`
	deadline = time.Now().Add(10 * time.Second)
	for _, r := range c.relays {
		for r.count(offered) == 0 && r.count(claimed) < 3 {
			if time.Now().After(deadline) {
				t.Fatalf("a relay neither offered the update nor found it claimed within 10 s")
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if n1, n2 := c.relays[0].count(offered), c.relays[1].count(offered); n1+n2 != 1 {
		t.Fatalf("the update was offered %d times by relay 1 and %d times by relay 2, want once in all", n1, n2)
	}
	if n := strings.Count(c.admin(t, "audit", "--agent", a.id, "--kind", "update.offer"), "9.0.0"); n != 1 {
		t.Fatalf("the audit trail holds %d offers of 9.0.0, want 1", n)
	}
}

// count counts s in the process's output.
func (p *proc) count(s string) int { return strings.Count(p.out.String(), s) }
