package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/tetherhq/tether/protocol/identity"
)

// reloadDelay lets a burst of file events (an editor's write, rename and
// chmod; Kubernetes' new directory, new link and rename) settle before the
// files are read.
const reloadDelay = 200 * time.Millisecond

// reloadMaxDelay bounds how long events that keep coming (a busy watched
// directory) can put the reading of the files off.
const reloadMaxDelay = 2 * time.Second

// maxLinks bounds the symbolic links followed from one file (Linux's
// limit).
const maxLinks = 40

// ConfigError is the last config file problem, or "" once a valid file
// was applied.
func (a *Agent) ConfigError() string {
	if p := a.configErr.Load(); p != nil {
		return *p
	}
	return ""
}

// ProxyCAError is the last problem with the proxy_ca_file the watcher
// read (the CAs in use stay), or "" once it loads.
func (a *Agent) ProxyCAError() string {
	if p := a.proxyCAErr.Load(); p != nil {
		return *p
	}
	return ""
}

// watchFiles reloads the config file (services), the certificate, key
// and CA files and the proxy_ca_file when they change, until ctx ends. It
// watches directories, not files: the config file's, the state
// directory and the proxy_ca_file's, and, where one of
// these files is a symbolic link, the directories the link leads through.
// Any event there, whatever it names, has the files read again once the
// events settle, and what reads differently from the last time is applied.
// So a file written in place, a new file renamed over it, a link swapped to
// a new target (as Kubernetes updates ConfigMap and Secret volumes: it
// renames a new ..data link over the old one) and a link's target edited
// in its own directory are all seen.
func (a *Agent) watchFiles(ctx context.Context) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		a.log.Warn("cannot watch files for changes; restart the agent to apply them", "err", err)
		return
	}
	defer w.Close()
	f := &fileWatch{a: a, w: w, dirs: map[string]bool{}, failed: map[string]bool{}}
	if f.stateDir, err = filepath.Abs(a.state.Dir); err != nil {
		f.stateDir = a.state.Dir
	}
	if a.cfg.ConfigFile != "" {
		if f.cfgPath, err = filepath.Abs(a.cfg.ConfigFile); err != nil {
			f.cfgPath = a.cfg.ConfigFile
		}
	}
	if a.cfg.ProxyCAFile != "" {
		if f.proxyCAPath, err = filepath.Abs(a.cfg.ProxyCAFile); err != nil {
			f.proxyCAPath = a.cfg.ProxyCAFile
		}
	}
	f.watchDirs()
	// Read the files once now, so that later events have something to be
	// compared with and a change made since the agent loaded them is not
	// missed.
	if f.cfgPath != "" {
		f.startConfig()
	}
	f.checkCertificate()
	f.checkProxyCAs()
	a.log.Debug("watching files for changes", "config", f.cfgPath, "dirs", slices.Sorted(maps.Keys(f.dirs)))

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var first time.Time // the first event of the burst that timer waits out; zero if none
	settle := func() {
		now := time.Now()
		if first.IsZero() {
			first = now
		}
		timer.Reset(max(0, min(reloadDelay, first.Add(reloadMaxDelay).Sub(now))))
	}
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-w.Events:
			if !ok {
				return
			}
			settle()
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			// Events may have been lost (a queue overflow): read the files
			// again anyway.
			a.log.Warn("file watcher", "err", err)
			settle()
		case <-timer.C:
			first = time.Time{}
			if f.watchDirs() {
				a.log.Debug("watching other directories for file changes", "dirs", slices.Sorted(maps.Keys(f.dirs)))
			}
			if f.cfgPath != "" {
				f.checkConfig()
			}
			f.checkCertificate()
			f.checkProxyCAs()
		}
	}
}

// fileWatch is what watchFiles watches and what it last read.
type fileWatch struct {
	a        *Agent
	w        *fsnotify.Watcher
	stateDir string // absolute
	cfgPath  string // absolute; "" without a config file

	dirs   map[string]bool // directories watched
	failed map[string]bool // directories that could not be watched (logged once)

	cfg     []byte // the config file's content at the last read, if cfgRead
	cfgRead bool
	cfgGone bool // the config file was missing at the last read

	certs [3][sha256.Size]byte // the certificate, key and CA files at the last read

	proxyCAPath string            // proxy_ca_file, absolute; "" when unset
	proxyCA     [sha256.Size]byte // what the proxy_ca_file read (or why not) at the last read
}

