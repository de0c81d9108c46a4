package test

import (
	"context"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/pgtest"
)

// TestClusterStoreDownServesFromLastRead: PostgreSQL stops answering
// both relays (a proxy in front of it for each stops forwarding). Past
// 15 s each relay has found that the other has lost the store too, and
// serves new connections from what it last read (store_outage_grace,
// default 5 min): a backend opens a new stream through relay 2 to its
// agent, and the agent, killed and started again, is admitted by relay 2
// from the record it read at the agent's first admission. Both used to
// be refused: the stream with unavailable ("this relay has not reached
// its store for 15s and cannot confirm it is current"), the agent once
// its record's read timed out. Once the store is back the relays say
// the grace has ended.
func TestClusterStoreDownServesFromLastRead(t *testing.T) {
	var proxies []*pgtest.Proxy
	c := startClusterWith(t, 2, clusterOpts{dsn: func(pg *pgtest.Server, i int) string {
		p := pgtest.NewProxy(t, pg.Addr())
		proxies = append(proxies, p)
		return pg.DSNFor(p.Addr)
	}})
	c.admin(t, "tenant", "add", "acme")
	key := c.admin(t, "backend", "add", "billing", "--allow", "acme")
	a := c.clusterAgent(t, c.relays[1], "acme", 1, "tcp")
	if got := a.waitHolds(t, 1, 20*time.Second); got[0] != relayID(1) {
		t.Fatalf("the agent holds %v, want %s", got, relayID(1))
	}
	c.relays[0].waitOutput(`"relays":2`, 20*time.Second)
	d2 := c.dialer(c.relays[1], "billing", key)
	conn := waitDial(t, d2, "echo.acme.tether:7", 20*time.Second)
	conn.Close()

	for _, p := range proxies {
		p.Pause()
	}
	cut := time.Now()
	for _, r := range c.relays {
		r.waitOutput(`"msg":"the store is down for every relay this relay can ask`, 40*time.Second)
	}
	t.Logf("both relays serve from what they last read %v after the cut", time.Since(cut).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := echoDial(ctx, d2, "echo.acme.tether:7", "during the outage"); err != nil {
		t.Fatalf("a new stream through relay 2 %v after the store went down for both relays: %v", time.Since(cut).Round(time.Millisecond), err)
	}

	a.kill()
	killed := time.Now()
	a.restart()
	for {
		st, err := a.Status()
		if err == nil {
			if got := connectedRelays(st); len(got) == 1 && got[0] == relayID(1) && st.Sessions[0].Since.After(killed) {
				break
			}
		}
		if time.Since(killed) > time.Minute {
			t.Fatalf("the agent, started again during the outage, is not connected to relay 2 a minute later: %+v, %v; its last refusal: %s",
				st.Sessions, err, lastLine(a.out.String(), "cannot connect to relay"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("the agent, started again, was admitted by relay 2 %v later", time.Since(killed).Round(time.Millisecond))
	c.relays[1].waitOutput(`"msg":"admitted an agent from the record read at its last admission here`, 5*time.Second)
	if err := echoDial(ctx, d2, "echo.acme.tether:7", "through the agent started again"); err != nil {
		t.Fatalf("a new stream through the agent started again: %v", err)
	}

	for _, p := range proxies {
		p.Resume()
	}
	for _, r := range c.relays {
		r.waitOutput(`"msg":"the store outage grace ends: this relay reaches its store again`, 40*time.Second)
	}
	if err := echoDial(ctx, c.dialer(c.relays[0], "billing", key), "echo.acme.tether:7", "after the outage"); err != nil {
		t.Errorf("a new stream through relay 1 once the store is back: %v", err)
	}
}
