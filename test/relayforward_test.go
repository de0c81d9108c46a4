package test

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/test/internal/e2e"
)

// forwardsYAML is a relay config file whose forwards are fwds, each
// {listen, target, backend}.
func forwardsYAML(fwds ...[3]string) string {
	var b strings.Builder
	b.WriteString("log_level: debug\n")
	if len(fwds) == 0 {
		return b.String()
	}
	b.WriteString("forwards:\n")
	for _, f := range fwds {
		b.WriteString("  - listen: " + f[0] + "\n    target: " + f[1] + "\n    backend: " + f[2] + "\n")
	}
	return b.String()
}

// writeConfig replaces the relay's config file as an editor would: a new
// file renamed over it.
func writeConfig(t *testing.T, path, body string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// forwardListening returns the address the relay logged listening on
// for the forward whose target is target (the last such line).
func forwardListening(t *testing.T, p *proc, target string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		addr := ""
		for _, line := range strings.Split(p.out.String(), "\n") {
			var rec struct{ Msg, Listen, Target string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "forward listening" && rec.Target == target {
				addr = rec.Listen
			}
		}
		if addr != "" {
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s logged no forward listening for %s in 20s:\n%s", p.name, target, p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// refusedForward waits for the relay's refusal of a connection at the
// forward door with code, and returns its request id.
func refusedForward(t *testing.T, p *proc, code string, after int) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n := 0
		for _, line := range strings.Split(p.out.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) != nil || m["msg"] != "refused" || m["door"] != "forward" || m["code"] != code {
				continue
			}
			if n++; n > after {
				id, _ := m["request"].(string)
				return id
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s logged no %s refusal at a forward in 20s:\n%s", p.name, code, p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRelayForwardPsqlAndPgDump: relay-side forwards, set up by an
// operator in the relay's config file and with --forward, let psql and
// pg_dump, which speak no proxy protocol and carry no credential, reach a
// real PostgreSQL behind a real agent as the forward's backend. A forward
// whose backend has no grant for its service is refused at each
// connection, the refusal logged and audited with its request id. A
// reloaded config file adds and removes forward listeners while the relay
// runs; a forward naming an unregistered backend is not applied (on
// reload) and stops the relay (at start). A forward beyond loopback is
// warned about.
func TestRelayForwardPsqlAndPgDump(t *testing.T) {
	pg := pgtest.Start(t)
	cfg := filepath.Join(t.TempDir(), "relay.yaml")
	writeConfig(t, cfg, forwardsYAML())
	r := startRelay(t, relayOpts{extra: []string{"--config", cfg}})
	r.waitOutput(`"msg":"watching the config file"`, 20*time.Second)
	r.addTenant(t, "acme")
	r.admin(t, "backend", "add", "billing", "--allow", "acme/db")
	startAgent(t, r, "acme", agentOpts{services: map[string]string{"db": pg.Addr(), "other": pg.Addr()}})
	d := r.r.Backend(t, "probe", "acme")
	waitDial(t, d, "db.acme.tether:5432", 20*time.Second).Close()

	dbAddr, otherAddr := e2e.FreeAddr(t, "127.0.0.1"), e2e.FreeAddr(t, "127.0.0.1")
	writeConfig(t, cfg, forwardsYAML([3]string{dbAddr, "db.acme", "billing"}, [3]string{otherAddr, "other.acme", "billing"}))
	if got := forwardListening(t, r.proc, "db.acme"); got != dbAddr {
		t.Fatalf("forward to db.acme listens on %s, want %s", got, dbAddr)
	}
	forwardListening(t, r.proc, "other.acme")

	t.Run("psql", func(t *testing.T) {
		out := runPGTool(t, pg, dbAddr, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-c",
			"CREATE TABLE rf_items (id int PRIMARY KEY, name text NOT NULL); "+
				"INSERT INTO rf_items SELECT g, 'item ' || g FROM generate_series(1, 50000) g; "+
				"SELECT count(*), sum(id) FROM rf_items;")
		if got := strings.TrimSpace(out); got != "50000|1250025000" {
			t.Fatalf("psql through the relay-side forward printed %q, want 50000|1250025000", got)
		}
	})

	t.Run("pg_dump", func(t *testing.T) {
		out := runPGTool(t, pg, dbAddr, "pg_dump", "--no-owner", "-t", "rf_items")
		for _, want := range []string{"CREATE TABLE public.rf_items", "COPY public.rf_items (id, name) FROM stdin;", "\n50000\titem 50000\n", "PostgreSQL database dump complete"} {
			if !strings.Contains(out, want) {
				t.Fatalf("pg_dump through the relay-side forward: output (%d bytes) lacks %q", len(out), want)
			}
		}
		if n := strings.Count(out, "\titem "); n != 50000 {
			t.Fatalf("pg_dump dumped %d rows, want 50000", n)
		}
		// The streams are audited as billing's, at door forward.
		recs := relayAuditKind(t, r, "stream", func(rec requestRec) bool { return rec.Detail["door"] == "forward" && rec.Outcome == "ok" })
		if rec := recs[0]; rec.Backend != "billing" || rec.Tenant != "acme" || rec.Detail["service"] != "db" || rec.Detail["auth"] != "forward" {
			t.Errorf("forward stream record %+v: want billing's stream to acme/db", rec)
		}
	})

	t.Run("backend without the grant", func(t *testing.T) {
		out, err := pgTool(pg, otherAddr, "psql", "-X", "-A", "-t", "-c", "SELECT 1")
		if err == nil {
			t.Fatalf("psql reached a service the forward's backend has no grant for:\n%s", out)
		}
		id := refusedForward(t, r.proc, "not_allowed", 0)
		line := relayLogLine(t, r.proc, "refused", id)
		if line["backend"] != "billing" || line["service"] != "other" || line["listen"] != otherAddr {
			t.Errorf("refusal log line %v: want billing refused for other at %s", line, otherAddr)
		}
		recs := relayAuditByRequest(t, r, id)
		if len(recs) != 1 || recs[0].Outcome != "not_allowed" || recs[0].Backend != "billing" || recs[0].Tenant != "acme" || recs[0].Detail["door"] != "forward" {
			t.Fatalf("audit of the refused forward connection %s: %+v, want one not_allowed record of billing at door forward", id, recs)
		}
	})

	t.Run("reload adds and removes", func(t *testing.T) {
		writeConfig(t, cfg, forwardsYAML([3]string{dbAddr, "db.acme", "billing"}, [3]string{"0.0.0.0:0", "db.acme.tether:5432", "billing"}))
		r.waitOutput(`"msg":"forward removed"`, 20*time.Second)
		wide := forwardListening(t, r.proc, "db.acme.tether:5432")
		if !strings.Contains(r.out.String(), `"msg":"a forward listens beyond loopback`) {
			t.Errorf("no warning for a forward beyond loopback:\n%s", r.out.String())
		}
		if c, err := net.DialTimeout("tcp", otherAddr, 5*time.Second); err == nil {
			c.Close()
			t.Fatalf("the removed forward %s still accepts", otherAddr)
		}
		_, port, _ := net.SplitHostPort(wide)
		if got := strings.TrimSpace(runPGTool(t, pg, net.JoinHostPort("127.0.0.1", port), "psql", "-X", "-A", "-t", "-c", "SELECT count(*) FROM rf_items")); got != "50000" {
			t.Fatalf("psql through the added forward printed %q", got)
		}
		if got := strings.TrimSpace(runPGTool(t, pg, dbAddr, "psql", "-X", "-A", "-t", "-c", "SELECT 1")); got != "1" {
			t.Fatalf("psql through the kept forward printed %q", got)
		}
	})

	t.Run("reload with an unknown backend", func(t *testing.T) {
		nobody := e2e.FreeAddr(t, "127.0.0.1")
		writeConfig(t, cfg, forwardsYAML([3]string{dbAddr, "db.acme", "billing"}, [3]string{nobody, "db.acme", "nobody"}))
		r.waitOutput(`"msg":"config file setting not applied; the relay keeps the running one"`, 20*time.Second)
		if !strings.Contains(r.out.String(), `backend \"nobody\" is not registered`) {
			t.Errorf("the reload's error does not name the backend:\n%s", r.out.String())
		}
		if c, err := net.DialTimeout("tcp", nobody, 5*time.Second); err == nil {
			c.Close()
			t.Fatalf("a forward of an unregistered backend listens on %s", nobody)
		}
		if got := strings.TrimSpace(runPGTool(t, pg, dbAddr, "psql", "-X", "-A", "-t", "-c", "SELECT 2")); got != "2" {
			t.Fatalf("psql through the kept forward printed %q", got)
		}
	})

	t.Run("--forward at start", func(t *testing.T) {
		if err := r.stop(30 * time.Second); err != nil {
			t.Fatalf("relay stop: %v", err)
		}
		base := []string{"serve", "--data-dir", r.dataDir, "--agent-listen", r.agentAddr, "--socks-listen", "off", "--connect-listen", "off", "--log-format", "json"}
		// An unregistered backend stops the relay at start, naming it.
		_, stderr, err := runCmd(t, bins.relay, append(base, "--forward", e2e.FreeAddr(t, "127.0.0.1")+"=db.acme@nobody")...)
		if exitCode(err) != 1 || !strings.Contains(stderr, `backend "nobody" is not registered`) {
			t.Fatalf("serve with a forward of an unregistered backend: %v\n%s", err, stderr)
		}
		// A malformed one is a usage error.
		_, stderr, err = runCmd(t, bins.relay, append(base, "--forward", "127.0.0.1:1=db.acme")...)
		if exitCode(err) != 2 || !strings.Contains(stderr, "names no backend") {
			t.Fatalf("serve with a forward without a backend: %v\n%s", err, stderr)
		}
		a1 := e2e.FreeAddr(t, "127.0.0.1")
		r2 := start(t, "tether-relay serve --forward", bins.relay, append(base, "--forward", a1+"=db.acme@billing")...)
		r2.waitOutput(`"msg":"relay serving"`, 20*time.Second)
		// The agent comes back to the restarted relay; the forward's
		// stream waits for it (reconnect grace).
		if got := strings.TrimSpace(runPGTool(t, pg, a1, "psql", "-X", "-A", "-t", "-c", "SELECT count(*) FROM rf_items")); got != "50000" {
			t.Fatalf("psql through a --forward printed %q", got)
		}
		if err := r2.stop(30 * time.Second); err != nil {
			t.Errorf("relay stop: %v", err)
		}
	})
}

// relayAuditKind polls tether-relay audit --kind kind until a record
// matches keep, and returns the matching ones.
func relayAuditKind(t *testing.T, r *relayProc, kind string, keep func(requestRec) bool) []requestRec {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var out []requestRec
		for _, line := range strings.Split(r.admin(t, "audit", "--kind", kind, "-o", "json"), "\n") {
			var rec requestRec
			if line != "" && json.Unmarshal([]byte(line), &rec) == nil && keep(rec) {
				out = append(out, rec)
			}
		}
		if len(out) > 0 {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("tether-relay audit --kind %s: no matching record after 15s", kind)
		}
		time.Sleep(50 * time.Millisecond) // bounded poll: the audit writer has no event to wait on from here
	}
}