// watchDirs watches the directories that decide what the config and
// certificate files read (linkDirs), and stops watching those that no
// longer do: after a link swap, the old target's directory. A directory
// that was removed and made again is watched again. It reports whether
// the directories watched changed.
func (f *fileWatch) watchDirs() bool {
	want := map[string]bool{}
	paths := []string{filepath.Join(f.stateDir, certFile), filepath.Join(f.stateDir, keyFile), filepath.Join(f.stateDir, caFile)}
	if f.cfgPath != "" {
		paths = append(paths, f.cfgPath)
	}
	if f.proxyCAPath != "" {
		paths = append(paths, f.proxyCAPath)
	}
	for _, p := range paths {
		for _, d := range linkDirs(p) {
			want[d] = true
		}
	}
	have := f.w.WatchList()
	changed := false
	for d := range f.dirs {
		if !want[d] {
			if slices.Contains(have, d) {
				f.w.Remove(d) // an error means the directory is gone, and so is its watch
			}
			delete(f.dirs, d)
			changed = true
		}
	}
	for d := range want {
		if f.dirs[d] && slices.Contains(have, d) {
			continue
		}
		if err := f.w.Add(d); err != nil {
			if !f.failed[d] {
				f.a.log.Warn("cannot watch directory for changes", "dir", d, "err", err)
			}
			f.failed[d] = true
			delete(f.dirs, d)
			continue
		}
		delete(f.failed, d)
		changed = changed || !f.dirs[d]
		f.dirs[d] = true
	}
	for d := range f.failed {
		if !want[d] {
			delete(f.failed, d)
		}
	}
	return changed
}

// linkDirs returns the directories whose entries decide what path reads:
// its own, and that of each symbolic link met on the way to the file
// (Kubernetes mounts agent.yaml -> ..data/agent.yaml, with ..data a link
// to the current version's directory; a link may also lead to another
// directory altogether). Each is given with its own links resolved, so
// that one directory is watched under one name.
func linkDirs(path string) []string {
	var dirs []string
	p := filepath.Clean(path)
	for range maxLinks {
		dir := filepath.Dir(p)
		if r, err := filepath.EvalSymlinks(dir); err == nil {
			dir = r
		}
		if !slices.Contains(dirs, dir) {
			dirs = append(dirs, dir)
		}
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			break
		}
		target, err := os.Readlink(p)
		if err != nil {
			break
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(dir, target) // relative to the link's real directory
		}
		p = filepath.Clean(target)
	}
	return dirs
}

// startConfig reads the config file for later reads to be compared with.
// If its services are the ones in use, that is all; otherwise the file
// changed since the agent loaded it, and it is applied.
func (f *fileWatch) startConfig() {
	if data, err := os.ReadFile(f.cfgPath); err == nil {
		if c, err := ParseConfig(data); err == nil && sameServices(c.Services, *f.a.services.Load()) {
			f.cfg, f.cfgRead = data, true
			return
		}
	}
	f.checkConfig()
}

// checkConfig reads the config file and applies it if it reads
// differently from the last time. A missing file keeps the services in use
// (logged once); it is applied again when it comes back.
func (f *fileWatch) checkConfig() {
	data, err := os.ReadFile(f.cfgPath)
	if errors.Is(err, fs.ErrNotExist) {
		if !f.cfgGone {
			f.a.log.Warn("config file removed; keeping the services in use", "file", f.cfgPath)
		}
		f.cfg, f.cfgRead, f.cfgGone = nil, false, true
		return
	}
	f.cfgGone = false
	if err != nil {
		f.cfg, f.cfgRead = nil, false
		f.a.configFailed(f.cfgPath, fmt.Errorf("read config: %w", err))
		return
	}
	if f.cfgRead && bytes.Equal(data, f.cfg) {
		return
	}
	f.cfg, f.cfgRead = data, true
	f.a.reloadConfig(f.cfgPath, data)
}

