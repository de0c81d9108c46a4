//go:build unix

package pgtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	// DefaultUser, DefaultDatabase are the superuser and the database that
	// Start creates.
	DefaultUser     = "tether"
	DefaultDatabase = "tether"

	// BinDirEnv names an environment variable that, when set, is the only
	// directory searched for the PostgreSQL binaries.
	BinDirEnv = "PGTEST_BINDIR"
	// TempDirEnv names an environment variable that, when set, is the
	// directory in which clusters are created.
	TempDirEnv = "PGTEST_TMPDIR"

	startAttempts = 3
	startTimeout  = 60 * time.Second
	stopTimeout   = 30 * time.Second
	// maxSocketPath is the longest unix socket path used; sun_path holds
	// 108 bytes on Linux and 104 on the BSDs.
	maxSocketPath = 100
)

// Server is a throwaway PostgreSQL cluster listening on 127.0.0.1 on a free
// port. Its superuser is User (authenticated with SCRAM-SHA-256 using
// Password), and Database exists and is empty.
type Server struct {
	Host     string
	Port     int
	User     string
	Password string
	Database string
	// Version is the major version of the server, e.g. "15".
	Version string

	logf    func(format string, args ...any) // reports trouble at Stop
	binDir  string
	baseDir string // our own temp dir: data dir, log, password file
	dataDir string
	logPath string
	runAs   string              // user the server runs as when the test runs as root
	cred    *syscall.Credential // nil unless the test runs as root
	opts    Options

	mu         sync.Mutex
	stopped    bool
	pid        int // postmaster
	watchdog   *exec.Cmd
	watchdogIn io.WriteCloser
}

// Start creates and starts a new PostgreSQL server and registers a cleanup
// that stops it and removes its files. It fails the test (never skips it) if
// the PostgreSQL binaries are missing: scripts/deps.sh installs them.
//
// The binaries are looked for in $PGTEST_BINDIR if set, else next to the
// initdb found on PATH (symlinks resolved), else in
// /usr/lib/postgresql/<highest version>/bin.
//
// The cluster is created in $PGTEST_TMPDIR if set, else in /dev/shm when it
// is a tmpfs with at least 1 GiB free (initdb is much faster there), else in
// os.TempDir().
//
// When the test runs as root, the server runs as the "postgres" system user,
// or "nobody" if there is none.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, Options{})
}

// Options change what Start sets up.
type Options struct {
	// ListenAddresses are IP addresses the server listens on besides
	// 127.0.0.1 (which Addr keeps naming), such as the address of a
	// network namespace's link that clients in that namespace reach.
	ListenAddresses []string
	// ClientNetworks are CIDR ranges from which clients may log in,
	// besides 127.0.0.1/32; they authenticate with SCRAM-SHA-256 as
	// local clients do.
	ClientNetworks []string
}

// StartWith is Start with options.
func StartWith(t testing.TB, o Options) *Server {
	t.Helper()
	s, err := start(o, t.Logf)
	if s != nil {
		t.Cleanup(func() {
			if t.Failed() {
				if tail := logTail(s.logPath); tail != "" {
					t.Logf("pgtest: tail of the server log %s:\n%s", s.logPath, tail)
				}
			}
			if err := s.Close(); err != nil {
				t.Errorf("pgtest: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return s
}

var shared struct {
	mu  sync.Mutex
	srv *Server
	err error
}

// Shared returns a server that every test of the test binary shares,
// starting it at the first call; each caller should work in a database of
// its own (CreateDatabase). StopShared, from TestMain after m.Run, stops
// it.
func Shared(t testing.TB) *Server {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv == nil && shared.err == nil {
		shared.srv, shared.err = start(Options{}, func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) })
		if shared.err != nil && shared.srv != nil {
			shared.srv.Close()
			shared.srv = nil
		}
	}
	if shared.err != nil {
		t.Fatalf("pgtest: %v", shared.err)
	}
	return shared.srv
}

// StopShared stops the server Shared started, if any.
func StopShared() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv != nil {
		if err := shared.srv.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		}
		shared.srv = nil
	}
}

// Close stops the server and removes its files.
func (s *Server) Close() error {
	s.Stop()
	if err := os.RemoveAll(s.baseDir); err != nil {
		return fmt.Errorf("removing %s: %w", s.baseDir, err)
	}
	return nil
}

// CreateDatabase creates a new empty database on the server and returns
// a connection URL for it.
func (s *Server) CreateDatabase(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.dsn(s.Addr(), "postgres"))
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer conn.Close(ctx)
	name := "db_" + strings.ToLower(rand.Text())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: creating database %s: %v", name, err)
	}
	return s.dsn(s.Addr(), name)
}

