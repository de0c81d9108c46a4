// Command tether-agent is the Tether agent: it enrols with a relay and then
// keeps the tenant's allowed services reachable through it. Run
// "tether-agent --help" for usage.
package main

import (
	"context"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tetherhq/tether/cmd/internal/cli"
)

// Set at build time (scripts/release): go build -ldflags '-X
// main.version=1.2.3 -X main.commit=… -X main.date=…'.
var version, commit, date = "dev", "", ""

// updateKeys are the release keys this build trusts for self-update,
// comma-separated, each the key line of a release.pub:
// go build -ldflags '-X main.updateKeys=RWQ…'. More may be added in the
// config file (update: public_keys).
var updateKeys = ""

const prog = "tether-agent"

func main() {
	cli.QuietQUICBufferWarning()
	root := newRoot(&app{info: cli.ReadBuildInfo(prog, version, commit, date), env: os.Getenv, args: os.Args[1:]}, os.Stdin, os.Stdout, os.Stderr)
	// No signal context here: run and service stop on SIGTERM and SIGINT
	// themselves (draining), and the other commands end on them at once.
	os.Exit(cli.Execute(context.Background(), root, goFlagSpellings(root, os.Args[1:]), os.Stderr))
}

// app is what the commands share: the build, the environment, the
// command line (which a self-update runs the new binary with).
type app struct {
	info cli.BuildInfo
	env  func(string) string
	args []string
}

const rootLong = `tether-agent is the Tether agent. It enrols with a relay once (enroll),
then runs (run, or service under the service manager), dialling out to the
relay and letting it reach the services of its config file's allowlist,
and nothing else.

Install it as a service with install, then start; status and access-log
show what it does. Flags may come anywhere on the line (the single-dash
spellings of earlier versions, -config FILE, are taken too). -o json and
-o yaml print what status, access-log, enroll and version show for
programs.

The join token comes from --token-file FILE (- for standard input) or
$TETHER_JOIN_TOKEN, which keep it off the command line; --token works but
puts a secret where other users of the machine can read it. Enrolment and
the TCP transport go through the HTTP proxy in $HTTPS_PROXY (except relays
in $NO_PROXY); --proxy, or proxy: in the config file, overrides it.

Exit status: 0 done (run and service: stopped by SIGTERM, SIGINT or the
service manager); 1 failed (the message says why); 2 a wrong command line
(unknown command or flag, missing arguments), or no command; 3 run and
service only: a relay refused the agent for good (revoked, unknown to the
relay, certificate expired): enrol it again with a new join token (the
service manager does not restart it); 75 run and service: restart into a
new binary after a self-update. access-log --verify exits 1 when the log is
not intact. See README.md for the config file reference.`

func newRoot(a *app, stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	root := cli.NewRoot(prog, "The Tether agent: a tenant's outbound connector to a Tether relay", rootLong, a.info)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cli.CommandTyposBeforeFlags(root)
	cli.AddOutputFlagAliases(root.PersistentFlags(), map[string]cli.Format{"text": cli.Table})
	root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	root.AddGroup(&cobra.Group{ID: "agent", Title: "Enrol and run the agent:"},
		&cobra.Group{ID: "service", Title: "Run it as a service (systemd, the Windows service control manager):"},
		&cobra.Group{ID: "look", Title: "See what it does:"})
	for _, g := range []struct {
		id   string
		cmds []*cobra.Command
	}{
		{"agent", []*cobra.Command{a.enrollCmd(), a.runCmd()}},
		{"service", []*cobra.Command{installCmd(), uninstallCmd(), startCmd(), stopCmd(), a.serviceCmd(), unitCmd()}},
		{"look", []*cobra.Command{statusCmd(), accessLogCmd()}},
	} {
		for _, c := range g.cmds {
			c.GroupID = g.id
			root.AddCommand(c)
		}
	}
	return root
}

// configFlag adds --config, the agent's config file, to fs.
func configFlag(cmd *cobra.Command, p *string, usage string) {
	cmd.Flags().StringVar(p, "config", "", usage)
	cmd.MarkFlagFilename("config", "yaml", "yml")
}

// output is the -o format of cmd.
func output(cmd *cobra.Command) cli.Format {
	f, _ := cli.OutputOf(cmd) // the flag parsed it already
	return f
}

// goFlagSpellings rewrites the long flags of earlier versions' spelling,
// with one dash (-config FILE, -files-only: Go's flag package took both),
// to two, so that command lines written for them keep working: a unit
// file, a script, a self-update's trial run of the new binary with the old
// one's arguments. Only the names of root's flags are rewritten, and
// nothing after "--".
func goFlagSpellings(root *cobra.Command, args []string) []string {
	names := map[string]bool{"help": true, "version": true}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		add := func(f *pflag.Flag) {
			if len(f.Name) > 1 {
				names[f.Name] = true
			}
		}
		c.Flags().VisitAll(add)
		c.PersistentFlags().VisitAll(add)
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	out := make([]string, len(args))
	copy(out, args)
	for i, arg := range out {
		if arg == "--" {
			break
		}
		if len(arg) < 3 || arg[0] != '-' || arg[1] == '-' {
			continue
		}
		name, _, _ := strings.Cut(arg[1:], "=")
		if names[name] {
			out[i] = "-" + arg
		}
	}
	return out
}
