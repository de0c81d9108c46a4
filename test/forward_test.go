package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/client"
)

// TestForwardPsqlAndPgDump: tetherctl forward, run as a process, lets
// PostgreSQL's own psql and pg_dump, which speak no proxy protocol, reach
// a real PostgreSQL behind a real agent through the relay's CONNECT door
// (API key) and its TLS door (client certificate). A target the backend
// has no grant for is refused: tetherctl logs the refusal with its code and
// closes the local connection. SIGTERM ends tetherctl with status 0 after
// its drain, closing the connections still open.
func TestForwardPsqlAndPgDump(t *testing.T) {
	pg := pgtest.Start(t)
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r := startRelay(t, relayOpts{extra: []string{"--connect-tls-listen", tlsAddr}})
	r.addTenant(t, "acme")
	key := r.admin(t, "backend", "add", "billing", "--allow", "acme/db")
	certDir := filepath.Join(t.TempDir(), "cert")
	r.admin(t, "backend", "certificate", "billing", "--out", certDir)
	startAgent(t, r, "acme", agentOpts{services: map[string]string{"db": pg.Addr(), "other": pg.Addr()}})
	d := &client.Dialer{Relay: r.connectAddr, Backend: "billing", APIKey: key, Timeout: 20 * time.Second}
	waitDial(t, d, "db.acme.tether:5432", 20*time.Second).Close()

	keyFile := filepath.Join(t.TempDir(), "billing.key")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(forwardEnvClean(), "TETHER_RELAY="+r.connectAddr, "TETHER_BACKEND=billing", "TETHER_API_KEY_FILE="+keyFile)
	fwd := startEnv(t, "tetherctl forward", env, bins.ctl, "forward", "db.acme.tether:5432", "--listen", "0",
		"--map", "0=other.acme.tether:5432", "--drain", "2s", "--log-format", "json", "--log-level", "debug")
	addrs := forwardListeners(t, fwd, 2)
	db, other := addrs["db.acme.tether:5432"], addrs["other.acme.tether:5432"]
	if db == "" || other == "" {
		t.Fatalf("listeners %v: want one for db.acme.tether:5432 and one for other.acme.tether:5432", addrs)
	}

	t.Run("psql", func(t *testing.T) {
		out := runPGTool(t, pg, db, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-c",
			"CREATE TABLE fwd_items (id int PRIMARY KEY, name text NOT NULL); "+
				"INSERT INTO fwd_items SELECT g, 'item ' || g FROM generate_series(1, 100000) g; "+
				"SELECT count(*), sum(id) FROM fwd_items;")
		if got := strings.TrimSpace(out); got != "100000|5000050000" {
			t.Fatalf("psql through the forward printed %q, want 100000|5000050000", got)
		}
	})

	t.Run("pg_dump", func(t *testing.T) {
		out := runPGTool(t, pg, db, "pg_dump", "--no-owner", "-t", "fwd_items")
		for _, want := range []string{"CREATE TABLE public.fwd_items", "COPY public.fwd_items (id, name) FROM stdin;", "\n1\titem 1\n", "\n100000\titem 100000\n", "PostgreSQL database dump complete"} {
			if !strings.Contains(out, want) {
				t.Fatalf("pg_dump through the forward: output (%d bytes) lacks %q", len(out), want)
			}
		}
		if n := strings.Count(out, "\titem "); n != 100000 {
			t.Fatalf("pg_dump dumped %d rows, want 100000", n)
		}
	})

	t.Run("refused target", func(t *testing.T) {
		start := time.Now()
		out, err := pgTool(pg, other, "psql", "-X", "-A", "-t", "-c", "SELECT 1")
		if err == nil {
			t.Fatalf("psql reached a service the backend has no grant for:\n%s", out)
		}
		if took := time.Since(start); took > 15*time.Second {
			t.Fatalf("psql took %v to fail, want the forward to close the connection at once", took)
		}
		fwd.waitOutput(`"code":"not_allowed"`, 10*time.Second)
		// The local connection is closed without a byte.
		c, err := net.Dial("tcp", other)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || isTimeout(err) {
			t.Fatalf("read from a refused connection: %d bytes, %v; want it closed", n, err)
		}
		if !strings.Contains(fwd.out.String(), `"msg":"relay refused the connection; closed it"`) {
			t.Fatalf("tetherctl did not log the refusal:\n%s", fwd.out.String())
		}
	})

	t.Run("client certificate", func(t *testing.T) {
		env := append(forwardEnvClean(), "TETHER_RELAY="+tlsAddr, "TETHER_CERT_DIR="+certDir)
		tlsFwd := startEnv(t, "tetherctl forward (TLS)", env, bins.ctl, "forward", "db.acme.tether", "--listen", "0", "--log-format", "json")
		addr := forwardListeners(t, tlsFwd, 1)["db.acme.tether:0"]
		if got := strings.TrimSpace(runPGTool(t, pg, addr, "psql", "-X", "-A", "-t", "-c", "SELECT count(*) FROM fwd_items")); got != "100000" {
			t.Fatalf("psql through the TLS door printed %q, want 100000", got)
		}
		if err := tlsFwd.stop(15 * time.Second); err != nil {
			t.Fatalf("tetherctl forward after SIGTERM: %v, want exit status 0", err)
		}
	})

	t.Run("SIGTERM", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, pg.DSNFor(db))
		if err != nil {
			t.Fatalf("pgx through the forward: %v", err)
		}
		defer conn.Close(context.Background())
		if err := conn.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := fwd.stop(15 * time.Second); err != nil {
			t.Fatalf("tetherctl forward after SIGTERM: %v, want exit status 0", err)
		}
		if took := time.Since(start); took > 2*time.Second+5*time.Second {
			t.Fatalf("tetherctl took %v to exit with a 2s drain", took)
		}
		if !strings.Contains(fwd.out.String(), `"msg":"stopped"`) {
			t.Fatalf("tetherctl did not log its stop:\n%s", fwd.out.String())
		}
		if err := conn.Ping(ctx); err == nil {
			t.Fatal("the connection through the forward still works after tetherctl exited")
		}
		if c, err := net.DialTimeout("tcp", db, 5*time.Second); err == nil {
			c.Close()
			t.Fatal("the forward's listener still accepts after tetherctl exited")
		}
	})
}