// start creates and starts a server. On an error after the server's
// directory was made, it returns the server too, for Close.
func start(o Options, logf func(format string, args ...any)) (*Server, error) {
	begin := time.Now()
	for _, a := range o.ListenAddresses {
		if _, err := netip.ParseAddr(a); err != nil {
			return nil, fmt.Errorf("listen address %q: %w", a, err)
		}
	}
	for _, n := range o.ClientNetworks {
		if _, err := netip.ParsePrefix(n); err != nil {
			return nil, fmt.Errorf("client network %q: %w", n, err)
		}
	}

	binDir, err := findBinDir()
	if err != nil {
		return nil, fmt.Errorf("%w: run scripts/deps.sh to install PostgreSQL", err)
	}
	s := &Server{
		Host:     "127.0.0.1",
		User:     DefaultUser,
		Password: rand.Text(),
		Database: DefaultDatabase,
		logf:     logf,
		binDir:   binDir,
		opts:     o,
	}
	if os.Geteuid() == 0 {
		s.runAs, s.cred, err = unprivilegedUser()
		if err != nil {
			return nil, fmt.Errorf("running as root: %w", err)
		}
	}
	s.baseDir, err = makeBaseDir(s.cred)
	if err != nil {
		return nil, err
	}
	s.dataDir = filepath.Join(s.baseDir, "data")
	s.logPath = filepath.Join(s.baseDir, "server.log")

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := s.initdb(ctx); err != nil {
		return s, err
	}
	if err := s.start(ctx); err != nil {
		return s, err
	}
	if err := s.createDatabase(ctx); err != nil {
		return s, fmt.Errorf("%w\nserver log:\n%s", err, logTail(s.logPath))
	}
	who := ""
	if s.cred != nil {
		who = " as " + s.runAs
	}
	logf("pgtest: PostgreSQL %s on %s%s, data in %s, started in %v",
		s.Version, s.Addr(), who, s.dataDir, time.Since(begin).Round(time.Millisecond))
	return s, nil
}

// Addr returns the server's TCP address, "127.0.0.1:port".
func (s *Server) Addr() string {
	return net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
}

// DSN returns a connection URL for Database on the server.
func (s *Server) DSN() string {
	return s.DSNFor(s.Addr())
}

// DSNFor returns a connection URL with the server's credentials and database
// but another host:port, such as a tunnel's address "db.acme.tether:5432".
func (s *Server) DSNFor(hostport string) string {
	return s.dsn(hostport, s.Database)
}

