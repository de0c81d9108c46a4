//go:build unix

package pgtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func TestServer(t *testing.T) {
	s := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if want := "127.0.0.1:" + strconv.Itoa(s.Port); s.Addr() != want {
		t.Errorf("Addr() = %q, want %q", s.Addr(), want)
	}
	wantDSN := fmt.Sprintf("postgres://%s:%s@db.acme.tether:5432/%s?sslmode=disable", s.User, s.Password, s.Database)
	if got := s.DSNFor("db.acme.tether:5432"); got != wantDSN {
		t.Errorf("DSNFor() = %q, want %q", got, wantDSN)
	}

	conn, err := pgx.Connect(ctx, s.DSN())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(context.Background())

	var db, usr, listen, encoding string
	if err := conn.QueryRow(ctx, `SELECT current_database(), current_user,
		current_setting('listen_addresses'), current_setting('server_encoding')`).Scan(&db, &usr, &listen, &encoding); err != nil {
		t.Fatal(err)
	}
	if db != s.Database || usr != s.User || listen != "127.0.0.1" || encoding != "UTF8" {
		t.Errorf("database %q user %q listen_addresses %q encoding %q", db, usr, listen, encoding)
	}

	if _, err := conn.Exec(ctx, `CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	names := []string{"alpha", "beta", "gamma", "délta"}
	for i, n := range names {
		if _, err := conn.Exec(ctx, `INSERT INTO items VALUES ($1, $2)`, i+1, n); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := conn.Query(ctx, `SELECT name FROM items ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("rows = %q, want %q", got, names)
	}

	// Every connection is authenticated with SCRAM-SHA-256.
	var methods []string
	rows, err = conn.Query(ctx, `SELECT DISTINCT auth_method FROM pg_hba_file_rules`)
	if err != nil {
		t.Fatal(err)
	}
	if methods, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if len(methods) != 1 || methods[0] != "scram-sha-256" {
		t.Errorf("pg_hba.conf auth methods = %q, want only scram-sha-256", methods)
	}
	var secret string
	if err := conn.QueryRow(ctx, `SELECT rolpassword FROM pg_authid WHERE rolname = current_user`).Scan(&secret); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, "SCRAM-SHA-256$") {
		t.Errorf("password stored as %.14q..., want a SCRAM-SHA-256 verifier", secret)
	}

	wrong := strings.Replace(s.DSN(), ":"+s.Password+"@", ":not"+s.Password+"@", 1)
	if wrong == s.DSN() {
		t.Fatalf("password not found in %s", s.DSN())
	}
	_, err = pgx.Connect(ctx, wrong)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Errorf("connecting with a wrong password: %v, want SQLSTATE 28P01 (invalid_password)", err)
	}

	pgbench := s.Bin("pgbench")
	if !filepath.IsAbs(pgbench) {
		t.Errorf("Bin(pgbench) = %q, not absolute", pgbench)
	}
	if out, err := exec.Command(pgbench, "--version").CombinedOutput(); err != nil {
		t.Errorf("%s --version: %v: %s", pgbench, err, out)
	}
}

