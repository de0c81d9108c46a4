package main

import (
	"context"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/installer"
)

// runExitStatus is what the help of run and service says of their exit
// status (README's "Exit status" table says it at length).
const runExitStatus = `Exit status: 0 after a stop (SIGTERM, SIGINT, the service manager's stop);
1 on a failure (config, state directory, another agent holding the state
directory, listener); 3 when a relay refused the agent for good (revoked,
unknown to the relay, certificate expired): the agent logs once what to
do (enrol it again with a new join token) and the service manager does
not restart it; 75 to restart into a new binary after a self-update.`

func (a *app) runCmd() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "run --config FILE",
		Short: "Run the agent in the foreground",
		Long: `Run the agent in the foreground with the config file given: connect to the
relays, and let them reach the services of its allowlist. The config file
and the state directory are watched and reloaded on change. SIGTERM or
SIGINT stop it: it drains its streams for up to drain_timeout, then exits.
Logs go to stderr. One agent at a time uses a state directory: it holds
the lock agent.lock there, and a second one on it exits 1 at once, naming
the first one's pid; it waits up to 5 s first when the first one has
recorded that it is stopping, or its process is gone (a restart under
way).

` + runExitStatus,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configPath == "" {
				return cli.Usagef("run needs --config FILE")
			}
			ag, lock, err := a.newAgent(configPath, cmd.ErrOrStderr(), "run")
			if err != nil {
				return err
			}
			ctx, stop := cli.SignalContext()
			err = ag.Run(ctx)
			stop()
			lock.Stopping()
			return agentEnded(err, lock)
		},
	}
	configFlag(cmd, &configPath, "agent config file, YAML (required)")
	return cmd
}

func (a *app) serviceCmd() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "service --config FILE",
		Short: "Run the agent as the service manager starts it (what install registers)",
		Long: `Run the agent under the service manager: the run mode that install registers
(systemd's ExecStart, the Windows service's command line). It is run as
run is, and stops cleanly, draining, on the service manager's stop. From a
console it runs until SIGTERM or SIGINT. Like run, it holds the state
directory's lock, agent.lock, and exits 1 when another agent holds it
(after waiting up to 5 s for one that is stopping).

` + runExitStatus,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configPath == "" {
				return cli.Usagef("service needs --config FILE")
			}
			ag, lock, err := a.newAgent(configPath, cmd.ErrOrStderr(), "service")
			if err != nil {
				return err
			}
			err = installer.Run(installer.DefaultLayout(), func(ctx context.Context) error {
				err := ag.Run(ctx)
				// The service manager may start the agent again as soon
				// as it hears of the stop: the new process waits for the
				// lock of a holder that is stopping.
				lock.Stopping()
				if re, ok := errors.AsType[*agent.RestartError](err); ok {
					// A self-update: exit with agent.ExitRestart for the
					// service manager to start the new binary (or exec it).
					lock.Release()
					return agent.Restart(re)
				}
				return err
			})
			return agentEnded(err, lock)
		},
	}
	configFlag(cmd, &configPath, "agent config file, YAML (required)")
	return cmd
}

// agentEnded is what run and service return once the agent's Run has
// returned err: a self-update restarts the process (exec, or exit with
// agent.ExitRestart), letting go of the state directory's lock first
// (the new binary takes it again: the lock file is close-on-exec anyway,
// so an exec cannot leave it held by a file the new binary does not
// know); a refusal for good, which the agent has logged with what to do,
// ends it with agent.ExitRefused and nothing more printed.
func agentEnded(err error, lock *agent.StateLock) error {
	if re, ok := errors.AsType[*agent.RestartError](err); ok {
		lock.Release()
		return agent.Restart(re)
	}
	if _, ok := errors.AsType[*agent.RefusedError](err); ok {
		return cli.Reported(err)
	}
	return err
}

// newAgent loads the config file, takes the lock of its state directory
// for this process (command: run or service), and builds the agent it
// describes. The lock is taken before anything in the state directory is
// read or written, so that a second agent on it fails here having
// touched nothing (the self-update's records included: its start does not
// count as a stop of the first one). A trial of a new binary, which runs
// while its parent agent holds the lock, takes none (lock nil).
func (a *app) newAgent(configPath string, stderr io.Writer, command string) (_ *agent.Agent, lock *agent.StateLock, err error) {
	cfg, err := agent.LoadConfig(configPath)
	if err != nil {
		return nil, nil, err
	}
	log, err := cli.NewLogger(stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return nil, nil, err
	}
	cfg.UpdateTrial = a.env("TETHER_UPDATE_TRIAL") // set by the agent that tries this binary
	if cfg.UpdateTrial == "" {
		if lock, err = agent.LockStateDir(cfg.StateDir, command); err != nil {
			return nil, nil, err
		}
		defer func() {
			if err != nil {
				lock.Release()
			}
		}()
	}
	cfg.Logger = log
	cfg.Version = a.info.Version
	cfg.ConfigFile = configPath
	cfg.BuiltinUpdateKeys = strings.Split(updateKeys, ",")
	if cfg.UpdateTrial != "" {
		// The agent that started this trial, and holds the lock for it:
		// the trial stops when it is gone. It says who it is (an agent
		// of an earlier version does not: then the parent process).
		cfg.TrialParent = os.Getppid()
		if pid, err := strconv.Atoi(a.env("TETHER_UPDATE_TRIAL_PARENT")); err == nil && pid > 0 {
			cfg.TrialParent = pid
		}
	}
	cfg.Args = a.args
	cfg.TrialOutput = stderr
	ag, err := agent.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	return ag, lock, nil
}