func (s *Server) dsn(hostport, database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(s.User, s.Password),
		Host:     hostport,
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Bin returns the absolute path of the PostgreSQL program name (e.g.
// "pgbench") of the server's installation, falling back to PATH. If the
// program is not found it returns the path it would have in the installation,
// so that running it fails with a clear error.
func (s *Server) Bin(name string) string {
	p := filepath.Join(s.binDir, name)
	if isExecutable(p) {
		return p
	}
	if lp, err := exec.LookPath(name); err == nil {
		if abs, err := filepath.Abs(lp); err == nil {
			return abs
		}
	}
	return p
}

// DataDir returns the cluster's data directory.
func (s *Server) DataDir() string { return s.dataDir }

// LogPath returns the path of the server's log file.
func (s *Server) LogPath() string { return s.logPath }

// Stop stops the server immediately (pg_ctl stop -m immediate), killing it
// if that fails. It is idempotent and safe for concurrent use; the cleanup
// registered by Start calls it too.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.stopped = true

	// The watchdog would kill the server when the test process exits; we
	// are about to do it ourselves.
	if s.watchdog != nil {
		_ = s.watchdog.Process.Kill()
		_ = s.watchdog.Wait()
		s.watchdog = nil
	}
	if s.dataDir == "" {
		return
	}
	pid := s.pid
	if pid == 0 {
		pid = readPostmasterPID(s.dataDir)
	}
	if pid == 0 {
		return // never started
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	out, err := s.command(ctx, "pg_ctl", "-D", s.dataDir, "-m", "immediate",
		"-w", "-t", strconv.Itoa(int(stopTimeout/time.Second)), "stop").CombinedOutput()
	if err == nil && !processAlive(pid) {
		return
	}
	if err != nil {
		s.logf("pgtest: pg_ctl stop: %v: %s", err, bytes.TrimSpace(out))
	}
	if err := killTree(pid); err != nil {
		s.logf("pgtest: %v", err)
	}
}

// Restart stops the server (pg_ctl stop -m fast: every client's
// connection ends) and starts it again on the same data directory and
// port, as an administrator's restart of the database would. Clients
// must connect again; the data is kept. It fails when the server was
// stopped for good (Stop, Close), or when the port was taken meanwhile.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("restart: the server was stopped")
	}
	if s.watchdog != nil {
		_ = s.watchdog.Process.Kill()
		_ = s.watchdog.Wait()
		_ = s.watchdogIn.Close() // its cat reads EOF and exits
		s.watchdog = nil
	}
	pid := s.pid
	out, err := s.command(ctx, "pg_ctl", "-D", s.dataDir, "-m", "fast",
		"-w", "-t", strconv.Itoa(int(stopTimeout/time.Second)), "stop").CombinedOutput()
	if err != nil {
		return fmt.Errorf("restart: pg_ctl stop: %v: %s", err, bytes.TrimSpace(out))
	}
	if processAlive(pid) {
		if err := killTree(pid); err != nil {
			return fmt.Errorf("restart: %w", err)
		}
	}
	out, err = s.command(ctx, "pg_ctl",
		"-D", s.dataDir,
		"-l", s.logPath,
		"-o", "-p "+strconv.Itoa(s.Port),
		"-w", "-t", strconv.Itoa(int(startTimeout/time.Second)),
		"start",
	).CombinedOutput()
	if err != nil {
		return fmt.Errorf("restart: pg_ctl start on port %d: %v: %s\nserver log:\n%s", s.Port, err, bytes.TrimSpace(out), logTail(s.logPath))
	}
	if s.pid = readPostmasterPID(s.dataDir); s.pid == 0 {
		return fmt.Errorf("restart: pg_ctl start succeeded but %s/postmaster.pid holds no pid", s.dataDir)
	}
	return s.startWatchdogLocked()
}

// findBinDir returns the directory holding initdb, pg_ctl and postgres.
func findBinDir() (string, error) {
	if d := os.Getenv(BinDirEnv); d != "" {
		if hasServerBinaries(d) {
			return filepath.Abs(d)
		}
		return "", fmt.Errorf("$%s=%s does not hold initdb, pg_ctl and postgres", BinDirEnv, d)
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			if d, err := filepath.Abs(filepath.Dir(real)); err == nil && hasServerBinaries(d) {
				return d, nil
			}
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return compareVersions(b, a) })
	for _, d := range dirs {
		if hasServerBinaries(d) {
			return d, nil
		}
	}
	return "", errors.New("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH nor in /usr/lib/postgresql/*/bin")
}