// checkCertificate reads the certificate, key and CA files and, if they
// read differently from the last time, has reloadCertificate look at them:
// the agent's own renewals and a pair caught halfway through a replacement
// are looked at once, not at every event in the directory.
func (f *fileWatch) checkCertificate() {
	var files [3][]byte
	var sums [3][sha256.Size]byte
	for i, name := range []string{certFile, keyFile, caFile} {
		files[i], _ = os.ReadFile(filepath.Join(f.stateDir, name))
		sums[i] = sha256.Sum256(files[i])
	}
	if sums == f.certs {
		return
	}
	f.certs = sums
	f.a.reloadCertificate(files[0], files[1], files[2])
}

// checkProxyCAs reads the proxy_ca_file and, if it reads differently
// from the last time (or fails differently), has reloadProxyCAs apply it:
// a file that stays broken is warned about once, not at every event in
// its directory.
func (f *fileWatch) checkProxyCAs() {
	if f.proxyCAPath == "" {
		return
	}
	data, err := readProxyCAFile(f.proxyCAPath)
	var certs []*x509.Certificate
	sum := sha256.Sum256(data)
	if err == nil {
		certs, err = parseProxyCAs(data)
	} else {
		sum = sha256.Sum256([]byte("error: " + err.Error()))
	}
	if sum == f.proxyCA {
		return
	}
	f.proxyCA = sum
	f.a.reloadProxyCAs(certs, err)
}

// reloadProxyCAs applies what the proxy_ca_file read: its certificates,
// which the next connections to an https:// proxy trust (connections up
// stay), or err, why it does not load: the CAs in use stay, and the
// problem is logged and kept for the status.
func (a *Agent) reloadProxyCAs(certs []*x509.Certificate, err error) {
	file := a.cfg.ProxyCAFile
	if err != nil {
		msg := fmt.Sprintf("proxy_ca_file %s: %v", file, err)
		a.proxyCAErr.Store(&msg)
		a.log.Warn("proxy CA file does not load; keeping the proxy CAs in use", "file", file, "err", err)
		return
	}
	if a.proxyCAErr.Swap(nil) != nil {
		a.log.Info("proxy CA file loads again", "file", file)
	}
	if a.egress.setProxyCAs(certs) {
		a.log.Info("proxy CAs reloaded from their file; new connections to the proxy verify it against them", "file", file, "certificates", len(certs))
	}
}

// reloadConfig applies a changed config file's services (data is what
// the file read), and cuts the open streams they no longer allow. A file that does not parse or validate changes nothing:
// the agent keeps the services it has, logs the problem and keeps it for
// the relay to show. The release keys (update.public_keys) apply at once
// too; other settings take effect at the next restart, and a warning
// names those that changed.
func (a *Agent) reloadConfig(path string, data []byte) {
	c, err := ParseConfig(data)
	if err != nil {
		a.configFailed(path, err)
		return
	}
	if a.configErr.Swap(nil) != nil {
		a.rep.change()
	}
	svcs := c.Services
	if svcs == nil {
		svcs = map[string]Service{}
	}
	old := *a.services.Load()
	if sameServices(old, svcs) {
		a.log.Debug("config file changed; services unchanged", "file", path)
	} else {
		a.services.Store(&svcs)
		a.rep.change()
		var added, removed, changed []string
		for n, s := range svcs {
			o, ok := old[n]
			switch {
			case !ok:
				added = append(added, n)
			case o.Address != s.Address || !slices.Equal(o.Backends, s.Backends):
				changed = append(changed, n)
			}
		}
		for n := range old {
			if _, ok := svcs[n]; !ok {
				removed = append(removed, n)
			}
		}
		slices.Sort(added)
		slices.Sort(removed)
		slices.Sort(changed)
		cut := a.cutDisallowed(svcs)
		a.log.Info("services reloaded: new streams use them; open streams the new config does not allow are cut",
			"added", added, "removed", removed, "changed", changed, "services", len(svcs), "streams_cut", cut)
	}
	if a.upd != nil {
		a.upd.reloadKeys(c.Update.PublicKeys)
	}
	if restart := a.needsRestart(c); len(restart) > 0 {
		a.log.Warn("config changes that take effect at the next restart", "settings", restart)
	}
}

