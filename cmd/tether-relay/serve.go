package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay"
)

const serveLong = `Run the relay.

Every setting is a flag, an environment variable TETHER_<NAME> (e.g.
TETHER_AGENT_LISTEN) and a key of the config file (--config FILE or
TETHER_CONFIG; YAML, e.g. "agent_listen: :7443"); a flag wins over the
environment, which wins over the file, which wins over the default. The
file is strict: an unknown key is an error naming it and its line. Every
value is checked once, and so are the settings that go together (such as
advertise_peer and peer_listen); every problem is reported together,
naming where its values came from.

The config file is watched: when it changes, settings that can change live
(log_level, forwards) are applied, and each changed setting that needs a
restart is logged by name. A plain-text front door (SOCKS5, CONNECT) bound
beyond loopback is logged as a warning: API keys cross it in the clear.

A relay-side forward (--forward LISTEN=SERVICE.TENANT@BACKEND, repeatable;
"forwards:" in the file, a list of {listen, target, backend}) listens on
LISTEN and turns every connection into a stream to that service, opened as
that backend: its grants decide, at each connection. Anyone who can reach
the address acts as the backend (no credential is asked): the relay warns
when one listens beyond loopback.`

func serveCmd(g *globals) *cobra.Command {
	settings := serveSettings()
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the relay",
		Long:  serveLong,
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serve(cmd, g, settings)
		},
	}
	addSettingFlags(cmd.Flags(), settings, "data-dir", "store", "ca-kek-file")
	return cmd
}

func serve(cmd *cobra.Command, g *globals, settings []*setting) error {
	path := g.configPath()
	var file *configFile
	var fileErr error
	if path != "" {
		file, fileErr = readConfigFile(path, settings)
	}
	opts, from, err := resolve(settings, cmd.Flags(), g.env, file, fileErr)
	if err != nil {
		return err
	}
	level := new(slog.LevelVar)
	level.Set(opts.logLevel)
	log, err := cli.NewLeveledLogger(cmd.ErrOrStderr(), level, opts.logFormat)
	if err != nil {
		return err
	}
	cfg := opts.relay
	if cfg.CAKEK, err = g.caKEK(opts.kekFile, cfg.Store); err != nil {
		return err
	}
	cfg.Logger = log
	cfg.Version = g.info.Version
	r, err := relay.New(cfg)
	if err != nil {
		return err
	}
	if td := from["trust-domain"]; td.where != "default" && r.TrustDomain() != cfg.TrustDomain {
		// The setting names a new CA's trust domain; an existing CA keeps
		// its own, which a configuration that says otherwise should hear.
		log.Warn("the trust domain setting applies only to a new CA: this data directory's CA serves another, which does not change",
			"setting", td.where, "configured", cfg.TrustDomain, "trust_domain", r.TrustDomain())
	}
	ctx := cmd.Context()
	var wg sync.WaitGroup
	wctx, stopWatch := context.WithCancel(ctx)
	defer wg.Wait()
	defer stopWatch()
	if path != "" {
		rl := &reloader{path: path, settings: settings, flags: cmd.Flags(), env: g.env, log: log,
			live: &liveRelay{level: level, relay: r}, running: opts, loaded: file.data}
		wg.Go(func() { rl.watch(wctx) })
	}
	return r.Run(ctx)
}

// reloadSettle lets a burst of file events (an editor's write, rename and
// chmod) settle before the config file is read.
const reloadSettle = 200 * time.Millisecond

// reloader follows the config file of a running relay: it applies
// settings that can change live and logs, by key, the changed ones that
// need a restart.
type reloader struct {
	path     string
	settings []*setting
	flags    *pflag.FlagSet
	env      func(string) string
	log      *slog.Logger
	live     *liveRelay
	// running are the settings in effect; loaded is the file they were
	// last compared with.
	running serveOptions
	loaded  []byte
}

// watch reloads the config file after changes in its directory and in
// those its symbolic links lead through (watched rather than the file, so
// that a file renamed over it, swapped in by a symlink as Kubernetes does
// with config maps, or edited where a link points is seen) until ctx
// ends.
func (rl *reloader) watch(ctx context.Context) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		rl.log.Warn("cannot watch the config file for changes; restart the relay to apply them", "file", rl.path, "err", err)
		return
	}
	defer w.Close()
	dirs := relay.NewWatchedDirs(w, rl.log, "the config file")
	if !dirs.Sync(rl.path) {
		rl.log.Warn("cannot watch the config file for changes; restart the relay to apply them", "file", rl.path)
		return
	}
	rl.log.Info("watching the config file", "file", rl.path)
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-w.Events:
			if !ok {
				return
			}
			settle.Reset(reloadSettle)
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			rl.log.Warn("watching the config file", "file", rl.path, "err", err)
			settle.Reset(reloadSettle) // events may have been lost: read the file anyway
		case <-settle.C:
			dirs.Sync(rl.path)
			rl.reload(ctx)
		}
	}
}

// reload reads the config file and, if it changed, works out the
// settings again (flags and environment still win), applies the live
// ones that changed and logs each changed one that needs a restart. A
// file with problems changes nothing.
func (rl *reloader) reload(ctx context.Context) {
	data, err := os.ReadFile(rl.path)
	if err != nil {
		rl.log.Error("config file not reloaded; the relay keeps its settings", "file", rl.path, "err", err)
		return
	}
	if bytes.Equal(data, rl.loaded) {
		return
	}
	rl.loaded = data
	file, fileErr := parseConfig(rl.path, data, rl.settings)
	next, from, err := resolve(rl.settings, rl.flags, rl.env, file, fileErr)
	if err != nil {
		rl.log.Error("config file not reloaded; the relay keeps its settings", "file", rl.path, "err", err)
		return
	}
	var applied, restart []string
	for _, s := range rl.settings {
		was, now := s.get(&rl.running), s.get(&next)
		if was == now {
			continue
		}
		if s.live == nil {
			restart = append(restart, s.key())
			rl.log.Warn("config file changes a setting that takes effect at the next restart", "key", s.key(), "running", was, "file", now)
			continue
		}
		if err := s.live(ctx, rl.live, &next); err != nil {
			rl.log.Error("config file setting not applied; the relay keeps the running one", "key", s.key(), "running", was, "file", now, "err", err)
			continue
		}
		s.set(&rl.running, from[s.name].text) // checked by resolve
		applied = append(applied, s.key())
		rl.log.Info("config file setting applied", "key", s.key(), "was", was, "now", now)
	}
	rl.log.Info("config file reloaded", "file", rl.path, "applied", applied, "restart_needed", restart)
}
