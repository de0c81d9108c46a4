// Command tether-agent is the Tether agent: it enrols with a relay and then
// keeps the tenant's allowed services reachable through it. Run
// "tether-agent help" for usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/cmd/internal/cli"
)

// version is set at build time: go build -ldflags '-X main.version=1.2.3'.
var version = "dev"

// updateKeys are the release keys this build trusts for self-update,
// comma-separated, each the key line of a release.pub:
// go build -ldflags '-X main.updateKeys=RWQ…'. More may be added in the
// config file (update: public_keys).
var updateKeys = ""

const prog = "tether-agent"

const usage = `tether-agent: the Tether agent.

Usage:
  tether-agent enroll --relay HOST:PORT (--token TOKEN | --token-file FILE) --state-dir DIR [--force] [--proxy URL|direct]
  tether-agent run --config FILE
  tether-agent install --config FILE [--files-only]
  tether-agent uninstall [--purge]
  tether-agent start | stop
  tether-agent status [--config FILE | --addr HOST:PORT] [-o text|json]
  tether-agent access-log [--config FILE | --file PATH] [--since 2h] [--service NAME] [--backend NAME] [-o table|json]
  tether-agent access-log --verify [--config FILE | --file PATH] [--ca FILE] [-o text|json]
  tether-agent unit
  tether-agent version

Exit status of run and service: 0 after a stop (SIGTERM, SIGINT, the
service manager's stop); 3 when a relay refused the agent for good
(revoked, unknown to the relay, certificate expired: enrol it again with a
new join token; the service is not restarted); 75 to restart after a
self-update; 1 on any other failure. access-log --verify exits 0 when the
log is intact, 1 when it is not (or cannot be read), 2 on a usage error.

install copies the agent and its config into place and registers it as a
service (systemd on Linux, the service control manager on Windows); the
service manager runs "tether-agent service --config FILE". unit prints the
systemd unit that install writes.

The join token may also come from $TETHER_JOIN_TOKEN, which keeps it off the
command line. Enrolment and the TCP transport go through the HTTP proxy in
$HTTPS_PROXY (except relays in $NO_PROXY); --proxy, or proxy: in the config
file, overrides it. See README.md for the config file reference.
`

func main() {
	cli.QuietQUICBufferWarning()
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		if _, ok := errors.AsType[*agent.RefusedError](err); ok {
			// Refused for good: the agent has logged what to do. The
			// status tells the service manager not to restart it.
			os.Exit(agent.ExitRefused)
		}
		cli.Fail(prog, err)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "enroll":
		return enroll(args[1:], stdout, stderr)
	case "run":
		return runAgent(args[1:], stderr)
	case "install", "uninstall", "start", "stop", "service", "unit":
		return serviceCmd(args[0], args[1:], stdout, stderr)
	case "status":
		return status(args[1:], stdout, stderr)
	case "access-log":
		return accessLog(args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func enroll(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(prog+" enroll", flag.ContinueOnError)
	fs.SetOutput(stderr)
	relayAddr := fs.String("relay", "", "relay agent address, HOST:PORT")
	token := fs.String("token", "", "join token (prefer --token-file or $TETHER_JOIN_TOKEN)")
	tokenFile := fs.String("token-file", "", `file holding the join token ("-" for standard input)`)
	stateDir := fs.String("state-dir", "", "directory for the agent's key and certificate")
	force := fs.Bool("force", false, "replace an existing identity in the state directory")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
	proxy := fs.String("proxy", "", `HTTP proxy to the relay, http://[user:password@]host:port ("direct" for none; default $HTTPS_PROXY unless $NO_PROXY exempts the relay)`)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("enroll takes no arguments (got %q)", fs.Args())
	}
	tok, err := readToken(*token, *tokenFile)
	if err != nil {
		return err
	}
	if *relayAddr == "" || *stateDir == "" {
		return errors.New("enroll needs --relay and --state-dir")
	}
	opts := agent.EnrollOptions{Relay: *relayAddr, Token: tok, StateDir: *stateDir, Force: *force, Version: version, Proxy: *proxy}
	via, source, err := agent.EnrollProxy(opts)
	if err != nil {
		return fmt.Errorf("enrolment failed: %w", err)
	}
	if via != "" {
		fmt.Fprintf(stderr, "connecting to relay %s through HTTP proxy %s (from %s)\n", *relayAddr, via, source)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	st, err := agent.Enroll(ctx, opts)
	if err != nil {
		return fmt.Errorf("enrolment failed: %w", err)
	}
	fmt.Fprintln(stdout, st.AgentID)
	fmt.Fprintf(stderr, "enrolled as agent %s of tenant %s (certificate valid until %s); identity stored in %s\n",
		st.AgentID, st.Tenant, st.NotAfter().Format(time.RFC3339), st.Dir)
	return nil
}

func readToken(flagValue, file string) (string, error) {
	switch {
	case flagValue != "" && file != "":
		return "", errors.New("give the join token with --token or --token-file, not both")
	case flagValue != "":
		return flagValue, nil
	case file == "-":
		b, err := io.ReadAll(io.LimitReader(os.Stdin, 4096))
		return strings.TrimSpace(string(b)), err
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("read token file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if t := os.Getenv("TETHER_JOIN_TOKEN"); t != "" {
		return t, nil
	}
	return "", errors.New("enroll needs a join token: --token-file FILE, $TETHER_JOIN_TOKEN or --token")
}

func runAgent(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet(prog+" run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "agent config file (YAML)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *configPath == "" {
		return errors.New("run needs --config FILE")
	}
	a, err := newAgent(*configPath, stderr)
	if err != nil {
		return err
	}
	ctx, stop := cli.SignalContext()
	err = a.Run(ctx)
	stop()
	if re, ok := errors.AsType[*agent.RestartError](err); ok {
		return agent.Restart(re) // exec, or exit with agent.ExitRestart
	}
	return err
}

// newAgent loads the config file and builds the agent it describes.
func newAgent(configPath string, stderr io.Writer) (*agent.Agent, error) {
	cfg, err := agent.LoadConfig(configPath)
	if err != nil {
		return nil, err
	}
	log, err := cli.NewLogger(stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return nil, err
	}
	cfg.Logger = log
	cfg.Version = version
	cfg.ConfigFile = configPath
	cfg.BuiltinUpdateKeys = strings.Split(updateKeys, ",")
	cfg.UpdateTrial = os.Getenv("TETHER_UPDATE_TRIAL") // set by the agent that tries this binary
	cfg.Args = os.Args[1:]
	cfg.TrialOutput = stderr
	return agent.New(cfg)
}