// compareVersions compares /usr/lib/postgresql/<version>/bin paths by the
// numeric fields of their version.
func compareVersions(a, b string) int {
	fa := strings.Split(filepath.Base(filepath.Dir(a)), ".")
	fb := strings.Split(filepath.Base(filepath.Dir(b)), ".")
	for i := 0; i < len(fa) && i < len(fb); i++ {
		na, errA := strconv.Atoi(fa[i])
		nb, errB := strconv.Atoi(fb[i])
		if errA != nil || errB != nil {
			if c := strings.Compare(fa[i], fb[i]); c != 0 {
				return c
			}
			continue
		}
		if na != nb {
			return na - nb
		}
	}
	return len(fa) - len(fb)
}

func hasServerBinaries(dir string) bool {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		if !isExecutable(filepath.Join(dir, name)) {
			return false
		}
	}
	return true
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// unprivilegedUser returns the user to run PostgreSQL as when the test runs
// as root.
func unprivilegedUser() (string, *syscall.Credential, error) {
	var errs []error
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		uid, err := strconv.ParseUint(u.Uid, 10, 32)
		if err != nil {
			errs = append(errs, fmt.Errorf("user %s: uid %q: %w", name, u.Uid, err))
			continue
		}
		gid, err := strconv.ParseUint(u.Gid, 10, 32)
		if err != nil {
			errs = append(errs, fmt.Errorf("user %s: gid %q: %w", name, u.Gid, err))
			continue
		}
		if uid == 0 {
			continue
		}
		// No supplementary groups: the zero Groups with NoSetGroups false
		// drops root's.
		return name, &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return "", nil, fmt.Errorf("initdb and postgres refuse to run as root and no unprivileged user (postgres, nobody) was found: %w", errors.Join(errs...))
}

// makeBaseDir creates the server's private directory, owned by the user the
// server runs as, in a temp directory that user can reach: $PGTEST_TMPDIR if
// set, else a memory file system if there is one with room (see
// memoryTempDir), else os.TempDir() or /tmp.
func makeBaseDir(cred *syscall.Credential) (string, error) {
	var candidates []string
	if d := os.Getenv(TempDirEnv); d != "" {
		candidates = []string{d}
	} else {
		if d := memoryTempDir(); d != "" {
			candidates = append(candidates, d)
		}
		candidates = append(candidates, os.TempDir(), "/tmp")
	}
	var errs []error
	for _, parent := range candidates {
		if cred != nil && !traversable(parent, cred) {
			errs = append(errs, fmt.Errorf("%s cannot be traversed by uid %d", parent, cred.Uid))
			continue
		}
		dir, err := os.MkdirTemp(parent, "pgtest-")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return dir, chownBaseDir(dir, cred)
	}
	return "", fmt.Errorf("no directory for the cluster: %w", errors.Join(errs...))
}

func chownBaseDir(dir string, cred *syscall.Credential) error {
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			_ = os.RemoveAll(dir)
			return err
		}
	}
	return nil
}

// traversable reports whether the user of cred (with no supplementary
// groups) can search dir and each of its ancestors.
func traversable(dir string, cred *syscall.Credential) bool {
	p, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return false
	}
	if p, err = filepath.Abs(p); err != nil {
		return false
	}
	for {
		fi, err := os.Stat(p)
		if err != nil {
			return false
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return false
		}
		perm := fi.Mode().Perm()
		var bit os.FileMode = 0o001
		switch {
		case st.Uid == cred.Uid:
			bit = 0o100
		case st.Gid == cred.Gid:
			bit = 0o010
		}
		if perm&bit == 0 {
			return false
		}
		parent := filepath.Dir(p)
		if parent == p {
			return true
		}
		p = parent
	}
}

