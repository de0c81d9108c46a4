// Command tetherctl administers a Tether relay through its admin API
// (tether-relay serve --admin-listen) and forwards local ports to tenant
// services through its front door. Run "tetherctl --help" for usage.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/cmd/internal/cli"
)

// Set at build time (scripts/release): go build -ldflags '-X
// main.version=1.2.3 -X main.commit=… -X main.date=…'.
var version, commit, date = "dev", "", ""

const prog = "tetherctl"

func main() {
	ctx, stop := cli.SignalContext()
	code := cli.Execute(ctx, newRoot(cli.ReadBuildInfo(prog, version, commit, date), os.Stdout, os.Stderr, os.Getenv), os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}

const rootLong = `tetherctl administers a Tether relay through its admin API (tether-relay
serve --admin-listen), from anywhere, and forwards local ports to tenant
services through the relay's front door (tetherctl forward).

Its commands are tether-relay's: the same nouns, verbs and flags. A few need
the relay's data directory and run only there (tether-relay on the relay
host): their help says so.

Connection, from the flags or else the environment: --url
(TETHER_ADMIN_URL), --token (TETHER_ADMIN_TOKEN) or --token-file
(TETHER_ADMIN_TOKEN_FILE), or --cert and --key (TETHER_ADMIN_CERT,
TETHER_ADMIN_KEY); --ca (TETHER_ADMIN_CA) to verify the relay with its CA
(tether-relay ca export). Global flags may come anywhere on the line.

-o json and -o yaml print the API's answer for programs, times in RFC 3339
(UTC). Commands that create a secret print only the secret on stdout.

Exit status: 0 done, 1 failed (the relay's error is printed with its code),
2 a wrong command line (unknown command or flag, missing arguments).`

// ctl is tetherctl's state: its connection flags and the client made
// from them when a command first calls the API.
type ctl struct {
	conn clientConfig
	env  func(string) string
	c    *client
}

func newRoot(info cli.BuildInfo, stdout, stderr io.Writer, env func(string) string) *cobra.Command {
	x := &ctl{env: env}
	root := cli.NewRoot(prog, "Administer a Tether relay through its admin API", rootLong, info)
	cli.CommandTyposBeforeFlags(root)
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&x.conn.url, "url", "", "the admin API, e.g. https://relay.example:7446 (env TETHER_ADMIN_URL)")
	pf.StringVar(&x.conn.token, "token", "", "operator token (env TETHER_ADMIN_TOKEN; tether-relay operator token create)")
	pf.StringVar(&x.conn.tokenFile, "token-file", "", "file holding the operator token (env TETHER_ADMIN_TOKEN_FILE)")
	pf.StringVar(&x.conn.ca, "ca", "", "CA to verify the relay with, PEM (env TETHER_ADMIN_CA; tether-relay ca export)")
	pf.StringVar(&x.conn.cert, "cert", "", "operator client certificate, PEM (env TETHER_ADMIN_CERT; tether-relay operator certificate)")
	pf.StringVar(&x.conn.key, "key", "", "operator client key, PEM (env TETHER_ADMIN_KEY)")
	pf.DurationVar(&x.conn.timeout, "timeout", 30*time.Second, "limit on each API call")
	cli.AddOutputFlag(pf)
	root.AddGroup(&cobra.Group{ID: "admin", Title: "Administer the relay (the same commands as tether-relay's):"},
		&cobra.Group{ID: "backend", Title: "Reach tenant services:"})
	for _, c := range []*cobra.Command{x.agentCmd(), x.tokenCmd(), x.backendCmd(), x.tenantCmd(), x.relayCmd(), x.operatorCmd(), caCmd(), x.releaseCmd(), x.auditCmd(), backupCmd(), x.whoamiCmd()} {
		c.GroupID = "admin"
		root.AddCommand(c)
	}
	fwd := forwardCmd(env)
	fwd.GroupID = "backend"
	root.AddCommand(fwd)
	root.AddCommand(x.hiddenAliases()...)
	return root
}

