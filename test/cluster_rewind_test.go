package test

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestClusterFeedRewound: the store's change feed goes back under the
// relays (PostgreSQL failed over to an asynchronous replica that lacked
// the newest changes, or was restored from a backup: the latest rows are
// gone and the next change takes a number the relays have passed). An
// agent revoked after that, through one relay, still has the stream it
// carries through the other closed within 5 s: the relays notice the
// rewind and read their state again. They applied nothing until
// restarted, and the revoked agent's sessions stayed up.
func TestClusterFeedRewound(t *testing.T) {
	c := startClusterWith(t, 2, clusterOpts{admin: true})
	for _, name := range []string{"acme", "t1", "t2", "t3"} {
		c.admin(t, "tenant", "add", name)
	}
	opsKey := c.admin(t, "backend", "add", "ops", "--allow", "acme")
	a := c.clusterAgent(t, c.relays[1], "acme", 1, "tcp")
	if got := a.waitHolds(t, 1, 20*time.Second); got[0] != "relay-2" {
		t.Fatalf("the agent holds %v, want relay 2", got)
	}
	ops := c.dialer(c.relays[1], "ops", opsKey)
	held := waitDial(t, ops, "echo.acme.tether:7", 20*time.Second)
	defer held.Close()
	if err := echoLine(held, "held open through relay 2"); err != nil {
		t.Fatal(err)
	}

	// The failover: the feed loses its last 3 changes, and its counter
	// goes back with it.
	ctx := context.Background()
	db, err := pgx.Connect(ctx, c.pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	var latest int64
	if err := db.QueryRow(ctx, `SELECT max(seq) FROM changes`).Scan(&latest); err != nil || latest < 4 {
		t.Fatalf("newest change %d (%v), want at least 4", latest, err)
	}
	if _, err := db.Exec(ctx, `DELETE FROM changes WHERE seq > $1`, latest-3); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `SELECT setval(pg_get_serial_sequence('changes', 'seq'), $1)`, latest-3); err != nil {
		t.Fatal(err)
	}

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
		t.Logf("the stream through relay 2 ended %v after the agent was revoked through relay 1, the feed having gone back (%v)", time.Since(revoked).Round(time.Millisecond), err)
	case <-time.After(5 * time.Second):
		t.Fatal("the revoked agent's stream through relay 2 is still open 5 s after the revocation through relay 1, written after the change feed went back")
	}
}
