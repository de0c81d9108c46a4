// Command tether-relay runs the Tether relay and administers its data
// directory. Run "tether-relay --help" for usage.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay/admin"
)

// Set at build time (scripts/release): go build -ldflags '-X
// main.version=1.2.3 -X main.commit=… -X main.date=…'.
var version, commit, date = "dev", "", ""

const prog = "tether-relay"

func main() {
	cli.QuietQUICBufferWarning()
	ctx, stop := cli.SignalContext()
	code := cli.Execute(ctx, newRoot(cli.ReadBuildInfo(prog, version, commit, date), os.Stdout, os.Stderr), os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}

// globals are the flags every command takes.
type globals struct {
	dataDir string // --data-dir, else TETHER_DATA_DIR, else the config file's data_dir
	store   string // --store, else TETHER_STORE, else the config file's store
	kekFile string // --ca-kek-file, else TETHER_CA_KEK_FILE, else the config file's ca_kek_file
	config  string // --config, else TETHER_CONFIG
	info    cli.BuildInfo
	env     func(string) string
}

const rootLong = `tether-relay runs the Tether relay (serve) and administers its data
directory (every other command). Admin commands act on the data directory of
a relay, while it serves or not; they refuse a directory no relay has
initialised (serve, init and demo create one). tetherctl takes the same
commands through a relay's admin API, from anywhere.

Global flags may come anywhere on the line. -o json and -o yaml print what a
command shows for programs, times in RFC 3339 (UTC). Commands that create a
secret print only the secret on stdout; messages go to stderr.

Exit status: 0 done, 1 failed (the message says why), 2 a wrong command
line (unknown command or flag, missing arguments).`

func newRoot(info cli.BuildInfo, stdout, stderr io.Writer) *cobra.Command {
	g := &globals{info: info, env: os.Getenv}
	root := cli.NewRoot(prog, "The Tether relay and its administration", rootLong, info)
	cli.CommandTyposBeforeFlags(root)
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&g.dataDir, "data-dir", defaultDataDir, "the relay's data directory (CA, store, audit log) (env TETHER_DATA_DIR)")
	pf.StringVar(&g.store, "store", "", "the store of a cluster of relays, a postgres:// URL, which holds the CA too (env TETHER_STORE; default SQLite in the data directory)")
	pf.StringVar(&g.kekFile, "ca-kek-file", "", "file of the key-encryption key sealing the CA's keys in a PostgreSQL store (env TETHER_CA_KEK_FILE, or the key itself in TETHER_CA_KEK)")
	pf.StringVar(&g.config, "config", "", "config file of serve (env TETHER_CONFIG); admin commands take data_dir, store, ca_kek_file and audit_log from it")
	cli.AddOutputFlag(pf)
	root.AddGroup(&cobra.Group{ID: "relay", Title: "Run the relay:"}, &cobra.Group{ID: "admin", Title: "Administer it (the same commands as tetherctl's):"})
	for _, c := range []*cobra.Command{serveCmd(g), initCmd(g), demoCmd(g)} {
		c.GroupID = "relay"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{agentCmd(g), tokenCmd(g), backendCmd(g), tenantCmd(g), relayCmd(g), operatorCmd(g), caCmd(g), releaseCmd(g), auditCmd(g), backupCmd(g)} {
		c.GroupID = "admin"
		root.AddCommand(c)
	}
	return root
}

const defaultDataDir = "/var/lib/tether-relay"

// adminOptions are where an admin command finds the relay's state: the
// data directory from --data-dir, TETHER_DATA_DIR, the config file's
// data_dir or the default, in that order; the store of a cluster and its
// CA key-encryption key likewise (--store, --ca-kek-file; or
// TETHER_CA_KEK); the audit log from TETHER_AUDIT_LOG or the config
// file's audit_log (else the relay's default, in the data directory).
func (g *globals) adminOptions(cmd *cobra.Command) (admin.Options, error) {
	o := admin.Options{DataDir: g.dataDir, Existing: true}
	pick, err := g.picker()
	if err != nil {
		return o, err
	}
	o.DataDir = pick(cmd.Flags().Changed("data-dir"), g.dataDir, "TETHER_DATA_DIR", "data_dir", defaultDataDir)
	o.AuditLog = pick(false, "", "TETHER_AUDIT_LOG", "audit_log", "")
	o.Store = pick(cmd.Flags().Changed("store"), g.store, "TETHER_STORE", "store", "")
	if err := checkStore(o.Store); err != nil {
		return o, fmt.Errorf("store %q: %w", redactStore(o.Store), err)
	}
	o.CAKEK, err = g.caKEK(pick(cmd.Flags().Changed("ca-kek-file"), g.kekFile, "TETHER_CA_KEK_FILE", "ca_kek_file", ""), o.Store)
	return o, err
}

// picker returns what picks a setting of an admin command: the flag when
// given, else the environment variable, else the config file's key, else
// the default.
func (g *globals) picker() (func(flagGiven bool, flagValue, env, key, def string) string, error) {
	file, err := g.configFile()
	if err != nil {
		return nil, err
	}
	return func(flagGiven bool, flagValue, env, key, def string) string {
		switch {
		case flagGiven:
			return flagValue
		case g.env(env) != "":
			return g.env(env)
		case file != nil && file.has(key):
			return file.values[key].text
		}
		return def
	}, nil
}

// adminStore is the store an admin command acts on, as adminOptions
// finds it: "" for SQLite in the data directory.
func (g *globals) adminStore(cmd *cobra.Command) (string, error) {
	pick, err := g.picker()
	if err != nil {
		return "", err
	}
	return pick(cmd.Flags().Changed("store"), g.store, "TETHER_STORE", "store", ""), nil
}

// configFile reads the config file named by --config or TETHER_CONFIG;
// nil when there is none.
func (g *globals) configFile() (*configFile, error) {
	path := g.configPath()
	if path == "" {
		return nil, nil
	}
	return readConfigFile(path, serveSettings())
}

func (g *globals) configPath() string {
	if g.config != "" {
		return g.config
	}
	return g.env("TETHER_CONFIG")
}

// withAdmin runs fn on the relay's data directory, opened for an admin
// command: one that a relay has initialised, or an error saying how to
// make one.
func (g *globals) withAdmin(cmd *cobra.Command, fn func(ctx context.Context, a *admin.Admin) error) error {
	return g.withAdminFor(cmd, time.Minute, fn)
}

// withAdminFor is withAdmin with a time limit other than a minute, for
// a command that may take longer (backup).
func (g *globals) withAdminFor(cmd *cobra.Command, limit time.Duration, fn func(ctx context.Context, a *admin.Admin) error) error {
	o, err := g.adminOptions(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), limit)
	defer cancel()
	a, err := admin.Open(ctx, o)
	if err != nil {
		return err
	}
	defer a.Close()
	return fn(ctx, a)
}

// output is the -o format of cmd.
func output(cmd *cobra.Command) cli.Format {
	f, _ := cli.OutputOf(cmd) // the flag parsed it already
	return f
}

// say prints a message for the operator on stderr.
func say(cmd *cobra.Command, format string, args ...any) {
	fmt.Fprintf(cmd.ErrOrStderr(), format+"\n", args...)
}

// nonNil is s, or an empty slice for nil (a JSON list, not null).
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
