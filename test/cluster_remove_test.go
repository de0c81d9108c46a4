package test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestClusterRelayRemovedWhileRunning: an operator runs "relay remove"
// against a relay that still runs (which deletes its row and its agents'
// presence). Within a few heartbeats the relay's row is back and so are
// its agents: a backend entering through another relay reaches the
// tenant whose only agent it holds. Its agents stayed gone, and the other
// relays answered no_agent, until the agent reconnected.
func TestClusterRelayRemovedWhileRunning(t *testing.T) {
	c := startClusterWith(t, 2, clusterOpts{admin: true})
	c.admin(t, "tenant", "add", "acme")
	opsKey := c.admin(t, "backend", "add", "ops", "--allow", "acme")
	a := c.clusterAgent(t, c.relays[1], "acme", 1, "tcp")
	if got := a.waitHolds(t, 1, 20*time.Second); got[0] != "relay-2" {
		t.Fatalf("the agent holds %v, want relay 2", got)
	}
	through1 := c.dialer(c.relays[0], "ops", opsKey)
	waitDial(t, through1, "echo.acme.tether:7", 20*time.Second).Close() // forwarded to relay 2

	ctx := context.Background()
	db, err := pgx.Connect(ctx, c.pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	c.admin(t, "relay", "remove", "relay-2")
	removed := time.Now()
	// Relay 2's row is back at its next heartbeat (2 s).
	for n := 0; n == 0; {
		if err := db.QueryRow(ctx, `SELECT count(*) FROM relays WHERE id = 'relay-2'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if time.Since(removed) > 10*time.Second {
			t.Fatal("relay 2's row not back 10 s after it was removed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Relay 1 remembers who holds a tenant for a second
	// (cluster.holdersTTL), and reached acme through relay 2 just before
	// the removal: past that, what it does it reads in the store.
	time.Sleep(1500 * time.Millisecond)
	for time.Since(removed) < 15*time.Second {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = echoDial(dctx, through1, "echo.acme.tether:7", "after relay remove")
		cancel()
		if err == nil {
			t.Logf("acme reached through relay 1 again %v after relay 2 was removed", time.Since(removed).Round(time.Millisecond))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("relay 2, still running, was removed; 15 s later acme, whose agent it holds, is still not reached through relay 1: %v", err)
}
