package agent

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/tetherhq/tether/protocol/identity"
)

// reloadDelay lets a burst of file events (an editor's write, rename and
// chmod) settle before the files are read.
const reloadDelay = 200 * time.Millisecond

// ConfigError is the last config file problem, or "" once a valid file
// was applied.
func (a *Agent) ConfigError() string {
	if p := a.configErr.Load(); p != nil {
		return *p
	}
	return ""
}

// watchFiles reloads the config file (services) and the certificate, key
// and CA files when they change, until ctx ends. It watches the
// directories, not the files, so that editors and tools that replace a
// file by renaming a new one over it are seen too.
func (a *Agent) watchFiles(ctx context.Context) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		a.log.Warn("cannot watch files for changes; restart the agent to apply them", "err", err)
		return
	}
	defer w.Close()
	cfgPath := ""
	if a.cfg.ConfigFile != "" {
		if cfgPath, err = filepath.Abs(a.cfg.ConfigFile); err != nil {
			cfgPath = a.cfg.ConfigFile
		}
	}
	stateDir, err := filepath.Abs(a.state.Dir)
	if err != nil {
		stateDir = a.state.Dir
	}
	dirs := []string{stateDir}
	if cfgPath != "" && filepath.Dir(cfgPath) != stateDir {
		dirs = append(dirs, filepath.Dir(cfgPath))
	}
	for _, d := range dirs {
		if err := w.Add(d); err != nil {
			a.log.Warn("cannot watch directory for changes", "dir", d, "err", err)
		}
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var cfgChanged, certChanged bool
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			name, _ := filepath.Abs(ev.Name)
			switch {
			case name == cfgPath:
				cfgChanged = true
			case filepath.Dir(name) == stateDir && (filepath.Base(name) == certFile || filepath.Base(name) == keyFile || filepath.Base(name) == caFile):
				certChanged = true
			default:
				continue
			}
			timer.Reset(reloadDelay)
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			a.log.Warn("file watcher", "err", err)
		case <-timer.C:
			if cfgChanged {
				a.reloadConfig(cfgPath)
			}
			if certChanged {
				a.reloadCertificate()
			}
			cfgChanged, certChanged = false, false
		}
	}
}

// reloadConfig applies a changed config file's services. A file that does
// not parse or validate changes nothing: the agent keeps the services it
// has, logs the problem and keeps it for the relay to show. Settings other
// than services take effect at the next restart.
func (a *Agent) reloadConfig(path string) {
	c, err := LoadConfig(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			a.log.Warn("config file removed; keeping the services in use", "file", path)
			return
		}
		msg := err.Error()
		if old := a.configErr.Swap(&msg); old == nil || *old != msg {
			a.rep.change()
		}
		a.log.Error("config file has errors; keeping the services in use", "file", path, "err", err)
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
	if maps.EqualFunc(old, svcs, func(x, y Service) bool { return x.Address == y.Address && slices.Equal(x.Backends, y.Backends) }) {
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
		a.log.Info("services reloaded: new streams use them; streams already open continue",
			"added", added, "removed", removed, "changed", changed, "services", len(svcs))
	}
	if restart := a.needsRestart(c); len(restart) > 0 {
		a.log.Warn("config changes that take effect at the next restart", "settings", restart)
	}
}

// needsRestart lists the settings of c, other than services, that differ
// from those the agent runs with.
func (a *Agent) needsRestart(c Config) []string {
	var out []string
	cur := a.cfg
	if len(c.Relays) > 0 && !slices.Equal(c.Relays, cur.Relays) {
		out = append(out, "relays")
	}
	if c.Transport != "" && c.Transport != cur.Transport {
		out = append(out, "transport")
	}
	if k := cmp.Or(c.RelayConnections, c.Connections); k != 0 && k != cur.RelayConnections {
		out = append(out, "relay_connections")
	}
	if c.StateDir != cur.StateDir {
		out = append(out, "state_dir")
	}
	if c.Proxy != cur.Proxy || c.NoProxy != cur.NoProxy {
		out = append(out, "proxy")
	}
	if c.Log != cur.Log {
		out = append(out, "log")
	}
	if c.AccessLog != cur.AccessLog {
		out = append(out, "access_log")
	}
	return out
}

// reloadCertificate picks up a certificate, key or CA file replaced from
// outside (the agent's own renewals install theirs directly). Files are
// only read: a pair caught halfway through a replacement does not load and
// is tried again at the next change. The identity must stay the same.
func (a *Agent) reloadCertificate() {
	dir := a.state.Dir
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, certFile), filepath.Join(dir, keyFile))
	if err != nil {
		a.log.Debug("certificate files changed but do not load as a pair (yet)", "err", err)
		return
	}
	if cur := a.cert.Load(); cur != nil && len(cur.Certificate) > 0 && bytes.Equal(cur.Certificate[0], pair.Certificate[0]) {
		return // our own renewal, or no change
	}
	id, err := identity.AgentFromCertificate(pair.Leaf, a.state.TrustDomain)
	if err != nil || id.Tenant != a.state.Tenant || id.ID != a.state.AgentID {
		a.log.Error("new certificate file is not this agent's identity; keeping the current one", "err", fmt.Sprint(err), "want_agent", a.state.AgentID)
		return
	}
	if time.Now().After(pair.Leaf.NotAfter) {
		a.log.Error("new certificate file has expired; keeping the current one", "not_after", pair.Leaf.NotAfter)
		return
	}
	if caPEM, err := os.ReadFile(filepath.Join(dir, caFile)); err == nil {
		roots := x509.NewCertPool()
		if roots.AppendCertsFromPEM(caPEM) {
			a.roots.Store(roots)
		}
	}
	a.cert.Store(&pair)
	a.certAt.Store(time.Now().UnixNano())
	a.rep.change()
	a.log.Info("certificate reloaded from its file; new connections use it", "not_after", pair.Leaf.NotAfter.Format(time.RFC3339))
}
