package test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/internal/pgtest"
)

// TestClusterStoreLostMovesAgents: a proxy between relay 2 and PostgreSQL
// stops forwarding (relay 2 alone loses its store; the agents and relay 1
// still reach it). Relay 1 stops counting relay 2, and the presence of the
// agent it holds, 10 s after its last heartbeat: an agent of relay 2 with
// relay_connections 1 was unreachable through relay 1 for as long as the
// cut lasted. Relay 2 now asks relay 1 whether it reaches the store, and
// as it does, sends its agent away: the agent moves to relay 1, and a
// backend through relay 1 reaches the tenant's service within 25 s of the
// cut. Once the proxy forwards again relay 2 accepts agents again.
func TestClusterStoreLostMovesAgents(t *testing.T) {
	var proxy *pgtest.Proxy
	ops := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // relay 2's metrics listener
	c := startClusterWith(t, 2, clusterOpts{dsn: func(pg *pgtest.Server, i int) string {
		if i == 1 {
			proxy = pgtest.NewProxy(t, pg.Addr())
			return pg.DSNFor(proxy.Addr)
		}
		return pg.DSN()
	}, extraFor: func(i int) []string {
		if i == 1 {
			return []string{"--metrics-listen", ops}
		}
		return nil
	}})
	if m := scrape(t, ops); m["tether_cluster_store_isolated"] != 0 {
		t.Fatalf("tether_cluster_store_isolated of relay 2 before the cut: %v, want 0", m["tether_cluster_store_isolated"])
	}
	c.admin(t, "tenant", "add", "acme")
	key := c.admin(t, "backend", "add", "billing", "--allow", "acme")
	a := c.clusterAgent(t, c.relays[1], "acme", 1, "tcp")
	if got := a.waitHolds(t, 1, 20*time.Second); got[0] != relayID(1) {
		t.Fatalf("the agent holds %v, want %s", got, relayID(1))
	}
	d1 := c.dialer(c.relays[0], "billing", key)
	conn := waitDial(t, d1, "echo.acme.tether:7", 20*time.Second) // forwarded to relay 2
	conn.Close()
	// An agent that will know relay 2's address only, enrolled now.
	newState, newID := enroll(t, c.relays[0].agentAddr, c.admin(t, "token", "create", "--tenant", "acme"))

	proxy.Pause()
	cut := time.Now()
	const bound = 25 * time.Second
	got := a.waitHolds(t, 1, bound, relayID(1))
	t.Logf("the agent moved from relay 2 to %v %v after relay 2 lost its store", got, time.Since(cut).Round(time.Millisecond))
	if got[0] != relayID(0) {
		t.Fatalf("the agent holds %v, want %s", got, relayID(0))
	}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := echoDial(ctx, d1, "echo.acme.tether:7", "after relay 2 lost its store")
		cancel()
		if err == nil {
			break
		}
		if time.Since(cut) > bound {
			t.Fatalf("a backend through relay 1 still cannot reach acme's service %v after relay 2 lost its store: %v", bound, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("a backend through relay 1 reached acme's service %v after relay 2 lost its store", time.Since(cut).Round(time.Millisecond))
	r2 := c.relays[1]
	r2.waitOutput(`"msg":"this relay has lost its store while another relay reaches it`, 5*time.Second)
	if line := outputLine(r2.out.String(), "this relay has lost its store while another relay reaches it"); !strings.Contains(line, `"peer":"`+relayID(0)+`"`) || !strings.Contains(line, `"store_lost_for"`) {
		t.Errorf("relay 2's error names neither the peer that reaches the store nor how long its store was gone: %s", line)
	}

	if m := scrape(t, ops); m["tether_cluster_store_isolated"] != 1 || m["tether_cluster_store_isolations_total"] != 1 {
		t.Errorf("relay 2's tether_cluster_store_isolated %v, tether_cluster_store_isolations_total %v while it has sent its agents away; want 1, 1",
			m["tether_cluster_store_isolated"], m["tether_cluster_store_isolations_total"])
	}
	if code, body := httpStatus(t, "http://"+ops+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "lost its store, which other relays of the cluster reach") {
		t.Errorf("relay 2's /readyz while it has sent its agents away: %d %q, want 503 saying why", code, body)
	}
	// A new agent is refused while relay 2 has lost its store, with a
	// refusal that has it try again (another relay, had it a list), not
	// a permanent one.
	b := runAgentNoWait(t, newState, newID, r2.agentAddr, agentOpts{transport: "tcp"})
	b.waitOutput("which other relays of the cluster reach: connect to another relay", 20*time.Second)
	if line := outputLine(b.out.String(), "which other relays of the cluster reach"); !strings.Contains(line, `"level":"WARN"`) || !strings.Contains(line, `"msg":"cannot connect to relay"`) {
		t.Errorf("the new agent's refusal by relay 2 is not a temporary one: %s", line)
	}

	proxy.Resume()
	r2.waitOutput(`"msg":"this relay reaches its store again: it accepts agents again"`, 30*time.Second)
	b.waitOutput(`"msg":"connected to relay"`, 20*time.Second)
	if m := scrape(t, ops); m["tether_cluster_store_isolated"] != 0 {
		t.Errorf("tether_cluster_store_isolated of relay 2 once its store is back: %v, want 0", m["tether_cluster_store_isolated"])
	}
}

// TestClusterStoreDownKeepsAgents: PostgreSQL stops answering every relay
// (a proxy in front of it for each stops forwarding). Each relay finds,
// past 10 s, that no other reaches the store either, and keeps its
// agents: none is sent away, which would reconnect the whole fleet for
// nothing.
func TestClusterStoreDownKeepsAgents(t *testing.T) {
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
	d2 := c.dialer(c.relays[1], "billing", key)
	held := waitDial(t, d2, "echo.acme.tether:7", 20*time.Second)
	defer held.Close()
	before, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}

	for _, p := range proxies {
		p.Pause()
	}
	for _, r := range c.relays {
		r.waitOutput(`"msg":"this relay has not written its heartbeat to the store for longer than the other relays count it, and no other relay says it reaches the store: keeping its agents`, 30*time.Second)
	}
	after, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}
	if got := connectedRelays(after); len(got) != 1 || got[0] != relayID(1) || !after.Sessions[0].Since.Equal(before.Sessions[0].Since) {
		t.Fatalf("the agent's sessions after both relays kept their agents: %+v, want its session to relay 2 of before the outage (%+v)", after.Sessions, before.Sessions)
	}
	if err := echoLine(held, "through the outage"); err != nil {
		t.Fatalf("the stream through relay 2: %v", err)
	}
	for i, r := range c.relays {
		if n := r.count("this relay has lost its store while another relay reaches it"); n != 0 {
			t.Errorf("relay %d sent its agents away while the store was down for every relay", i+1)
		}
	}
	for _, p := range proxies {
		p.Resume()
	}
	c.relays[1].waitOutput(`"msg":"this relay reaches its store again"`, 30*time.Second)
	conn := waitDial(t, c.dialer(c.relays[0], "billing", key), "echo.acme.tether:7", 20*time.Second)
	conn.Close()
}