func TestCleanupStopsServer(t *testing.T) {
	for _, explicitStop := range []bool{false, true} {
		var s *Server
		var pid int
		t.Run(fmt.Sprintf("explicitStop=%v", explicitStop), func(t *testing.T) {
			s = Start(t)
			pid = readPostmasterPID(s.dataDir)
			if pid == 0 || !processAlive(pid) {
				t.Fatalf("postmaster pid %d not running", pid)
			}
			if explicitStop {
				s.Stop()
				s.Stop()
				if processAlive(pid) {
					t.Errorf("postmaster %d alive after Stop", pid)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if conn, err := pgx.Connect(ctx, s.DSN()); err == nil {
					conn.Close(ctx)
					t.Errorf("connected after Stop")
				}
			}
		})
		if s == nil {
			t.Fatal("Start did not return")
		}
		assertGone(t, pid, s.dataDir, s.baseDir)
		killLeftovers(pid, s.baseDir)
	}
}

// killLeftovers removes what a failed test may have left behind.
func killLeftovers(pid int, baseDir string) {
	if pid != 0 && processAlive(pid) {
		_ = killTree(pid)
	}
	_ = os.RemoveAll(baseDir)
}

// assertGone checks that no process of the server is left and its files are
// removed.
func assertGone(t *testing.T, pid int, dataDir, baseDir string) {
	t.Helper()
	if processAlive(pid) {
		t.Errorf("postmaster %d still running", pid)
	}
	if left := processesMentioning(dataDir); len(left) > 0 {
		t.Errorf("processes of %s still running: %v", dataDir, left)
	}
	if _, err := os.Stat(baseDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s not removed: %v", baseDir, err)
	}
}

// processesMentioning returns the live processes whose command line
// mentions s.
func processesMentioning(s string) []string {
	entries, _ := os.ReadDir("/proc")
	var found []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(s)) || !processAlive(pid) {
			continue
		}
		found = append(found, fmt.Sprintf("%d %s", pid, bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
	}
	return found
}

// TestHelperProcess is not a test: TestAbnormalExit runs the test binary
// again with this test and $PGTEST_HELPER set to make it die after Start.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv("PGTEST_HELPER")
	if mode == "" {
		return
	}
	if mode == "nobin" {
		t.Setenv(BinDirEnv, "/nonexistent/pgtest/bin")
	}
	s := Start(t)
	fmt.Printf("PGTEST pid=%d data=%s base=%s\n", s.pid, s.dataDir, s.baseDir)
	switch mode {
	case "panic":
		panic("pgtest helper panics")
	case "exit":
		os.Exit(3) // no cleanup runs: the watchdog must stop the server
	}
}

// TestAbnormalExit checks that no server is left behind when a test panics
// (the cleanups run) or the test process exits without running them (the
// watchdog stops the server).
func worldWritable(dir string) bool {
	fi, err := os.Stat(dir)
	return err == nil && fi.Mode().Perm()&0o002 != 0
}

func TestAbnormalExit(t *testing.T) {
	if _, err := os.Stat("/proc/self/cmdline"); err != nil {
		t.Skip("needs /proc to look for leftover processes")
	}
	for _, mode := range []string{"panic", "exit"} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), "PGTEST_HELPER="+mode)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("helper exited successfully:\n%s", out)
			}
			var pid int
			var data, base string
			sc := bufio.NewScanner(bytes.NewReader(out))
			for sc.Scan() {
				if _, err := fmt.Sscanf(sc.Text(), "PGTEST pid=%d data=%s base=%s", &pid, &data, &base); err == nil {
					break
				}
			}
			if pid == 0 {
				t.Fatalf("helper did not report its server (%v):\n%s", err, out)
			}
			t.Cleanup(func() { killLeftovers(pid, base) })
			if mode == "panic" && !bytes.Contains(out, []byte("pgtest helper panics")) {
				t.Errorf("helper did not panic:\n%s", out)
			}
			// The watchdog acts asynchronously.
			deadline := time.Now().Add(20 * time.Second)
			for time.Now().Before(deadline) {
				entries, err := os.ReadDir(base)
				baseDone := errors.Is(err, os.ErrNotExist) ||
					(err == nil && len(entries) == 0 && !worldWritable(filepath.Dir(base)))
				if baseDone && !processAlive(pid) && len(processesMentioning(data)) == 0 {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if _, err := os.Stat(base); err == nil && mode == "exit" && !worldWritable(filepath.Dir(base)) {
				// The watchdog, run as the server's user, may be able to
				// empty base but not to remove it from its parent.
				if entries, err := os.ReadDir(base); err != nil || len(entries) > 0 {
					t.Errorf("%s not emptied: %v %v", base, entries, err)
				}
				_ = os.Remove(base)
			}
			assertGone(t, pid, data, base)
			if t.Failed() {
				t.Logf("helper output:\n%s", out)
			}
		})
	}
}