// TestForwardStartFailures: tetherctl forward exits with status 1 and says
// why when it cannot listen or its credentials are incomplete.
func TestForwardStartFailures(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte("tbk1_x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Nothing listens at the relay address: no case may get as far as
	// dialling it.
	creds := []string{"TETHER_RELAY=127.0.0.1:9", "TETHER_BACKEND=billing", "TETHER_API_KEY_FILE=" + keyFile}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"port in use", creds, []string{"db.acme.tether", "--listen", busy.Addr().String()}, []string{"cannot listen", "address already in use"}},
		{"no credential", []string{"TETHER_RELAY=127.0.0.1:9"}, []string{"db.acme.tether", "--listen", "0"}, []string{"no credential"}},
		{"API key without backend", []string{"TETHER_RELAY=127.0.0.1:9", "TETHER_API_KEY_FILE=" + keyFile}, []string{"db.acme.tether", "--listen", "0"}, []string{"needs the backend's name"}},
		{"two credentials", append(creds, "TETHER_BEARER_TOKEN=x.y.z"), []string{"db.acme.tether", "--listen", "0"}, []string{"more than one credential"}},
		{"no relay", []string{"TETHER_BACKEND=billing", "TETHER_API_KEY_FILE=" + keyFile}, []string{"db.acme.tether", "--listen", "0"}, []string{"no relay address"}},
		{"missing key file", []string{"TETHER_RELAY=127.0.0.1:9", "TETHER_BACKEND=billing", "TETHER_API_KEY_FILE=/nonexistent/key"}, []string{"db.acme.tether", "--listen", "0"}, []string{"read API key"}},
		{"endless key file", []string{"TETHER_RELAY=127.0.0.1:9", "TETHER_BACKEND=billing", "TETHER_API_KEY_FILE=/dev/zero"}, []string{"db.acme.tether", "--listen", "0"}, []string{"larger than 64 KiB"}},
		{"empty key file", []string{"TETHER_RELAY=127.0.0.1:9", "TETHER_BACKEND=billing", "TETHER_API_KEY_FILE=/dev/null"}, []string{"db.acme.tether", "--listen", "0"}, []string{"is empty"}},
		{"not a tether name", creds, []string{"db.example.com", "--listen", "0"}, []string{"want <service>.<tenant>.tether"}},
		{"listen without target", creds, []string{"--listen", "0"}, []string{"--listen needs a TARGET"}},
		{"bad map", creds, []string{"--map", "db.acme.tether"}, []string{"want [HOST:]PORT=<service>.<tenant>.tether"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, err := runCmdEnv(t, append(forwardEnvClean(), tc.env...), bins.ctl, append([]string{"forward"}, tc.args...)...)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("exit: %v, want status 1\nstderr: %s", err, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Fatalf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}
}

// forwardEnvClean unsets tetherctl forward's variables, so that the
// environment the tests run in cannot add a credential.
func forwardEnvClean() []string {
	var env []string
	for _, k := range []string{"TETHER_RELAY", "TETHER_BACKEND", "TETHER_API_KEY", "TETHER_API_KEY_FILE", "TETHER_BEARER_TOKEN",
		"TETHER_BEARER_TOKEN_FILE", "TETHER_CERT_DIR", "TETHER_RELAY_CA"} {
		env = append(env, k+"=")
	}
	return env
}

// forwardListeners waits for n "forwarding" lines in a tetherctl forward's
// JSON log and returns the listening address of each target.
func forwardListeners(t *testing.T, p *proc, n int) map[string]string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		addrs := map[string]string{}
		count := 0
		for _, line := range strings.Split(p.out.String(), "\n") {
			var rec struct{ Msg, Listen, Target string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "forwarding" {
				addrs[rec.Target] = rec.Listen
				count++
			}
		}
		if count >= n {
			return addrs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s logged %d forwarding lines after 20s, want %d", p.name, count, n)
		}
		select {
		case <-p.Done():
			t.Fatalf("%s exited (%v)", p.name, p.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// runPGTool runs a PostgreSQL client program against hostport and returns
// its standard output, failing the test if it fails.
func runPGTool(t *testing.T, pg *pgtest.Server, hostport, tool string, args ...string) string {
	t.Helper()
	out, err := pgTool(pg, hostport, tool, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", tool, strings.Join(args, " "), err)
	}
	return out
}

// pgTool runs a PostgreSQL client program (psql, pg_dump, …: Debian's,
// from the server's installation) against hostport with the server's
// credentials, passed in the environment, and returns its standard output.
// The error carries its standard error.
func pgTool(pg *pgtest.Server, hostport, tool string, args ...string) (string, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, pg.Bin(tool), args...)
	env := []string{"LC_ALL=C", "PGHOST=" + host, "PGPORT=" + port, "PGUSER=" + pg.User, "PGPASSWORD=" + pg.Password,
		"PGDATABASE=" + pg.Database, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=30", "PGAPPNAME=tether-forward-test"}
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !strings.HasPrefix(k, "PG") && !strings.HasPrefix(k, "LC_") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