// configFailed keeps err as the config file's problem, for the relay to
// show, and logs it; the services in use stay.
func (a *Agent) configFailed(path string, err error) {
	msg := err.Error()
	if old := a.configErr.Swap(&msg); old == nil || *old != msg {
		a.rep.change()
	}
	a.log.Error("config file has errors; keeping the services in use", "file", path, "err", err)
}

// sameServices reports whether x and y name the same services with the
// same addresses and backends (nil and empty are the same).
func sameServices(x, y map[string]Service) bool {
	return maps.EqualFunc(x, y, func(s, t Service) bool { return s.Address == t.Address && slices.Equal(s.Backends, t.Backends) })
}

// needsRestart lists the settings of c that differ from those the agent
// runs with and take effect only at the next restart, by their names in
// the file (update.channel, dial_timeout): every setting but those applied
// live (liveSettings). c's defaults are those the agent started with.
func (a *Agent) needsRestart(c Config) []string {
	c.setDefaults()
	if len(c.Relays) == 0 {
		c.Relays = a.cfg.Relays // the relay the agent enrolled with
	}
	return changedSettings(reflect.ValueOf(a.cfg), reflect.ValueOf(c), "")
}

// liveSettings are the settings a changed config file applies at once, and
// connections, the old name of relay_connections (both are compared as
// relay_connections).
var liveSettings = map[string]bool{"services": true, "update.public_keys": true, "connections": true}

// changedSettings lists the fields of the structs cur and next (of one
// type) that differ, by their YAML names under prefix, going into nested
// settings; fields that are not settings (yaml:"-") and liveSettings are
// left out.
func changedSettings(cur, next reflect.Value, prefix string) []string {
	var out []string
	t := cur.Type()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if !t.Field(i).IsExported() || name == "" || name == "-" || liveSettings[prefix+name] {
			continue
		}
		x, y := cur.Field(i), next.Field(i)
		if x.Kind() == reflect.Struct {
			out = append(out, changedSettings(x, y, prefix+name+".")...)
		} else if !reflect.DeepEqual(x.Interface(), y.Interface()) {
			out = append(out, prefix+name)
		}
	}
	return out
}

// reloadCertificate picks up a certificate, key or CA file replaced from
// outside (the agent's own renewals install theirs directly), given what
// the three files read. A pair caught halfway through a replacement does
// not load and is tried again at the next change. The identity must stay
// the same. The CA file is read as at start (CA roots of the agent's trust
// domain) and applies on its own too: a new set of roots with the same
// certificate is a change.
func (a *Agent) reloadCertificate(certPEM, keyPEM, caPEM []byte) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		a.log.Debug("certificate files changed but do not load as a pair (yet)", "err", err)
		return
	}
	cur := a.cert.Load()
	newCert := cur == nil || len(cur.Certificate) == 0 || !bytes.Equal(cur.Certificate[0], pair.Certificate[0]) // else our own renewal, or no change
	if newCert {
		id, err := identity.AgentFromCertificate(pair.Leaf, a.state.TrustDomain)
		if err != nil || id.Tenant != a.state.Tenant || id.ID != a.state.AgentID {
			a.log.Error("new certificate file is not this agent's identity; keeping the current one", "err", fmt.Sprint(err), "want_agent", a.state.AgentID)
			return
		}
		if time.Now().After(pair.Leaf.NotAfter) {
			a.log.Error("new certificate file has expired; keeping the current one", "not_after", pair.Leaf.NotAfter)
			return
		}
	}
	newRoots := false
	list, roots, err := parseRoots(caPEM, a.state.TrustDomain)
	switch {
	case err != nil:
		a.log.Warn("CA file does not load; keeping the CA roots in use", "file", filepath.Join(a.state.Dir, caFile), "err", err)
	case !slices.EqualFunc(list, *a.rootList.Load(), (*x509.Certificate).Equal):
		a.rootList.Store(&list)
		a.roots.Store(roots)
		newRoots = true
	}
	if newCert {
		a.cert.Store(&pair)
		a.certAt.Store(time.Now().UnixNano())
		a.log.Info("certificate reloaded from its file; new connections use it", "not_after", pair.Leaf.NotAfter.Format(time.RFC3339))
	}
	if newRoots {
		a.log.Info("CA roots reloaded from their file; new connections verify relays against them", "roots", len(list))
	}
	if newCert || newRoots {
		a.rep.change()
	}
}