// command returns a command running the PostgreSQL program name as the
// server's user, in the server's directory.
func (s *Server) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(s.binDir, name), args...)
	s.prepare(cmd)
	return cmd
}

func (s *Server) prepare(cmd *exec.Cmd) {
	cmd.Dir = s.baseDir
	cmd.Env = s.env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	cmd.WaitDelay = 5 * time.Second
}

// env is the environment of the PostgreSQL programs: the test's without the
// libpq variables (PGDATA, PGPORT...) and with the C locale.
func (s *Server) env() []string {
	env := []string{"LC_ALL=C", "LANG=C"}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "LC_") || k == "LANG" {
			continue
		}
		if s.cred != nil && (k == "HOME" || k == "USER" || k == "LOGNAME") {
			continue
		}
		env = append(env, kv)
	}
	if s.cred != nil {
		env = append(env, "HOME="+s.baseDir, "USER="+s.runAs, "LOGNAME="+s.runAs)
	}
	return env
}

func (s *Server) initdb(ctx context.Context) error {
	pwfile := filepath.Join(s.baseDir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(s.Password+"\n"), 0o600); err != nil {
		return err
	}
	if s.cred != nil {
		if err := os.Chown(pwfile, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return err
		}
	}
	out, err := s.command(ctx, "initdb",
		"-D", s.dataDir,
		"-U", s.User,
		"--pwfile="+pwfile,
		"--auth=scram-sha-256",
		"--encoding=UTF8",
		"--no-locale",
		"--no-sync",
	).CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb: %v\n%s", err, out)
	}
	_ = os.Remove(pwfile)
	if v, err := os.ReadFile(filepath.Join(s.dataDir, "PG_VERSION")); err == nil {
		s.Version = strings.TrimSpace(string(v))
	}

	sockets := s.dataDir
	if len(sockets)+len("/.s.PGSQL.65535.lock") > maxSocketPath {
		sockets = "" // TCP only; pg_ctl -w does not need a socket
	}
	conf := fmt.Sprintf(`
# pgtest
listen_addresses = %s
unix_socket_directories = %s
fsync = off
synchronous_commit = off
full_page_writes = off
`, quoteConf(strings.Join(append([]string{"127.0.0.1"}, s.opts.ListenAddresses...), ",")), quoteConf(sockets))
	if err := appendFile(filepath.Join(s.dataDir, "postgresql.conf"), conf); err != nil {
		return err
	}
	var hba strings.Builder
	for _, n := range s.opts.ClientNetworks {
		fmt.Fprintf(&hba, "host all all %s scram-sha-256\n", n)
	}
	return appendFile(filepath.Join(s.dataDir, "pg_hba.conf"), hba.String())
}

// appendFile appends text to the existing file path.
func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func quoteConf(v string) string {
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

// start starts the server on a free port, trying another port if the one
// chosen was taken in the meantime.
func (s *Server) start(ctx context.Context) error {
	var errs []error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		port, err := pickPort()
		if err != nil {
			return err
		}
		_ = os.Remove(s.logPath)
		out, err := s.command(ctx, "pg_ctl",
			"-D", s.dataDir,
			"-l", s.logPath,
			"-o", "-p "+strconv.Itoa(port),
			"-w", "-t", strconv.Itoa(int(startTimeout/time.Second)),
			"start",
		).CombinedOutput()
		if err == nil {
			s.Port = port
			s.mu.Lock()
			s.pid = readPostmasterPID(s.dataDir)
			s.mu.Unlock()
			if s.pid == 0 {
				return fmt.Errorf("pg_ctl start succeeded but %s/postmaster.pid holds no pid", s.dataDir)
			}
			return s.startWatchdog()
		}
		tail := logTail(s.logPath)
		errs = append(errs, fmt.Errorf("attempt %d on port %d: pg_ctl start: %v\n%s\nserver log:\n%s",
			attempt, port, err, bytes.TrimSpace(out), tail))
		if !portTaken(tail) || ctx.Err() != nil {
			break
		}
		// A postmaster that failed to bind has exited; make sure.
		if pid := readPostmasterPID(s.dataDir); pid != 0 {
			_ = killTree(pid)
		}
	}
	return errors.Join(errs...)
}

