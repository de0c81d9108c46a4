package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/installer"
)

// The commands of the installed service: install, uninstall, start, stop
// and unit (the systemd unit, for packages). service, the run mode the
// service manager invokes, is in run.go; status in status.go.

func installCmd() *cobra.Command {
	var configPath string
	var filesOnly bool
	cmd := &cobra.Command{
		Use:   "install --config FILE",
		Short: "Install the agent as a service (enabled at boot, not started)",
		Long: `Install the agent as a service: copy this binary and the config file into
place, create the service's user (Linux) and directories with their
permissions, and register the service (systemd on Linux, the service
control manager on Windows), enabled at boot but not started: start does
that. The service runs "tether-agent service --config FILE" with the
installed config. The config's state_dir must be an absolute path; the
service is given that directory.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configPath == "" {
				return cli.Usagef("install needs --config FILE")
			}
			l := installer.DefaultLayout()
			// Refuse a config the service could not run with, and give
			// the service the state directory the config names.
			cfg, err := agent.LoadConfig(configPath)
			if err != nil {
				return err
			}
			if !filepath.IsAbs(cfg.StateDir) {
				return fmt.Errorf("state_dir %q in %s: the service needs an absolute path", cfg.StateDir, configPath)
			}
			// The proxy's CA file may be put in place after the install
			// (the agent reads it when it starts, and again when it
			// changes): a problem with it is said, not refused.
			if err := cfg.CheckProxyCAFile(); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v: the service will not start until it is fixed\n", err)
			}
			if filepath.Clean(cfg.StateDir) != filepath.Clean(l.StateDir) {
				l.StateDir = filepath.Clean(cfg.StateDir)
				l.UpdateDir = filepath.Join(l.StateDir, "update")
			}
			return installer.Install(installer.Options{Layout: l, SourceConfig: configPath, FilesOnly: filesOnly, Out: cmd.OutOrStdout()})
		},
	}
	configFlag(cmd, &configPath, "agent config file, YAML, copied into place (required)")
	cmd.Flags().BoolVar(&filesOnly, "files-only", false, "lay out the binary, config and directories without creating the user or registering the service")
	return cmd
}

func uninstallCmd() *cobra.Command {
	var purge bool
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Stop and unregister the service",
		Long: `Stop the service and unregister it from the service manager. The binary,
the config and the agent's identity stay unless --purge is given. --purge
removes the state directory the installed config names (state_dir, read
even from a config this version no longer accepts), and refuses while
another agent process (one started by hand) holds it; with an installed
config that cannot be parsed or names no absolute state_dir, it changes
nothing and says what to fix. A state directory that holds files but no
agent identity (agent.json) is not removed.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l := installer.DefaultLayout()
			var removeState func() error
			if purge {
				// Before anything is stopped: a purge that cannot tell
				// which state directory is the service's changes nothing.
				var err error
				if l, err = installedLayout(l); err != nil {
					return err
				}
				removeState = func() error { return purgeStateDir(l.StateDir, nil) }
			}
			return installer.Uninstall(l, purge, cmd.OutOrStdout(), removeState)
		},
	}
	cmd.Flags().BoolVar(&purge, "purge", false, "also remove the binary, the config, the agent's identity and (Linux) the service user")
	return cmd
}

func startCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "start",
		Short: "Start the installed service",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l := installer.DefaultLayout()
			if err := installer.Start(l); err != nil {
				return fmt.Errorf("start service: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "service %s started\n", l.Name)
			return nil
		},
	}
}

func stopCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "stop",
		Short: "Stop the installed service (the agent drains its streams)",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l := installer.DefaultLayout()
			if err := installer.Stop(l); err != nil {
				return fmt.Errorf("stop service: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "service %s stopped\n", l.Name)
			return nil
		},
	}
}

func unitCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "unit",
		Short: "Print the systemd unit that install writes (for packages)",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			unit, err := installer.SystemdUnit(installer.LinuxLayout(""))
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), unit)
			return err
		},
	}
}