// client returns the admin API client, made from the connection flags
// (else the environment) on first use.
func (x *ctl) client() (*client, error) {
	if x.c != nil {
		return x.c, nil
	}
	c := x.conn
	for _, f := range []struct {
		v   *string
		env string
	}{{&c.url, "TETHER_ADMIN_URL"}, {&c.token, "TETHER_ADMIN_TOKEN"}, {&c.tokenFile, "TETHER_ADMIN_TOKEN_FILE"},
		{&c.ca, "TETHER_ADMIN_CA"}, {&c.cert, "TETHER_ADMIN_CERT"}, {&c.key, "TETHER_ADMIN_KEY"}} {
		if *f.v == "" {
			*f.v = x.env(f.env)
		}
	}
	cl, err := newClient(c)
	if err != nil {
		return nil, err
	}
	x.c = cl
	return cl, nil
}

// call calls the API and prints its answer: with -o json or yaml as it
// came (times made UTC), else with table.
// Messages (on stderr, in every format) follow the answer.
func (x *ctl) call(cmd *cobra.Command, method, path string, q url.Values, body any, table func(w io.Writer, raw json.RawMessage) error, messages ...func(raw json.RawMessage)) error {
	c, err := x.client()
	if err != nil {
		return err
	}
	var raw json.RawMessage
	if err := c.do(cmd.Context(), method, path, q, body, &raw); err != nil {
		return err
	}
	f, _ := cli.OutputOf(cmd)
	if err := cli.Print(cmd.OutOrStdout(), f, raw, func(w io.Writer) error { return table(w, raw) }); err != nil {
		return err
	}
	for _, m := range messages {
		m(raw)
	}
	return nil
}

// act calls the API for an action and tells the operator what happened
// (message, on stderr); with -o json or yaml it prints the answer too.
func (x *ctl) act(cmd *cobra.Command, method, path string, body any, message func(raw json.RawMessage)) error {
	return x.call(cmd, method, path, nil, body, func(io.Writer, json.RawMessage) error { return nil }, message)
}

// say prints a message for the operator on stderr.
func say(cmd *cobra.Command, format string, args ...any) {
	fmt.Fprintf(cmd.ErrOrStderr(), format+"\n", args...)
}

// onRelayHost is the reason of a command that needs the relay's data
// directory.
func onRelayHost(relayCmd, why string) string {
	return why + "; run it on the relay's host: tether-relay " + relayCmd
}

func (x *ctl) whoamiCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "whoami",
		Short: "Show who the credential is",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return x.call(cmd, "GET", "/api/v1/whoami", nil, nil, func(w io.Writer, raw json.RawMessage) error {
				var op struct{ Name, Via, Tenant, Role string }
				if err := json.Unmarshal(raw, &op); err != nil {
					return err
				}
				scope := ""
				if op.Tenant != "" {
					scope = fmt.Sprintf(", %s of tenant %s", op.Role, op.Tenant)
				}
				_, err := fmt.Fprintf(w, "%s (by %s)%s\n", op.Name, op.Via, scope)
				return err
			})
		},
	}
}

// hiddenAliases are the commands of earlier versions, which scripts may
// use: they run the commands that replaced them and are not in the help.
func (x *ctl) hiddenAliases() []*cobra.Command {
	alias := func(use, of string, target *cobra.Command) *cobra.Command {
		c := &cobra.Command{
			Use:    use,
			Short:  "the same as tetherctl " + of,
			Hidden: true,
			Args:   target.Args,
			RunE:   target.RunE,
		}
		c.Flags().AddFlagSet(target.Flags())
		return c
	}
	agents := x.agentList()
	revoke := x.agentRevoke()
	drain := x.agentDrain()
	tenants := x.tenantList()
	backends := x.backendList()
	tokens := x.tokenList()
	limits := x.tenantLimits()
	return []*cobra.Command{
		alias("agents", "agent list", agents),
		alias("revoke ID", "agent revoke ID", revoke),
		alias("drain ID", "agent drain ID", drain),
		alias("tenants", "tenant list", tenants),
		alias("relays", "relay list", x.relayList()),
		alias("backends", "backend list", backends),
		alias("tokens", "token list", tokens),
		alias("limits [NAME]", "tenant limits [NAME]", limits),
	}
}
