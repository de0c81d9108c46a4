package test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/client"
	"github.com/tetherhq/tether/test/internal/e2e"
)

// TestClusterPostgresRestart: PostgreSQL restarts under a cluster of two
// relays. Streams open through both (one forwarded) carry on; an agent
// revoked right after the restart has its streams closed; each relay's
// LISTEN connection reconnects and the relay reads its state again; new
// streams, forwarded or not, go on being opened.
func TestClusterPostgresRestart(t *testing.T) {
	c := startCluster(t, 2)
	c.admin(t, "tenant", "add", "acme")
	c.admin(t, "tenant", "add", "beta")
	key := c.admin(t, "backend", "add", "billing", "--allow", "acme,beta")
	a := c.clusterAgent(t, c.relays[0], "acme", 1, "tcp")
	a.waitHolds(t, 1, 20*time.Second)
	b := c.clusterAgent(t, c.relays[1], "beta", 1, "tcp")
	b.waitHolds(t, 1, 20*time.Second)
	d1, d2 := c.dialer(c.relays[0], "billing", key), c.dialer(c.relays[1], "billing", key)
	local := waitDial(t, d1, "echo.acme.tether:7", 20*time.Second)
	defer local.Close()
	forwarded := waitDial(t, d2, "echo.acme.tether:7", 20*time.Second)
	defer forwarded.Close()
	for _, s := range []net.Conn{local, forwarded} {
		if err := echoLine(s, "before the restart"); err != nil {
			t.Fatal(err)
		}
	}
	// Both agents' presence is in the store, for the relays to forward.
	c.waitAgents(t, 2, 10*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.pg.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	for i, s := range []net.Conn{local, forwarded} {
		if err := echoLine(s, "after the restart"); err != nil {
			t.Fatalf("stream %d after PostgreSQL restarted: %v", i, err)
		}
	}
	// A revocation written at once, whether or not the relays listen
	// again yet.
	c.admin(t, "agent", "revoke", a.id)
	for _, s := range []net.Conn{local, forwarded} {
		waitClosed(t, s, 10*time.Second, "a stream of the agent revoked after the restart")
	}
	t.Logf("the revoked agent's streams ended %v after PostgreSQL restarted", time.Since(restarted).Round(time.Millisecond))
	c.relays[0].waitOutput(`"msg":"closed a revoked agent's sessions"`, 5*time.Second)
	for i, r := range c.relays {
		r.waitOutput("listen for change notices", 10*time.Second)
		r.waitOutput("its change notices were interrupted", 20*time.Second)
		t.Logf("relay %d: its LISTEN connection reconnected and it read its state again", i+1)
		if err := echoDial(ctx, c.dialer(r, "billing", key), "echo.beta.tether:7", "after the restart"); err != nil {
			t.Errorf("a new stream through relay %d after the restart: %v", i+1, err)
		}
	}
	if err := echoDial(ctx, d2, "echo.acme.tether:7", "revoked"); !errors.Is(err, client.ErrNoAgent) {
		t.Errorf("a new stream to the revoked agent's tenant: %v, want no_agent", err)
	}
}

// TestClusterPostgresCutOff: a proxy between relay 2 and PostgreSQL stops
// forwarding, without closing anything, and so does a proxy between relay
// 2 and relay 1's peer listener: relay 2 cannot learn that relay 1
// reaches the store, and keeps its agent (TestClusterStoreLostMovesAgents
// is a relay that can, and sends its agents away). Relay 2's streams
// carry on; its new dials are served until it has gone 15 s without
// confirming that it is current, then refused with unavailable; relay 1
// serves on throughout. An agent of relay 2 revoked meanwhile through the
// store is cut off once the proxies forward again, and relay 2 serves new
// dials.
func TestClusterPostgresCutOff(t *testing.T) {
	var proxy *pgtest.Proxy
	// Relay 1's peer listener, as relay 2 reaches it (relay 1 advertises
	// the proxy's address).
	peerListen := net.JoinHostPort(relayHost(0), strconv.Itoa(e2e.FreePort(t, relayHost(0))))
	peerProxy := pgtest.NewProxy(t, peerListen)
	c := startClusterWith(t, 2, clusterOpts{dsn: func(pg *pgtest.Server, i int) string {
		if i == 1 {
			proxy = pgtest.NewProxy(t, pg.Addr())
			return pg.DSNFor(proxy.Addr)
		}
		return pg.DSN()
	}, extraFor: func(i int) []string {
		if i == 0 {
			return []string{"--peer-listen", peerListen, "--advertise-peer", peerProxy.Addr}
		}
		return nil
	}})
	c.admin(t, "tenant", "add", "acme")
	c.admin(t, "tenant", "add", "beta")
	key := c.admin(t, "backend", "add", "billing", "--allow", "acme,beta")
	a := c.clusterAgent(t, c.relays[1], "acme", 1, "tcp") // on relay 2, cut off below
	a.waitHolds(t, 1, 20*time.Second)
	b := c.clusterAgent(t, c.relays[0], "beta", 1, "tcp")
	b.waitHolds(t, 1, 20*time.Second)
	d1, d2 := c.dialer(c.relays[0], "billing", key), c.dialer(c.relays[1], "billing", key)
	for _, d := range []*client.Dialer{d1, d2} {
		for _, tenant := range []string{"acme", "beta"} {
			conn := waitDial(t, d, "echo."+tenant+".tether:7", 20*time.Second)
			conn.Close()
		}
	}
	held := waitDial(t, d2, "echo.acme.tether:7", 20*time.Second)
	defer held.Close()

	proxy.Pause()
	peerProxy.Pause()
	cut := time.Now()
	// Relay 2 serves new dials until it refuses them with unavailable,
	// not before 15 s less a heartbeat of the store (it confirmed being
	// current at most one heartbeat before the cut).
	const notBefore = 12 * time.Second
	var lastOK time.Duration
	for {
		began := time.Since(cut)
		err := echoDial(context.Background(), d2, "echo.acme.tether:7", "during the cut")
		answered := time.Since(cut)
		if err == nil {
			lastOK = began
		} else if errors.Is(err, client.ErrUnavailable) {
			if began < notBefore {
				t.Fatalf("relay 2 refused a dial made %v after it was cut off from PostgreSQL with unavailable, before %v: %v", began.Round(time.Millisecond), notBefore, err)
			}
			t.Logf("relay 2 served new dials made until %v after the cut; it refused one made %v after it with unavailable (answered at %v): %v",
				lastOK.Round(time.Millisecond), began.Round(time.Millisecond), answered.Round(time.Millisecond), err)
			break
		} else {
			t.Fatalf("a dial through relay 2 made %v after the cut: %v, want success or unavailable", began.Round(time.Millisecond), err)
		}
		if began > 20*time.Second {
			t.Fatalf("relay 2 still admits new dials %v after it was cut off from PostgreSQL", began.Round(time.Millisecond))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := echoLine(held, "a stream open through the cut"); err != nil {
		t.Fatalf("the stream open through relay 2: %v", err)
	}
	if err := echoDial(context.Background(), d1, "echo.beta.tether:7", "relay 1 during the cut"); err != nil {
		t.Fatalf("relay 1 during the cut: %v", err)
	}

	// Revoked while relay 2 cannot read the store.
	c.admin(t, "agent", "revoke", a.id)
	c.relays[1].waitOutput("no other relay says it reaches the store: keeping its agents", 5*time.Second)
	if n := c.relays[1].count("this relay has lost its store while another relay reaches it"); n != 0 {
		t.Errorf("relay 2 sent its agents away, though it could not reach relay 1 to learn that it reaches the store")
	}
	proxy.Resume()
	peerProxy.Resume()
	healed := time.Now()
	waitClosed(t, held, 20*time.Second, "the stream of the agent revoked during the cut")
	t.Logf("relay 2 closed the revoked agent's stream %v after the proxy forwarded again", time.Since(healed).Round(time.Millisecond))
	c.relays[1].waitOutput(`"msg":"closed a revoked agent's sessions"`, 5*time.Second)
	conn := waitDial(t, d2, "echo.beta.tether:7", 20*time.Second)
	conn.Close()
	t.Logf("relay 2 serves new dials again %v after the proxy forwarded again", time.Since(healed).Round(time.Millisecond))
}

// waitClosed waits until the peer closes c (a read ends) within d.
func waitClosed(t *testing.T, c net.Conn, d time.Duration, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s is still open after %v", what, d)
	}
}