// installedLayout is l with the state directory of the installed config
// (l.ConfigPath), as install gave the service: install takes state_dir
// from the config, so a purge must remove that one, not the default. Only
// state_dir is read, so that a config this version no longer accepts
// still names it. Without an installed config, l is the default layout.
// A config that cannot be parsed, or that names no absolute state_dir
// (install refuses one that does not), is an error: the state directory
// the service was given is unknown, and purging the default instead
// would leave the agent's identity behind while saying it was removed.
func installedLayout(l installer.Layout) (installer.Layout, error) {
	dir, err := agent.ReadStateDir(l.ConfigPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return l, nil
	case err != nil:
		return l, fmt.Errorf("the installed config %s cannot be read (%w), so the state directory to purge is unknown: "+
			"fix its state_dir, or remove the config to purge the default %s, and run uninstall --purge again", l.ConfigPath, err, l.StateDir)
	case !filepath.IsAbs(dir):
		return l, fmt.Errorf("the installed config %s names no absolute state_dir (%q), so the state directory to purge is unknown: "+
			"set it to the one the service ran with, or remove the config to purge the default %s, and run uninstall --purge again", l.ConfigPath, dir, l.StateDir)
	}
	if filepath.Clean(dir) != filepath.Clean(l.StateDir) {
		l.StateDir = filepath.Clean(dir)
		l.UpdateDir = filepath.Join(l.StateDir, "update")
	}
	return l, nil
}

// purgeStateDir removes the state directory dir, the agent's identity
// with it. It refuses (*agent.StateDirBusyError) while another process
// holds the directory, and refuses a directory that does not look like
// an agent's state directory: one holding something but no identity
// (agent.json), such as /var/lib named as state_dir by mistake, which
// would otherwise be removed whole. A refusal removes nothing; a
// directory that does not exist is already purged.
//
// The directory's contents go while this process holds its lock, so an
// agent started meanwhile (by hand) either is refused or finds no
// identity: it never runs on one that is then removed. The lock file
// and the directory go last: on Unix while the lock is still held; on
// Windows, where an open file cannot be removed, just after it is let
// go. afterUnlock, when not nil, runs just after it is let go (tests).
func purgeStateDir(dir string, afterUnlock func()) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the state directory %s: %w", dir, err)
	}
	identity := false
	var others []string
	for _, e := range ents {
		switch e.Name() {
		case agent.IdentityFile:
			identity = true
		case agent.StateLockFile:
		default:
			others = append(others, e.Name())
		}
	}
	if !identity && len(others) > 0 {
		if len(others) > 3 {
			others = append(others[:3], "…")
		}
		return fmt.Errorf("the state directory %s holds no agent identity (%s) but other files (%s): not removing a directory that may not be the agent's; remove it by hand if it is",
			dir, agent.IdentityFile, strings.Join(others, ", "))
	}
	lock, err := agent.LockStateDir(dir, "uninstall")
	if errors.Is(err, agent.ErrNotEnrolled) {
		return nil
	}
	if err != nil {
		return err
	}
	unlock := func() {
		lock.Release()
		if afterUnlock != nil {
			afterUnlock()
			afterUnlock = nil
		}
	}
	defer unlock()
	// Read again under the lock: an enrolment may have written since.
	if ents, err = os.ReadDir(dir); err != nil {
		return fmt.Errorf("read the state directory %s: %w", dir, err)
	}
	// The identity first, so that nothing is left to run on if a removal
	// after it fails.
	if err := os.Remove(filepath.Join(dir, agent.IdentityFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("purge the state directory %s: %w", dir, err)
	}
	for _, e := range ents {
		if e.Name() == agent.StateLockFile || e.Name() == agent.IdentityFile {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("purge the state directory %s: %w", dir, err)
		}
	}
	lockPath := filepath.Join(dir, agent.StateLockFile)
	if err := os.Remove(lockPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		unlock() // Windows: the held file cannot be removed while open
		if err := os.Remove(lockPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("purge the state directory %s: %w", dir, err)
		}
	}
	// Remove, not RemoveAll: whatever appeared since (an enrolment in the
	// moment after the lock was let go) is not removed unseen.
	if err := os.Remove(dir); err != nil {
		return fmt.Errorf("purge the state directory %s: the agent's files are removed, but not the directory: %w", dir, err)
	}
	return nil
}
