package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"aead.dev/minisign"

	"github.com/tetherhq/tether/agent/accesslog"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/release"
	"github.com/tetherhq/tether/protocol/transport"
)

// logSeen is a slog handler that logs to the test and counts the messages
// logged, for a test to wait on.
type logSeen struct {
	slog.Handler
	mu   *sync.Mutex
	seen map[string]int
}

func (h logSeen) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	h.seen[r.Message]++
	h.mu.Unlock()
	return h.Handler.Handle(ctx, r)
}

func (h logSeen) WithAttrs(as []slog.Attr) slog.Handler {
	return logSeen{h.Handler.WithAttrs(as), h.mu, h.seen}
}

func (h logSeen) WithGroup(name string) slog.Handler {
	return logSeen{h.Handler.WithGroup(name), h.mu, h.seen}
}

func (h logSeen) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seen[msg]
}

// wait waits until msg has been logged n times in all.
func (h logSeen) wait(t *testing.T, msg string, n int) {
	t.Helper()
	waitFor(t, 5*time.Second, fmt.Sprintf("%d× %q in the log", n, msg), func() error {
		if h.count(msg) < n {
			return errNotYet
		}
		return nil
	})
}

// watchLogger is a logger (debug level) for an agent whose log lines the
// test waits on.
func watchLogger(t *testing.T) (*slog.Logger, logSeen) {
	h := logSeen{slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}), new(sync.Mutex), map[string]int{}}
	return slog.New(h), h
}

// startWatch runs a.watchFiles until the test ends, and returns once it
// watches the files.
func startWatch(t *testing.T, a *Agent, log logSeen) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.watchFiles(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	log.wait(t, "watching files for changes", 1)
}

// waitServices waits until the agent's services are exactly want.
func waitServices(t *testing.T, a *Agent, what string, want ...string) {
	t.Helper()
	waitFor(t, 5*time.Second, what, func() error {
		got := *a.services.Load()
		if len(got) != len(want) {
			return fmt.Errorf("services %v, want %v", got, want)
		}
		for _, n := range want {
			if _, ok := got[n]; !ok {
				return fmt.Errorf("services %v, want %v", got, want)
			}
		}
		return nil
	})
}

// k8sVolume is a directory laid out and updated as kubelet does a
// ConfigMap or Secret volume: each file name is a link to ..data/<name>,
// ..data a link to the current version's directory.
type k8sVolume struct {
	t   *testing.T
	dir string
	ver int
}

// update writes files as the volume's next version and swaps ..data to it
// (new directory, ..data_tmp link, rename over ..data, old one removed).
func (v *k8sVolume) update(files map[string][]byte) {
	t := v.t
	t.Helper()
	v.ver++
	ver := fmt.Sprintf("..2024_01_01_00_00_%02d.%d", v.ver, v.ver)
	if err := os.Mkdir(filepath.Join(v.dir, ver), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(v.dir, ver, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(v.dir, name)); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
	}
	old, _ := os.Readlink(filepath.Join(v.dir, "..data"))
	if err := os.Symlink(ver, filepath.Join(v.dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(v.dir, "..data_tmp"), filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(v.dir, old)); err != nil {
			t.Fatal(err)
		}
	}
}

const reloadTestHead = "state_dir: /unused\n"

// TestReloadConfigSymlinkSwap: a config file mounted from a Kubernetes
// ConfigMap (agent.yaml -> ..data/agent.yaml) is reloaded when the volume
// is updated, although no event names agent.yaml.
func TestReloadConfigSymlinkSwap(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	vol := &k8sVolume{t: t, dir: t.TempDir()}
	vol.update(map[string][]byte{"agent.yaml": []byte(reloadTestHead + "services:\n  db: 127.0.0.1:5432\n")})
	logger, seen := watchLogger(t)
	a := enrolledWith(t, Config{ConfigFile: filepath.Join(vol.dir, "agent.yaml"), Logger: logger,
		Services: map[string]Service{"db": {Address: "127.0.0.1:5432"}}}, root, root)
	startWatch(t, a, seen)

	vol.update(map[string][]byte{"agent.yaml": []byte(reloadTestHead + "services:\n  api: 127.0.0.1:8080\n")})
	waitServices(t, a, "the ConfigMap update", "api")
	vol.update(map[string][]byte{"agent.yaml": []byte(reloadTestHead + "services: {}\n")})
	waitServices(t, a, "the second ConfigMap update")
}

