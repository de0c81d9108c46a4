package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/cmd/internal/cli"
	tether "github.com/tetherhq/tether/relay/client"
)

const forwardLong = `Reach tenant services from tools that speak no proxy protocol (psql,
pg_dump, JDBC, DBeaver, …) through local ports.

TARGET is <service>.<tenant>.tether[:PORT] (PORT defaults to the local one;
the relay ignores it). HOST defaults to 127.0.0.1; give 0.0.0.0 to let other
machines in, with the backend's rights. Both forms can be mixed.

Relay and credential come from the flags, else the environment; exactly one
credential: the backend's API key (--backend with --api-key-file, or
TETHER_API_KEY), a client certificate (--cert-dir, for the relay's TLS door)
or a bearer token (--bearer-token-file, or TETHER_BEARER_TOKEN). Secrets are
never taken from the command line, where ps shows them. This command does not
use the admin API: it talks to a front door, as the backend.`

const forwardExample = `  tetherctl forward db.acme.tether:5432 --listen 5432 --relay relay.example:3129 --relay-ca relay-ca.crt \
      --backend billing --api-key-file billing.key
  tetherctl forward --map 5432=db.acme.tether --map 8080=api.acme.tether --cert-dir certs/ --relay relay.example:3129`

// forwardOpts are tetherctl forward's flags.
type forwardOpts struct {
	listens, maps          []string
	relay, backend         string
	apiKeyFile, bearerFile string
	certDir, relayCA       string
	relayWait, drain       time.Duration
	spares                 int
	logLevel, logFormat    string
	apiKeyEnv, bearerEnv   string // TETHER_API_KEY, TETHER_BEARER_TOKEN
}

// mapping is one local listener and the service it reaches.
type mapping struct {
	listen, target string
}

func forwardCmd(env func(string) string) *cobra.Command {
	var o forwardOpts
	cmd := &cobra.Command{
		Use:         "forward (TARGET --listen [HOST:]PORT | --map [HOST:]PORT=TARGET)",
		Short:       "Forward local ports to tenant services through the relay's front door",
		Long:        forwardLong,
		Example:     forwardExample,
		Args:        cli.Args("[TARGET]"),
		Annotations: map[string]string{cli.NoGlobalFlags: "true"},
		RunE: func(cmd *cobra.Command, args []string) error {
			fs := cmd.Flags()
			for _, f := range []struct {
				v         *string
				flag, env string
			}{{&o.relay, "relay", "TETHER_RELAY"}, {&o.backend, "backend", "TETHER_BACKEND"}, {&o.apiKeyFile, "api-key-file", "TETHER_API_KEY_FILE"},
				{&o.bearerFile, "bearer-token-file", "TETHER_BEARER_TOKEN_FILE"}, {&o.certDir, "cert-dir", "TETHER_CERT_DIR"}, {&o.relayCA, "relay-ca", "TETHER_RELAY_CA"}} {
				if !fs.Changed(f.flag) {
					*f.v = env(f.env)
				}
			}
			o.apiKeyEnv, o.bearerEnv = env("TETHER_API_KEY"), env("TETHER_BEARER_TOKEN")
			return forward(cmd.Context(), o, args, cmd.ErrOrStderr())
		},
	}
	fs := cmd.Flags()
	fs.StringArrayVar(&o.listens, "listen", nil, "local [HOST:]PORT for TARGET (repeatable)")
	fs.StringArrayVar(&o.maps, "map", nil, "[HOST:]PORT=TARGET (repeatable)")
	fs.StringVar(&o.relay, "relay", "", "the relay's CONNECT front door, HOST:PORT; its TLS door with --cert-dir or --relay-ca (env TETHER_RELAY)")
	fs.StringVar(&o.backend, "backend", "", "the backend's name, for its API key (env TETHER_BACKEND)")
	fs.StringVar(&o.apiKeyFile, "api-key-file", "", "file holding the backend's API key (env TETHER_API_KEY_FILE; or the key itself in TETHER_API_KEY)")
	fs.StringVar(&o.bearerFile, "bearer-token-file", "", "file holding a JWT from the relay's OIDC issuer, read again for every connection (env TETHER_BEARER_TOKEN_FILE; or the token in TETHER_BEARER_TOKEN)")
	fs.StringVar(&o.certDir, "cert-dir", "", "backend.crt, backend.key and ca.crt from tether-relay backend certificate, for the TLS door (env TETHER_CERT_DIR)")
	fs.StringVar(&o.relayCA, "relay-ca", "", "speak TLS to the relay's TLS door, verifying it with this CA from tether-relay ca export (env TETHER_RELAY_CA)")
	fs.DurationVar(&o.relayWait, "relay-wait", tether.DefaultRelayWait, "how long a new connection waits for a relay it cannot reach, then is closed")
	fs.IntVar(&o.spares, "spares", tether.DefaultSpares, "connections to the relay kept ready per listener while it is in use (0: none)")
	fs.DurationVar(&o.drain, "drain", 5*time.Second, "on SIGINT or SIGTERM, how long open connections may go on before they are closed")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "auto", "auto (JSON unless stderr is a terminal), json or text")
	return cmd
}