// TestClusterIsolationEndsWhenStoreDownForAll: relay 2 alone loses its
// store and isolates itself (relay 1 reaches it); then relay 1 loses it
// too. Nobody counts the agents relay 2 sent away any more, and refusing
// them leaves their tenants with no relay: relay 2 keeps asking while it
// is isolated, finds that no relay reaches the store any more, and
// accepts agents again (its isolation gauge back to 0) while its own
// store is still gone. It used to stay isolated until its own heartbeat
// was written again, for the whole outage.
func TestClusterIsolationEndsWhenStoreDownForAll(t *testing.T) {
	var proxies []*pgtest.Proxy
	ops := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // relay 2's metrics listener
	c := startClusterWith(t, 2, clusterOpts{dsn: func(pg *pgtest.Server, i int) string {
		p := pgtest.NewProxy(t, pg.Addr())
		proxies = append(proxies, p)
		return pg.DSNFor(p.Addr)
	}, extraFor: func(i int) []string {
		if i == 1 {
			return []string{"--metrics-listen", ops}
		}
		return nil
	}})
	r2 := c.relays[1]
	// Relay 1 lists relay 2 once relay 2 has written its heartbeat (and,
	// in it, read relay 1's).
	c.relays[0].waitOutput(`"relays":2`, 20*time.Second)
	proxies[1].Pause()
	r2.waitOutput(`"msg":"this relay has lost its store while another relay reaches it`, 30*time.Second)
	if m := scrape(t, ops); m["tether_cluster_store_isolated"] != 1 {
		t.Fatalf("relay 2's tether_cluster_store_isolated once isolated: %v, want 1", m["tether_cluster_store_isolated"])
	}
	proxies[0].Pause()
	cut := time.Now()
	r2.waitOutput(`"msg":"no other relay says it reaches the store any more: this relay accepts agents again`, 30*time.Second)
	t.Logf("relay 2 lifted its isolation %v after relay 1 lost the store too", time.Since(cut).Round(time.Millisecond))
	if m := scrape(t, ops); m["tether_cluster_store_isolated"] != 0 || m["tether_cluster_store_isolations_total"] != 1 {
		t.Errorf("relay 2's tether_cluster_store_isolated %v, tether_cluster_store_isolations_total %v once no relay reaches the store; want 0, 1",
			m["tether_cluster_store_isolated"], m["tether_cluster_store_isolations_total"])
	}
	if line := outputLine(r2.out.String(), "no other relay says it reaches the store any more"); !strings.Contains(line, relayID(0)+": last heartbeat") {
		t.Errorf("relay 2's line does not give relay 1's answer: %s", line)
	}

	for _, p := range proxies {
		p.Resume()
	}
	r2.waitOutput(`"msg":"this relay reaches its store again"`, 30*time.Second)
}

