package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/installer"
)

// serviceCmd runs install, uninstall, start, stop, status, service (the
// run mode the service manager invokes) and unit (prints the systemd unit,
// for packages).
func serviceCmd(name string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(prog+" "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var configPath *string
	if name == "install" || name == "service" {
		configPath = fs.String("config", "", "agent config file (YAML)")
	}
	filesOnly := false
	if name == "install" {
		fs.BoolVar(&filesOnly, "files-only", false, "lay out the binary, config and directories without creating the user or registering the service")
	}
	purge := false
	if name == "uninstall" {
		fs.BoolVar(&purge, "purge", false, "also remove the binary, the config, the agent's identity and (Linux) the service user")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s takes no arguments (got %q)", name, fs.Args())
	}
	l := installer.DefaultLayout()

	switch name {
	case "unit":
		unit, err := installer.SystemdUnit(installer.LinuxLayout(""))
		if err != nil {
			return err
		}
		fmt.Fprint(stdout, unit)
		return nil
	case "service":
		if *configPath == "" {
			return errors.New("service needs --config FILE")
		}
		a, err := newAgent(*configPath, stderr)
		if err != nil {
			return err
		}
		return installer.Run(l, func(ctx context.Context) error {
			err := a.Run(ctx)
			if re, ok := errors.AsType[*agent.RestartError](err); ok {
				// A self-update: exit with agent.ExitRestart for the
				// service manager to start the new binary (or exec it).
				return agent.Restart(re)
			}
			return err
		})
	case "install":
		if *configPath == "" {
			return errors.New("install needs --config FILE")
		}
		// Refuse a config the service could not run with, and give the
		// service the state directory the config names.
		cfg, err := agent.LoadConfig(*configPath)
		if err != nil {
			return err
		}
		if !filepath.IsAbs(cfg.StateDir) {
			return fmt.Errorf("state_dir %q in %s: the service needs an absolute path", cfg.StateDir, *configPath)
		}
		if filepath.Clean(cfg.StateDir) != filepath.Clean(l.StateDir) {
			l.StateDir = filepath.Clean(cfg.StateDir)
			l.UpdateDir = filepath.Join(l.StateDir, "update")
		}
		return installer.Install(installer.Options{Layout: l, SourceConfig: *configPath, FilesOnly: filesOnly, Out: stdout})
	case "uninstall":
		return installer.Uninstall(l, purge, stdout)
	case "start":
		if err := installer.Start(l); err != nil {
			return fmt.Errorf("start service: %w", err)
		}
		fmt.Fprintf(stdout, "service %s started\n", l.Name)
		return nil
	case "stop":
		if err := installer.Stop(l); err != nil {
			return fmt.Errorf("stop service: %w", err)
		}
		fmt.Fprintf(stdout, "service %s stopped\n", l.Name)
		return nil
	case "status":
		st, err := installer.Status(l)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, st)
		return nil
	}
	return fmt.Errorf("unknown command %q", name)
}