// forward runs tetherctl forward: it returns when ctx ends (SIGINT or
// SIGTERM) and every listener has stopped and ended its connections
// (nil), or with an error when it cannot start.
func forward(ctx context.Context, o forwardOpts, pos []string, stderr io.Writer) error {
	maps, err := forwardMappings(pos, o.listens, o.maps)
	if err != nil {
		return err
	}
	if o.relayWait <= 0 || o.drain < 0 || o.spares < 0 {
		return errors.New("--relay-wait must be positive, --drain and --spares not negative")
	}
	log, err := cli.NewLogger(stderr, o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	d, err := forwardDialer(o)
	if err != nil {
		return err
	}
	spares := o.spares
	if spares == 0 {
		spares = -1 // Forward's zero value means the default
	}
	forwards := make([]*tether.Forward, len(maps))
	for i, m := range maps {
		forwards[i] = &tether.Forward{Dialer: d, Target: m.target, Logger: log, RelayWait: o.relayWait, Spares: spares, Drain: o.drain}
		if err := forwards[i].Check(); err != nil {
			return err
		}
	}
	if d.TLSConfig == nil && (d.APIKey != "" || d.BearerToken != nil) && !isLoopback(d.Relay) {
		cred := "the API key"
		if d.APIKey == "" {
			cred = "the bearer token"
		}
		log.Warn(cred+" goes to the relay unencrypted: use its TLS door (--relay-ca) unless the network between is trusted", "relay", d.Relay)
	}

	// Every listener first: nothing is served unless all of them are.
	lns := make([]net.Listener, 0, len(maps))
	for _, m := range maps {
		ln, err := net.Listen("tcp", m.listen)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("cannot listen for %s: %w", m.target, err)
		}
		lns = append(lns, ln)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, len(maps))
	var wg sync.WaitGroup
	for i, f := range forwards {
		wg.Go(func() {
			if errs[i] = f.Serve(ctx, lns[i]); errs[i] != nil {
				cancel() // one listener failing stops them all
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// forwardMappings builds the listeners' mappings from the positional
// TARGET with its --listen flags and the --map flags.
func forwardMappings(pos, listens, maps []string) ([]mapping, error) {
	var out []mapping
	switch {
	case len(pos) > 1:
		return nil, fmt.Errorf("forward takes one TARGET (got %q); use --map LOCAL=TARGET for more", pos)
	case len(pos) == 1 && len(listens) == 0:
		return nil, fmt.Errorf("forward %s needs --listen [HOST:]PORT", pos[0])
	case len(pos) == 0 && len(listens) > 0:
		return nil, errors.New("--listen needs a TARGET: tetherctl forward <service>.<tenant>.tether --listen PORT")
	case len(pos) == 0 && len(maps) == 0:
		return nil, errors.New("nothing to forward: tetherctl forward TARGET --listen PORT, or --map PORT=TARGET (tetherctl forward --help)")
	}
	add := func(listen, target string) error {
		addr, err := tether.ListenAddr(listen)
		if err != nil {
			return err
		}
		if _, _, err := net.SplitHostPort(target); err != nil {
			_, port, _ := net.SplitHostPort(addr)
			target = net.JoinHostPort(target, port)
		}
		for _, m := range out {
			if _, port, _ := net.SplitHostPort(addr); m.listen == addr && port != "0" {
				return fmt.Errorf("%s is given twice", addr)
			}
		}
		out = append(out, mapping{listen: addr, target: target})
		return nil
	}
	for _, l := range listens {
		if err := add(l, pos[0]); err != nil {
			return nil, err
		}
	}
	for _, m := range maps {
		local, target, ok := strings.Cut(m, "=")
		if !ok || local == "" || target == "" {
			return nil, fmt.Errorf("--map %q: want [HOST:]PORT=<service>.<tenant>.tether[:PORT]", m)
		}
		if err := add(local, target); err != nil {
			return nil, fmt.Errorf("--map %q: %w", m, err)
		}
	}
	return out, nil
}

// forwardDialer builds the Dialer from the relay address and the one
// credential given.
func forwardDialer(o forwardOpts) (*tether.Dialer, error) {
	if o.relay == "" {
		return nil, errors.New("no relay address: set --relay or TETHER_RELAY (the relay's TLS door with --relay-ca or --cert-dir, e.g. relay.example.com:3129)")
	}
	if _, _, err := net.SplitHostPort(o.relay); err != nil {
		return nil, fmt.Errorf("relay address %q: want HOST:PORT", o.relay)
	}
	d := &tether.Dialer{Relay: o.relay}
	var given []string
	switch {
	case o.apiKeyFile != "":
		key, err := readSecret(o.apiKeyFile, "API key")
		if err != nil {
			return nil, err
		}
		d.APIKey = key
		given = append(given, "an API key (--api-key-file or TETHER_API_KEY_FILE)")
	case o.apiKeyEnv != "":
		if strings.ContainsAny(strings.TrimSpace(o.apiKeyEnv), " \t\r\n") {
			return nil, errors.New("TETHER_API_KEY holds more than one word")
		}
		d.APIKey = strings.TrimSpace(o.apiKeyEnv)
		given = append(given, "an API key (TETHER_API_KEY)")
	}
	switch {
	case o.bearerFile != "":
		if _, err := readSecret(o.bearerFile, "bearer token"); err != nil {
			return nil, err
		}
		file := o.bearerFile
		d.BearerToken = func(context.Context) (string, error) { return readSecret(file, "bearer token") }
		given = append(given, "a bearer token (--bearer-token-file or TETHER_BEARER_TOKEN_FILE)")
	case o.bearerEnv != "":
		tok := strings.TrimSpace(o.bearerEnv)
		d.BearerToken = func(context.Context) (string, error) { return tok, nil }
		given = append(given, "a bearer token (TETHER_BEARER_TOKEN)")
	}
	if o.certDir != "" {
		if o.relayCA != "" {
			return nil, errors.New("--cert-dir holds the relay CA (ca.crt) already: leave out --relay-ca")
		}
		conf, err := tether.LoadCertificate(o.certDir)
		if err != nil {
			return nil, err
		}
		d.TLSConfig = conf
		given = append(given, "a client certificate (--cert-dir or TETHER_CERT_DIR)")
	} else if o.relayCA != "" {
		pem, err := os.ReadFile(o.relayCA)
		if err != nil {
			return nil, fmt.Errorf("read relay CA: %w", err)
		}
		if d.TLSConfig, err = tether.RelayTLSConfig(pem); err != nil {
			return nil, err
		}
	}
	switch len(given) {
	case 0:
		return nil, errors.New("no credential for the relay: give the backend's API key (--backend with --api-key-file, or TETHER_BACKEND with TETHER_API_KEY_FILE or TETHER_API_KEY), a client certificate (--cert-dir) or a bearer token (--bearer-token-file or TETHER_BEARER_TOKEN)")
	case 1:
	default:
		return nil, fmt.Errorf("more than one credential: %s; keep one", strings.Join(given, ", "))
	}
	if d.APIKey != "" {
		if o.backend == "" {
			return nil, errors.New("an API key needs the backend's name: --backend or TETHER_BACKEND")
		}
		d.Backend = o.backend
	}
	return d, nil
}

// maxSecret bounds what readSecret reads: a key or a token is far
// shorter, and a path such as /dev/zero must not exhaust memory.
const maxSecret = 64 << 10

// readSecret reads a one-line secret from a file.
func readSecret(path, what string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", what, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecret+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", what, err)
	}
	if len(b) > maxSecret {
		return "", fmt.Errorf("%s file %s is larger than %d KiB", what, path, maxSecret>>10)
	}
	s := strings.TrimSpace(string(b))
	switch {
	case s == "":
		return "", fmt.Errorf("%s file %s is empty", what, path)
	case strings.ContainsAny(s, " \t\r\n"):
		return "", fmt.Errorf("%s file %s holds more than one word", what, path)
	}
	return s, nil
}

// isLoopback reports whether hostport names this machine.
func isLoopback(hostport string) bool {
	host, _, _ := net.SplitHostPort(hostport)
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