// TestClusterIsolatedKeepsAgentThatCannotMove: relay 2's store turns
// read-only for it alone (its role's transactions read-only, its
// connections ended), so that it cannot write its heartbeat but reads
// its agents' records; relay 1 writes on. Relay 2 isolates itself and
// sends its agent away, but the agent can reach relay 2 only (relay 1
// advertises an agent address where nothing listens): it comes back,
// and relay 2 admits it and keeps it (one line, counted) rather than
// refuse it with unavailable for the rest of the outage, which left its
// tenant with no relay at all.
func TestClusterIsolatedKeepsAgentThatCannotMove(t *testing.T) {
	ctx := context.Background()
	var db *pgx.Conn
	ops := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // relay 2's metrics listener
	c := startClusterWith(t, 2, clusterOpts{dsn: func(pg *pgtest.Server, i int) string {
		if i == 0 {
			return pg.DSN()
		}
		// Relay 1 has made the schema; relay 2 runs as a role of its own.
		var err error
		if db, err = pgx.Connect(ctx, pg.DSN()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close(context.Background()) })
		for _, q := range []string{
			`CREATE ROLE relay_two LOGIN PASSWORD 'relay-two'`,
			`GRANT ALL ON SCHEMA public TO relay_two`,
			`GRANT ALL ON ALL TABLES IN SCHEMA public TO relay_two`,
			`GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO relay_two`,
		} {
			if _, err := db.Exec(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		u := url.URL{Scheme: "postgres", User: url.UserPassword("relay_two", "relay-two"), Host: pg.Addr(), Path: "/" + pg.Database, RawQuery: "sslmode=disable"}
		return u.String()
	}, extraFor: func(i int) []string {
		if i == 0 {
			return []string{"--advertise", fmt.Sprintf("127.0.0.1:%d", freePort(t))}
		}
		return []string{"--metrics-listen", ops}
	}})
	c.admin(t, "tenant", "add", "acme")
	a := c.clusterAgent(t, c.relays[1], "acme", 1, "tcp")
	if got := a.waitHolds(t, 1, 20*time.Second); got[0] != relayID(1) {
		t.Fatalf("the agent holds %v, want %s", got, relayID(1))
	}
	c.relays[0].waitOutput(`"relays":2`, 20*time.Second)

	for _, q := range []string{
		`ALTER ROLE relay_two SET default_transaction_read_only = on`,
		`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'relay_two'`,
	} {
		if _, err := db.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	r2 := c.relays[1]
	r2.waitOutput(`"msg":"this relay has lost its store while another relay reaches it`, 30*time.Second)
	isolated := time.Now()
	// The agent is sent away, cannot connect to relay 1, and comes back.
	var before agent.Status
	for {
		st, err := a.Status()
		if err != nil {
			t.Fatal(err)
		}
		if got := connectedRelays(st); len(got) == 1 && got[0] == relayID(1) && st.Sessions[0].Since.After(isolated) {
			before = st
			break
		}
		if time.Since(isolated) > time.Minute {
			t.Fatalf("the agent, sent away by relay 2 and unable to reach relay 1, has no session to relay 2 a minute later: %+v; its last refusal: %s",
				st.Sessions, lastLine(a.out.String(), "cannot connect to relay"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("the agent came back to relay 2 and was admitted %v after relay 2 isolated itself", time.Since(isolated).Round(time.Millisecond))
	if line := outputLine(r2.out.String(), "an agent this relay sent away came back"); !strings.Contains(line, `"tenant":"acme"`) {
		t.Errorf("relay 2 did not say it kept the agent of acme that came back: %q", line)
	}
	if m := scrape(t, ops); m["tether_cluster_store_isolated"] != 1 || m["tether_cluster_store_isolated_agents_kept_total"] != 1 {
		t.Errorf("relay 2's tether_cluster_store_isolated %v, tether_cluster_store_isolated_agents_kept_total %v; want 1, 1",
			m["tether_cluster_store_isolated"], m["tether_cluster_store_isolated_agents_kept_total"])
	}
	if _, err := db.Exec(ctx, `ALTER ROLE relay_two RESET default_transaction_read_only`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'relay_two'`); err != nil {
		t.Fatal(err)
	}
	r2.waitOutput(`"msg":"this relay reaches its store again: it accepts agents again"`, 30*time.Second)
	// Relay 2 asked its peers and swept its agents every heartbeat (2 s)
	// meanwhile: the agent kept was not sent away again.
	after, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}
	if got := connectedRelays(after); len(got) != 1 || got[0] != relayID(1) || !after.Sessions[0].Since.Equal(before.Sessions[0].Since) {
		t.Fatalf("the agent's sessions once relay 2's store is back: %+v, want the session it came back with (%+v)", after.Sessions, before.Sessions)
	}
	if n := r2.count("this relay has lost its store while another relay reaches it"); n != 1 {
		t.Errorf("relay 2 isolated itself %d times, want 1", n)
	}
}

// lastLine is the last line of out that contains s.
func lastLine(out, s string) string {
	last := ""
	for line := range strings.Lines(out) {
		if strings.Contains(line, s) {
			last = line
		}
	}
	return last
}

// outputLine is the first line of out that contains s.
func outputLine(out, s string) string {
	for line := range strings.Lines(out) {
		if strings.Contains(line, s) {
			return line
		}
	}
	return ""
}