// TestReloadConfigSymlinkTarget: a config file that is a link to a file in
// another directory is reloaded when that file is edited in place.
func TestReloadConfigSymlinkTarget(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	real := filepath.Join(t.TempDir(), "agent.yaml")
	link := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(real, []byte(reloadTestHead+"services:\n  db: 127.0.0.1:5432\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	logger, seen := watchLogger(t)
	a := enrolledWith(t, Config{ConfigFile: link, Logger: logger, Services: map[string]Service{"db": {Address: "127.0.0.1:5432"}}}, root, root)
	startWatch(t, a, seen)

	if err := os.WriteFile(real, []byte(reloadTestHead+"services:\n  api: 127.0.0.1:8080\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitServices(t, a, "editing the link's target", "api")
}

// TestReloadConfigSymlinkRetarget: when the config link is pointed at a
// file in a third directory, that file is applied, and editing it in place
// later is seen too (the new target's directory is watched).
func TestReloadConfigSymlinkRetarget(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	first := filepath.Join(t.TempDir(), "agent.yaml")
	second := filepath.Join(t.TempDir(), "agent.yaml")
	linkDir := t.TempDir()
	link := filepath.Join(linkDir, "agent.yaml")
	if err := os.WriteFile(first, []byte(reloadTestHead+"services:\n  db: 127.0.0.1:5432\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(second, []byte(reloadTestHead+"services:\n  api: 127.0.0.1:8080\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(first, link); err != nil {
		t.Fatal(err)
	}
	logger, seen := watchLogger(t)
	a := enrolledWith(t, Config{ConfigFile: link, Logger: logger, Services: map[string]Service{"db": {Address: "127.0.0.1:5432"}}}, root, root)
	startWatch(t, a, seen)

	// Point the link at second, as ln -sfn does.
	if err := os.Symlink(second, filepath.Join(linkDir, ".tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(linkDir, ".tmp"), link); err != nil {
		t.Fatal(err)
	}
	waitServices(t, a, "pointing the link at another file", "api")
	if err := os.WriteFile(second, []byte(reloadTestHead+"services:\n  web: 127.0.0.1:8081\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitServices(t, a, "editing the new target", "web")
}

// TestReloadConfigKeepsServices: an invalid config file and a removed one
// keep the services in use; a valid one written afterwards is applied.
func TestReloadConfigKeepsServices(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte(reloadTestHead+"services:\n  db: 127.0.0.1:5432\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	logger, seen := watchLogger(t)
	a := enrolledWith(t, Config{ConfigFile: path, Logger: logger, Services: map[string]Service{"db": {Address: "127.0.0.1:5432"}}}, root, root)
	startWatch(t, a, seen)

	if err := os.WriteFile(path, []byte(reloadTestHead+"services:\n  api: {address: nowhere}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the config error", func() error {
		if a.ConfigError() == "" {
			return errNotYet
		}
		return nil
	})
	waitServices(t, a, "an invalid config", "db")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	seen.wait(t, "config file removed; keeping the services in use", 1)
	waitServices(t, a, "a removed config", "db")
	if err := os.WriteFile(path, []byte(reloadTestHead+"services:\n  api: 127.0.0.1:8080\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitServices(t, a, "a valid config again", "api")
	if e := a.ConfigError(); e != "" {
		t.Errorf("config error after a valid file: %q", e)
	}
}

// TestReloadCertificateSymlinkSwap: certificate, key and CA files mounted
// in the state directory from a Kubernetes Secret are reloaded when the
// volume is updated, although no event names them.
func TestReloadCertificateSymlinkSwap(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	logger, seen := watchLogger(t)
	a := enrolledWith(t, Config{Logger: logger, Services: map[string]Service{}}, root, root)
	// Make the state directory a Secret volume holding the same files.
	dir := a.state.Dir
	files := map[string][]byte{}
	for _, name := range []string{certFile, keyFile, caFile} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		files[name] = data
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	vol := &k8sVolume{t: t, dir: dir}
	vol.update(files)
	startWatch(t, a, seen)

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	id := identity.Agent{TrustDomain: a.state.TrustDomain, Tenant: a.state.Tenant, ID: a.state.AgentID}
	cert := root.issue(t, id, key)
	vol.update(map[string][]byte{certFile: pemBlock("CERTIFICATE", cert.Raw), keyFile: pemBlock("PRIVATE KEY", kder), caFile: files[caFile]})
	waitFor(t, 5*time.Second, "the new certificate", func() error {
		if c := a.cert.Load(); c == nil || c.Leaf == nil || !c.Leaf.Equal(cert) {
			return errNotYet
		}
		return nil
	})
}

// TestReloadCAFile: a CA file replaced from outside, with the certificate
// unchanged, is applied on its own: a new set of roots is trusted for the
// next connections; a file that is not the agent's trust domain's roots
// is refused and the roots in use kept.
func TestReloadCAFile(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	next := newTestRoot(t, "tether.internal", "next")
	logger, seen := watchLogger(t)
	a := enrolledWith(t, Config{Logger: logger, Services: map[string]Service{}}, root, root)
	startWatch(t, a, seen)
	path := filepath.Join(a.state.Dir, caFile)
	if err := os.WriteFile(path, rootsPEM([]*x509.Certificate{root.cert, next.cert}), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "both roots trusted", func() error {
		if len(*a.rootList.Load()) != 2 {
			return errNotYet
		}
		return nil
	})
	if _, err := next.issue(t, identity.Agent{TrustDomain: "tether.internal", Tenant: "acme", ID: "relay"}, mustKey(t)).Verify(x509.VerifyOptions{Roots: a.roots.Load(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("a certificate from the new root does not verify against the roots in use: %v", err)
	}
	other := newTestRoot(t, "other.internal", "other")
	if err := os.WriteFile(path, rootsPEM([]*x509.Certificate{other.cert}), 0o600); err != nil {
		t.Fatal(err)
	}
	seen.wait(t, "CA file does not load; keeping the CA roots in use", 1)
	if n := len(*a.rootList.Load()); n != 2 {
		t.Fatalf("%d roots after a CA file of another trust domain, want the 2 in use", n)
	}
}

func mustKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// TestReloadReleaseKeys: a release key removed from a running agent's
// config file is trusted no longer, and one added is trusted, without a
// restart: a tenant who learns that a release key leaked takes it out of
// the file and is safe from then on.
func TestReloadReleaseKeys(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	type key struct {
		priv minisign.PrivateKey
		pub  string
	}
	newKey := func() key {
		privText, pub, err := release.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		priv, err := release.ParsePrivateKey(privText)
		if err != nil {
			t.Fatal(err)
		}
		return key{priv, string(pub)}
	}
	leaked, next := newKey(), newKey()
	signedBy := func(k key) release.Signed {
		bin := []byte("agent binary")
		sum := sha256.Sum256(bin)
		s, err := release.Sign(k.priv, release.Manifest{Version: "2.0.0", OS: "linux", Arch: "amd64", Channel: "stable",
			Size: int64(len(bin)), SHA256: hex.EncodeToString(sum[:]), Expires: time.Now().Add(time.Hour)}, bin)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	path := filepath.Join(t.TempDir(), "agent.yaml")
	logger, seen := watchLogger(t)
	a := enrolledWith(t, Config{ConfigFile: path, Logger: logger, Services: map[string]Service{"db": {Address: "127.0.0.1:5432"}},
		Update: UpdateConfig{PublicKeys: []string{leaked.pub}}}, root, root)
	fileWith := func(k key) []byte {
		return []byte("state_dir: " + strconv.Quote(a.cfg.StateDir) + "\nservices:\n  db: 127.0.0.1:5432\nupdate:\n  public_keys:\n    - " + strconv.Quote(k.pub) + "\n")
	}
	if err := os.WriteFile(path, fileWith(leaked), 0o644); err != nil {
		t.Fatal(err)
	}
	upd, err := newUpdater(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	a.upd = upd
	trusts := func(k key) bool {
		s := signedBy(k)
		_, _, err := a.upd.trustedKeys().Verify(s.Manifest, s.ManifestSignature)
		return err == nil
	}
	if !trusts(leaked) || trusts(next) {
		t.Fatal("at start the agent does not trust exactly the config file's key")
	}
	startWatch(t, a, seen)

	if err := os.WriteFile(path, fileWith(next), 0o644); err != nil {
		t.Fatal(err)
	}
	seen.wait(t, "update: release keys reloaded from the config file", 1)
	if trusts(leaked) {
		t.Error("a release key removed from the config file is still trusted")
	}
	if !trusts(next) {
		t.Error("a release key added to the config file is not trusted")
	}
	if n := seen.count("config changes that take effect at the next restart"); n != 0 {
		t.Errorf("a change of release keys alone was said to need a restart (%d×)", n)
	}
}

// TestReloadNamesSettingsNeedingRestart: a changed config file names every
// changed setting that is not applied live, by its name in the file, and
// a setting written out at its default is no change.
func TestReloadNamesSettingsNeedingRestart(t *testing.T) {
	_, pub, err := release.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: Config{StateDir: "/x", Relays: []string{"relay.example:7443"}}}
	a.cfg.setDefaults()
	proxyCA := newPrivateCA(t).file
	for _, tc := range []struct {
		yaml string
		want []string
	}{
		{"", nil},
		{"dial_timeout: 10s\nrelay_connections: 2\nupdate: {channel: stable, public_keys: [" + strconv.Quote(string(pub)) + "]}\nrelays: [relay.example:7443]\n", nil},
		{"dial_timeout: 3s\n", []string{"dial_timeout"}},
		{"idle_timeout: 5m\ndrain_timeout: 30s\n", []string{"idle_timeout", "drain_timeout"}},
		{"status_listen: 127.0.0.1:7456\ndebug_listen: 127.0.0.1:6060\n", []string{"debug_listen", "status_listen"}},
		{"report_interval: 1m\n", []string{"report_interval"}},
		{"reconnect: {max: 1m}\n", []string{"reconnect.max"}},
		{"quic_timeout: 1s\nquic_retry: 1m\n", []string{"quic_timeout", "quic_retry"}},
		{"update: {channel: beta, health_timeout: 5m, download_timeout: 1m, restart: exit}\n", []string{"update.channel", "update.download_timeout", "update.health_timeout", "update.restart"}},
		{"access_log: {max_files: 3}\n", []string{"access_log.max_files"}},
		{"log: {level: debug}\n", []string{"log.level"}},
		{"relays: [other.example:7443]\ntransport: tcp\n", []string{"relays", "transport"}},
		{"connections: 4\n", []string{"relay_connections"}},
		{"proxy: http://proxy.example:3128\n", []string{"proxy"}},
		{"proxy: https://proxy.example:3128\nproxy_ca_file: " + strconv.Quote(proxyCA) + "\n", []string{"proxy", "proxy_ca_file"}},
	} {
		c, err := ParseConfig([]byte("state_dir: /x\n" + tc.yaml))
		if err != nil {
			t.Fatalf("%q: %v", tc.yaml, err)
		}
		if got := a.needsRestart(c); !slices.Equal(got, tc.want) {
			t.Errorf("%q: needs a restart: %q, want %q", tc.yaml, got, tc.want)
		}
	}
}

// A config file caught while it is being written, cut off after
// "backends:", does not open the service to every backend: it is an
// error, and the agent keeps the services it has, the list included.
func TestReloadConfigCutAfterBackends(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	path := filepath.Join(t.TempDir(), "agent.yaml")
	full := reloadTestHead + "services:\n  db:\n    address: 127.0.0.1:5432\n    backends:\n      - billing\n"
	if err := os.WriteFile(path, []byte(full), 0o644); err != nil {
		t.Fatal(err)
	}
	logger, seen := watchLogger(t)
	a := enrolledWith(t, Config{ConfigFile: path, Logger: logger, Services: map[string]Service{"db": {Address: "127.0.0.1:5432", Backends: []string{"billing"}}}}, root, root)
	startWatch(t, a, seen)

	cut := full[:strings.Index(full, "      - billing")]
	if err := os.WriteFile(path, []byte(cut), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the config error", func() error {
		if a.ConfigError() == "" {
			return errNotYet
		}
		return nil
	})
	if e := a.ConfigError(); !strings.Contains(e, "backends is empty") {
		t.Errorf("config error %q, want one saying backends is empty", e)
	}
	db := (*a.services.Load())["db"]
	if db.allows("backend:analytics") || !db.allows("backend:billing") {
		t.Errorf("after a file cut off after backends: db is %+v, want it to allow billing only", db)
	}
}

// A reload that removes a service, changes its address or takes a
// backend off its list cuts the streams open that it no longer allows,
// at once: their service connection and the stream to the relay are
// reset, and the access log records them as cut, saying why. Streams the
// new config still allows carry on.
func TestReloadCutsStreamsNoLongerAllowed(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	echo, other := echoService(t), echoService(t)
	cfg := func(db bool, repBackends, movedAddr string) string {
		y := reloadTestHead + "services:\n"
		if db {
			y += "  db: " + echo + "\n"
		}
		return y + "  api: " + echo + "\n  rep: {address: " + echo + ", backends: [" + repBackends + "]}\n  moved: " + movedAddr + "\n"
	}
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte(cfg(true, "billing, other", echo)), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := ParseConfig([]byte(cfg(true, "billing, other", echo)))
	if err != nil {
		t.Fatal(err)
	}
	logger, seen := watchLogger(t)
	a := enrolledWith(t, Config{ConfigFile: path, Logger: logger, Services: c.Services}, root, root)
	stopLog := runAccessLog(t, a)
	s, rs := relayPair(t, a)
	startWatch(t, a, seen)

	streams := map[string]transport.Stream{}
	for _, h := range []protocol.StreamHeader{
		{Service: "db", Backend: "backend:billing", RequestID: "r-db"},
		{Service: "api", Backend: "backend:billing", RequestID: "r-api"},
		{Service: "rep", Backend: "backend:billing", RequestID: "r-rep-billing"},
		{Service: "rep", Backend: "backend:other", RequestID: "r-rep-other"},
		{Service: "moved", Backend: "backend:billing", RequestID: "r-moved"},
	} {
		st, err := openStream(t, s, rs, h)
		if err != nil {
			t.Fatalf("%s: %v", h.RequestID, err)
		}
		if err := roundTrip(st, "before"); err != nil {
			t.Fatalf("%s: %v", h.RequestID, err)
		}
		streams[h.RequestID] = st
	}

	if err := os.WriteFile(path, []byte(cfg(false, "other", other)), 0o644); err != nil {
		t.Fatal(err)
	}
	waitServices(t, a, "the new config", "api", "rep", "moved")
	for _, req := range []string{"r-db", "r-rep-billing", "r-moved"} {
		st := streams[req]
		st.SetDeadline(time.Now().Add(5 * time.Second))
		var ne net.Error
		if _, err := io.Copy(io.Discard, st); err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("%s: the stream the new config does not allow ended with %v, want a reset", req, err)
		}
	}
	for _, req := range []string{"r-api", "r-rep-other"} {
		streams[req].SetDeadline(time.Now().Add(5 * time.Second))
		if err := roundTrip(streams[req], "after"); err != nil {
			t.Errorf("%s: the stream the new config allows: %v", req, err)
		}
		streams[req].CloseWrite()
		io.Copy(io.Discard, streams[req])
	}
	for _, st := range streams {
		st.Close()
	}
	s.close()
	stopLog()

	got := map[string]accesslog.Entry{}
	err = accesslog.Read(a.cfg.AccessLogPath(), func(file string, n int, e accesslog.Entry, _ []byte, err error) error {
		if err != nil {
			return fmt.Errorf("%s:%d: %w", file, n, err)
		}
		if e.Type == accesslog.TypeStream {
			got[e.Request] = e
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for req, want := range map[string]string{
		"r-db":          "removed",
		"r-rep-billing": "no longer allows this backend",
		"r-moved":       "address changed",
		"r-api":         "",
		"r-rep-other":   "",
	} {
		e := got[req]
		switch {
		case want != "" && (e.End != accesslog.EndCut || !strings.Contains(e.Message, want)):
			t.Errorf("%s: logged end %q message %q, want cut saying %q", req, e.End, e.Message, want)
		case want == "" && (e.End != accesslog.EndClosed || e.Message != ""):
			t.Errorf("%s: logged end %q message %q, want closed", req, e.End, e.Message)
		}
	}
}