func portTaken(log string) bool {
	for _, m := range []string{"could not bind", "Address already in use", "could not create any TCP/IP sockets"} {
		if strings.Contains(log, m) {
			return true
		}
	}
	return false
}

// pickPort is freePort, replaced by tests.
var pickPort = freePort

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, err
	}
	return port, nil
}

// watchdogScript waits for its standard input, a pipe held by the test
// process, to close. That happens when the test process exits in any way,
// including a timeout, os.Exit or SIGKILL, where no cleanup runs. Stop kills
// the watchdog before it can act. Then, if the postmaster is still the one
// of our data dir, it shuts it down immediately and removes the directory.
const watchdogScript = `
cat >/dev/null
pid=$1 data=$2 base=$3
if [ -r "/proc/$pid/cmdline" ]; then
	tr '\000' '\n' <"/proc/$pid/cmdline" | grep -qxF -- "$data" || exit 0
fi
kill -QUIT "$pid" 2>/dev/null || exit 0
i=0
while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 300 ]; do
	if [ -r "/proc/$pid/stat" ] && [ "$(cut -d' ' -f3 "/proc/$pid/stat")" = Z ]; then
		break
	fi
	sleep 0.1
	i=$((i + 1))
done
kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
rm -rf -- "$base"
`

// startWatchdog starts a process, as the server's user and in its own
// session, that stops the server if the test process dies without running
// its cleanups.
func (s *Server) startWatchdog() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.startWatchdogLocked()
}

func (s *Server) startWatchdogLocked() error {
	cmd := exec.Command("/bin/sh", "-c", watchdogScript, "pgtest-watchdog",
		strconv.Itoa(s.pid), s.dataDir, s.baseDir)
	s.prepare(cmd)
	cmd.SysProcAttr.Setsid = true
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the watchdog: %w", err)
	}
	s.watchdog, s.watchdogIn = cmd, in
	return nil
}

// createDatabase waits until the server accepts connections and creates
// s.Database.
func (s *Server) createDatabase(ctx context.Context) error {
	var conn *pgx.Conn
	var err error
	for {
		attemptCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err = pgx.Connect(attemptCtx, s.dsn(s.Addr(), "postgres"))
		cancel()
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("server on %s does not accept connections: %w", s.Addr(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{s.Database}.Sanitize()); err != nil {
		return fmt.Errorf("creating database %s: %w", s.Database, err)
	}
	return nil
}

func readPostmasterPID(dataDir string) int {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// processAlive reports whether pid is a running (not zombie) process.
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// pid (comm) state ...; comm may hold spaces and parentheses.
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && len(b) > i+2 && b[i+2] == 'Z' {
			return false
		}
	}
	return true
}

// children returns the pids of the processes whose parent is pid, where
// /proc allows to know.
func children(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var kids []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(b[i+1:]))
		if len(fields) >= 2 && fields[1] == strconv.Itoa(pid) {
			kids = append(kids, child)
		}
	}
	return kids
}

// killTree kills the postmaster pid and its children with SIGKILL and waits
// for them to be gone.
func killTree(pid int) error {
	pids := append([]int{pid}, children(pid)...)
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var alive []int
		for _, p := range pids {
			if processAlive(p) {
				alive = append(alive, p)
			}
		}
		if len(alive) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("PostgreSQL processes %v survive SIGKILL", alive)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logTail returns the last lines of the server log.
func logTail(path string) string {
	const maxBytes, maxLines = 8 << 10, 40
	if path == "" {
		return ""
	}
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > maxBytes {
		_, _ = f.Seek(-maxBytes, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return strings.Join(lines, "\n")
}
