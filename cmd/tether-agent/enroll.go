package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/cmd/internal/cli"
)

type enrollOptions struct {
	relay, token, tokenFile, stateDir, proxy string
	noProxy                                  string // no_proxy of --config
	proxyCA                                  string // --proxy-ca, or proxy_ca_file of --config
	config                                   string // --config: state_dir, proxy, no_proxy and proxy_ca_file from this agent config
	force                                    bool
	timeout                                  time.Duration
}

func (a *app) enrollCmd() *cobra.Command {
	var o enrollOptions
	cmd := &cobra.Command{
		Use:   "enroll --relay HOST:PORT --token-file FILE --state-dir DIR",
		Short: "Enrol with a relay using a join token (prints the agent's id)",
		Long: `Enrol with a relay: make the agent's key in the state directory (it never
leaves the machine), send a certificate request with the join token, and
store the certificate and the relay's CA roots there, owner-only. The join
token names the relay's CA, so no other relay is trusted. The agent's id is
printed on stdout (with -o json or yaml: id, tenant, certificate expiry and
state directory), messages on stderr. A state directory an agent is
running with is refused (its lock, agent.lock, is held): stop that agent
first, enrol, then start it again. --config FILE takes the state directory
from the state_dir of the agent config FILE (the one the agent will run
with) instead of --state-dir, and, unless --proxy is given, its proxy,
no_proxy and proxy_ca_file (unless --proxy-ca is given).

The join token comes from --token-file FILE ("-" for standard input), else
$TETHER_JOIN_TOKEN. --token TOKEN works too but is warned about: a command
line is readable by other users of the machine (ps, /proc) and kept in shell
history.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.enroll(cmd, o)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.relay, "relay", "", "the relay's agent address, HOST:PORT (required)")
	fs.StringVar(&o.tokenFile, "token-file", "", `file holding the join token ("-" for standard input)`)
	fs.StringVar(&o.token, "token", "", "the join token itself: a secret on the command line (prefer --token-file or $TETHER_JOIN_TOKEN)")
	fs.StringVar(&o.stateDir, "state-dir", "", "directory for the agent's key and certificate (required, unless --config names it)")
	configFlag(cmd, &o.config, "agent config file whose state_dir is the state directory (instead of --state-dir)")
	fs.BoolVar(&o.force, "force", false, "replace an existing identity in the state directory")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "give up after this long")
	fs.StringVar(&o.proxy, "proxy", "", `HTTP proxy to the relay, http://[user:password@]host:port ("direct" for none; default: proxy: of --config, else $HTTPS_PROXY unless $NO_PROXY exempts the relay)`)
	fs.StringVar(&o.proxyCA, "proxy-ca", "", "PEM file of the CA certificates an https:// proxy's certificate may chain to, besides the system's roots (default: proxy_ca_file of --config)")
	cmd.MarkFlagDirname("state-dir")
	cmd.MarkFlagFilename("proxy-ca")
	cmd.MarkFlagFilename("token-file")
	return cmd
}

// tokenOnCommandLine is the warning printed when --token gives the join
// token.
const tokenOnCommandLine = "warning: --token puts the join token on the command line, where other users of this machine can read it (ps, /proc) and the shell's history keeps it; give it with --token-file FILE, --token-file - (standard input) or $TETHER_JOIN_TOKEN instead"

func (a *app) enroll(cmd *cobra.Command, o enrollOptions) error {
	stderr := cmd.ErrOrStderr()
	if cmd.Flags().Changed("token") {
		fmt.Fprintf(stderr, "%s: %s\n", prog, tokenOnCommandLine)
	}
	tok, err := a.readToken(cmd, o.token, o.tokenFile)
	if err != nil {
		return err
	}
	if o.config != "" {
		if o.stateDir != "" {
			return cli.Usagef("give the state directory with --state-dir or --config, not both")
		}
		dir, err := agent.ReadStateDir(o.config)
		if err != nil {
			return err
		}
		if dir == "" {
			return fmt.Errorf("%s names no state_dir", o.config)
		}
		o.stateDir = dir
		// The relay is reached as the agent will reach it with this
		// config: through its proxy (unless --proxy says otherwise).
		if !cmd.Flags().Changed("proxy") {
			ps, err := agent.ReadProxy(o.config)
			if err != nil {
				return err
			}
			o.proxy, o.noProxy = ps.Proxy, ps.NoProxy
			if !cmd.Flags().Changed("proxy-ca") {
				o.proxyCA = ps.CAFile
			}
		}
	}
	if o.relay == "" || o.stateDir == "" {
		return cli.Usagef("enroll needs --relay and --state-dir (or --config)")
	}
	opts := agent.EnrollOptions{Relay: o.relay, Token: tok, StateDir: o.stateDir, Force: o.force, Version: a.info.Version, Proxy: o.proxy, NoProxy: o.noProxy, ProxyCAFile: o.proxyCA}
	via, source, err := agent.EnrollProxy(opts)
	if err != nil {
		return fmt.Errorf("enrolment failed: %w", err)
	}
	if via != "" {
		fmt.Fprintf(stderr, "connecting to relay %s through HTTP proxy %s (from %s)\n", o.relay, via, source)
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
	defer cancel()
	st, err := agent.Enroll(ctx, opts)
	if err != nil {
		return fmt.Errorf("enrolment failed: %w", err)
	}
	logKey, err := agent.LogKeyFingerprint(st.Dir)
	if err != nil {
		return fmt.Errorf("enrolment: %w", err)
	}
	result := struct {
		AgentID      string    `json:"agent_id"`
		Tenant       string    `json:"tenant"`
		NotAfter     time.Time `json:"not_after"`
		StateDir     string    `json:"state_dir"`
		AccessLogKey string    `json:"access_log_key"`
	}{st.AgentID, st.Tenant, st.NotAfter(), st.Dir, logKey}
	if err := cli.Print(cmd.OutOrStdout(), output(cmd), result, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, st.AgentID)
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "enrolled as agent %s of tenant %s (certificate valid until %s); identity stored in %s\n",
		st.AgentID, st.Tenant, st.NotAfter().Format(time.RFC3339), st.Dir)
	fmt.Fprintf(stderr, "access log key: %s\n  record this fingerprint: it signs the agent's access log first, and stays the pin when the agent replaces the key\n  (access_log.key_rotation); tether-agent access-log --verify --key %s checks the log, or a copy of it anywhere,\n  against it without trusting the relay's CA\n", logKey, logKey)
	return nil
}

// readToken returns the join token from --token, --token-file (standard
// input for "-") or $TETHER_JOIN_TOKEN, in that order; two flags are a
// usage error, and so is no token at all.
func (a *app) readToken(cmd *cobra.Command, flagValue, file string) (string, error) {
	switch {
	case flagValue != "" && file != "":
		return "", cli.Usagef("give the join token with --token or --token-file, not both")
	case flagValue != "":
		return flagValue, nil
	case file == "-":
		b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 4096))
		if err != nil {
			return "", fmt.Errorf("read the join token from standard input: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("read token file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if t := a.env("TETHER_JOIN_TOKEN"); t != "" {
		return t, nil
	}
	return "", cli.Usagef("enroll needs a join token: --token-file FILE, $TETHER_JOIN_TOKEN or --token")
}