// TestMissingBinaries checks that Start fails, not skips, when PostgreSQL
// is not installed, and tells how to install it.
func TestMissingBinaries(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "PGTEST_HELPER=nobin")
	out, err := cmd.CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("--- FAIL: TestHelperProcess")) ||
		!bytes.Contains(out, []byte("run scripts/deps.sh")) || bytes.Contains(out, []byte("SKIP")) {
		t.Errorf("helper without binaries: %v\n%s", err, out)
	}
}

// TestPortTaken checks that Start retries on another port when the one it
// picked is taken before the server binds it.
func TestPortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	calls := 0
	pickPort = func() (int, error) {
		calls++
		if calls == 1 {
			return taken, nil
		}
		return freePort()
	}
	defer func() { pickPort = freePort }()

	s := Start(t)
	if calls != 2 || s.Port == taken {
		t.Errorf("%d ports picked, server on %d, taken port %d", calls, s.Port, taken)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN())
	if err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
}

func TestCompareVersions(t *testing.T) {
	dirs := []string{"/usr/lib/postgresql/9.6/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/10/bin"}
	best := dirs[0]
	for _, d := range dirs[1:] {
		if compareVersions(d, best) > 0 {
			best = d
		}
	}
	if best != "/usr/lib/postgresql/16/bin" {
		t.Errorf("highest = %s", best)
	}
	if compareVersions("/x/9.6/bin", "/x/10/bin") >= 0 {
		t.Error("9.6 >= 10")
	}
}

// StartWith's options: the server also listens on another address, and
// lets clients in from the networks named (Linux routes all of 127/8 to
// loopback, so a client can pick its source address there) and no others.
func TestStartWithOptions(t *testing.T) {
	s := StartWith(t, Options{ListenAddresses: []string{"127.0.0.3"}, ClientNetworks: []string{"127.0.0.2/32"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	connectFrom := func(src string) error {
		cfg, err := pgx.ParseConfig(s.DSNFor(net.JoinHostPort("127.0.0.3", strconv.Itoa(s.Port))))
		if err != nil {
			t.Fatal(err)
		}
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		cfg.DialFunc = d.DialContext
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		var listen string
		if err := conn.QueryRow(ctx, `SELECT current_setting('listen_addresses')`).Scan(&listen); err != nil {
			return err
		}
		if listen != "127.0.0.1,127.0.0.3" {
			t.Errorf("listen_addresses = %q, want 127.0.0.1,127.0.0.3", listen)
		}
		return nil
	}
	if err := connectFrom("127.0.0.2"); err != nil {
		t.Fatalf("a client from an allowed network: %v", err)
	}
	err := connectFrom("127.0.0.4")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "28000" {
		t.Fatalf("a client from another network: got %v, want a refusal with SQLSTATE 28000 (no pg_hba.conf entry)", err)
	}
}

// TestRestart: Restart ends every client's connection and brings the
// same server back on the same port with its data.
func TestRestart(t *testing.T) {
	s := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before')`); err != nil {
		t.Fatal(err)
	}
	port, pid := s.Port, readPostmasterPID(s.DataDir())
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Port != port {
		t.Errorf("port %d after the restart, want %d", s.Port, port)
	}
	if now := readPostmasterPID(s.DataDir()); now == pid || now == 0 {
		t.Errorf("postmaster pid %d after the restart, was %d: not restarted", now, pid)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Error("a connection from before the restart still works")
	}
	again, err := pgx.Connect(ctx, s.DSN())
	if err != nil {
		t.Fatalf("connect after the restart: %v", err)
	}
	defer again.Close(context.Background())
	var v string
	if err := again.QueryRow(ctx, `SELECT v FROM kept`).Scan(&v); err != nil || v != "before" {
		t.Fatalf("after the restart: %q, %v; want the row written before", v, err)
	}
	s.Stop()
	if err := s.Restart(ctx); err == nil {
		t.Error("Restart after Stop succeeded")
	}
}
