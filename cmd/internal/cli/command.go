package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// NewRoot returns the root command of a binary, set up the same way for
// every Tether command: errors and usage are left to Execute (no usage
// after a failure), a flag or argument that does not parse is a
// *UsageError, an unknown command is one with suggestions, and version
// and completion commands are there. Run without a command, it prints its
// help to stderr and exits with ExitUsage.
func NewRoot(name, short, long string, info BuildInfo) *cobra.Command {
	root := &cobra.Command{
		Use:                        name,
		Short:                      short,
		SuggestionsMinimumDistance: 2,
		Long:                       long,
		SilenceUsage:               true,
		SilenceErrors:              true,
		Args:                       subcommandArgs,
		RunE:                       groupRun,
		Version:                    info.Version,
	}
	root.SetFlagErrorFunc(flagError)
	root.SetUsageTemplate(usageTemplate)
	root.SetVersionTemplate(info.String())
	root.AddCommand(VersionCommand(info))
	return root
}

// Group returns a command that holds subcommands ("agent" of "agent
// list"). Run alone, it prints its help to stderr and exits with
// ExitUsage; an unknown subcommand is a usage error with suggestions.
func Group(use, short string, subs ...*cobra.Command) *cobra.Command {
	g := &cobra.Command{Use: use, Short: short, Args: subcommandArgs, RunE: groupRun, SuggestionsMinimumDistance: 2}
	g.AddCommand(subs...)
	return g
}

// errHelpShown is a usage error whose help has been printed already.
var errHelpShown = &UsageError{Err: errors.New("help shown")}

// groupRun runs a group without a subcommand: its help, to stderr.
func groupRun(cmd *cobra.Command, args []string) error {
	cmd.SetOut(cmd.ErrOrStderr())
	cmd.HelpFunc()(cmd, args)
	return errHelpShown
}

// subcommandArgs accepts no arguments for a group but its subcommands'
// names (which cobra has routed already): anything else is an unknown
// command.
func subcommandArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	return UnknownCommand(cmd, args[0])
}

// UnknownCommand is the usage error for name, which is not a subcommand
// of cmd, naming the subcommands it is close to.
func UnknownCommand(cmd *cobra.Command, name string) error {
	msg := fmt.Sprintf("unknown command %q for %q", name, cmd.CommandPath())
	if s := cmd.SuggestionsFor(name); len(s) > 0 {
		msg += "; did you mean " + quoteList(s) + "?"
	} else {
		var names []string
		for _, c := range cmd.Commands() {
			if c.IsAvailableCommand() {
				names = append(names, c.Name())
			}
		}
		msg += "; its commands are " + strings.Join(names, ", ")
	}
	return &UsageError{Err: errors.New(msg)}
}

// IsNearCommand reports whether name is a subcommand of cmd or close to
// one (a likely typo), for groups that also take other words.
func IsNearCommand(cmd *cobra.Command, name string) bool {
	return len(cmd.SuggestionsFor(name)) > 0
}

func quoteList(s []string) string {
	q := make([]string, len(s))
	for i, x := range s {
		q[i] = fmt.Sprintf("%q", x)
	}
	if len(q) == 1 {
		return q[0]
	}
	return "one of " + strings.Join(q, ", ")
}

// CommandTyposBeforeFlags makes a mistyped command followed by flags
// ("enrol --relay r") an unknown command with suggestions, as it is
// without them, rather than an unknown flag of the group it was looked
// for in (cobra parses the group's flags first): a flag error of a command
// with subcommands whose first argument is none of them.
func CommandTyposBeforeFlags(root *cobra.Command) {
	prev := root.FlagErrorFunc()
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		if args := cmd.Flags().Args(); cmd.HasAvailableSubCommands() && len(args) > 0 {
			return UnknownCommand(cmd, args[0])
		}
		return prev(cmd, err)
	})
}

// flagError makes a flag that does not parse a usage error, suggesting the
// flag meant when one is unknown.
func flagError(cmd *cobra.Command, err error) error {
	var ne *pflag.NotExistError
	if errors.As(err, &ne) && ne.GetSpecifiedName() != "" {
		if s := closestFlag(cmd.Flags(), ne.GetSpecifiedName()); s != "" {
			return &UsageError{Err: fmt.Errorf("%w; did you mean --%s?", err, s)}
		}
	}
	return &UsageError{Err: err}
}

// closestFlag is the flag of fs whose name is within two edits of name,
// or starts with it, if one is.
func closestFlag(fs *pflag.FlagSet, name string) string {
	var names []string
	fs.VisitAll(func(f *pflag.Flag) {
		if !f.Hidden {
			names = append(names, f.Name)
		}
	})
	for _, n := range names {
		if strings.HasPrefix(n, name) {
			return n
		}
	}
	return Nearest(name, names)
}

// Nearest is the word of words closest to w within two edits (a likely
// typo of it), or "".
func Nearest(w string, words []string) string {
	best, bestD := "", 3
	for _, x := range words {
		if d := levenshtein(strings.ToLower(w), strings.ToLower(x)); d < bestD {
			best, bestD = x, d
		}
	}
	return best
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Args returns the validator of a command's positional arguments, named
// as its help names them: "ID" is required, "[NAME]" optional (only
// last), "GRANT..." one or more (only last), "[GRANT...]" any number.
// Too few or too many is a usage error naming what is missing or extra.
func Args(names ...string) cobra.PositionalArgs {
	lo, hi := len(names), len(names)
	if n := len(names); n > 0 {
		last := names[n-1]
		optional := strings.HasPrefix(last, "[")
		many := strings.HasSuffix(strings.TrimSuffix(last, "]"), "...")
		if optional {
			lo--
		}
		if many {
			hi = -1
		}
	}
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) < lo:
			missing := names[len(args):lo]
			return &UsageError{Err: fmt.Errorf("%s needs %s", Name(cmd), strings.Join(missing, " "))}
		case hi >= 0 && len(args) > hi:
			if hi == 0 {
				return &UsageError{Err: fmt.Errorf("%s takes no arguments (got %q)", Name(cmd), strings.Join(args, " "))}
			}
			return &UsageError{Err: fmt.Errorf("%s: unexpected argument %q (it takes %s)", Name(cmd), args[hi], strings.Join(names, " "))}
		}
		return nil
	}
}

// Name is cmd's path without the binary's name ("agent show"), as
// messages after "tetherctl: " name it.
func Name(cmd *cobra.Command) string {
	if !cmd.HasParent() {
		return cmd.Name()
	}
	return strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
}

// NoArgs is the validator of a command that takes no arguments.
func NoArgs(cmd *cobra.Command, args []string) error { return Args()(cmd, args) }

// Unavailable is the annotation key of commands that a binary names, for
// one vocabulary with the other, but cannot run.
const Unavailable = "tether/unavailable"

// ErrUnavailable is the class of the error of a command run where it
// cannot be (tetherctl ca rotate, which needs the store's CA keys).
var ErrUnavailable = errors.New("not available here")

type unavailableError struct{ msg string }

func (e *unavailableError) Error() string { return e.msg }
func (e *unavailableError) Unwrap() error { return ErrUnavailable }

// UnavailableCommand returns a command this binary names but cannot run,
// so that tether-relay and tetherctl take the same commands: its short
// help says where it runs (where: "tetherctl only"), its help why and what
// to run instead (why, a sentence); run, it fails with that, whatever its
// flags and arguments, with ExitFailure.
func UnavailableCommand(use, short, where, why string) *cobra.Command {
	return &cobra.Command{
		Use:                use,
		Short:              short + " [" + where + "]",
		Long:               "Not available here: " + why,
		Annotations:        map[string]string{Unavailable: why},
		Args:               cobra.ArbitraryArgs,
		FParseErrWhitelist: cobra.FParseErrWhitelist{UnknownFlags: true},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return &unavailableError{msg: Name(cmd) + " is not available here: " + why}
		},
	}
}

// NoGlobalFlags is the annotation key of commands whose help leaves out
// the global flags, which they do not use (tetherctl forward).
const NoGlobalFlags = "tether/noglobalflags"

// usageTemplate is cobra's, but a group shows only "CMD [command]", and
// commands annotated NoGlobalFlags leave out the global flags.
const usageTemplate = `Usage:{{if and .Runnable (not .HasAvailableSubCommands)}}
  {{.UseLine}}{{end}}{{if .HasAvailableSubCommands}}
  {{.CommandPath}} [command]{{end}}{{if gt (len .Aliases) 0}}

Aliases:
  {{.NameAndAliases}}{{end}}{{if .HasExample}}

Examples:
{{.Example}}{{end}}{{if .HasAvailableSubCommands}}{{$cmds := .Commands}}{{if eq (len .Groups) 0}}

Available Commands:{{range $cmds}}{{if (or .IsAvailableCommand (eq .Name "help"))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{else}}{{range $group := .Groups}}

{{.Title}}{{range $cmds}}{{if (and (eq .GroupID $group.ID) (or .IsAvailableCommand (eq .Name "help")))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{if not .AllChildCommandsHaveGroup}}

Other Commands:{{range $cmds}}{{if (and (eq .GroupID "") (or .IsAvailableCommand (eq .Name "help")))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{end}}{{end}}{{if .HasAvailableLocalFlags}}

Flags:
{{.LocalFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if and .HasAvailableInheritedFlags (not (index .Annotations "tether/noglobalflags"))}}

Global Flags:
{{.InheritedFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasHelpSubCommands}}

Additional help topics:{{range .Commands}}{{if .IsAdditionalHelpTopicCommand}}
  {{rpad .CommandPath .CommandPathPadding}} {{.Short}}{{end}}{{end}}{{end}}{{if .HasAvailableSubCommands}}

Use "{{.CommandPath}} [command] --help" for more information about a command.{{end}}
`

// Vocabulary is the operator commands, noun then verb, that both
// tether-relay (locally, on the relay's data directory) and tetherctl
// (remotely, through the admin API) take. Each binary runs a command of it
// or, where it cannot (a drain needs a running relay, a CA rotation the
// data directory), refuses it saying which binary can; the binaries' tests
// check their command trees against this list.
func Vocabulary() []string {
	return []string{
		"agent list", "agent show", "agent revoke", "agent drain",
		"token create", "token list", "token revoke",
		"backend add", "backend list", "backend show", "backend grant", "backend ungrant", "backend remove", "backend certificate",
		"backend certificates", "backend revoke-certificate",
		"tenant add", "tenant list", "tenant show", "tenant limits",
		"relay list", "relay remove",
		"operator token create", "operator token list", "operator token revoke",
		"operator certificate create", "operator certificate list", "operator certificate revoke",
		"ca status", "ca rotate", "ca renew-now", "ca retire", "ca export",
		"release keygen", "release sign", "release publish", "release list", "release remove", "release rollout", "release status",
		"audit",
		"backup",
	}
}

// Leaves returns the runnable leaf commands under root, by path without
// the root's name ("agent list"), hidden ones and help excluded.
func Leaves(root *cobra.Command) map[string]*cobra.Command {
	out := map[string]*cobra.Command{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, s := range c.Commands() {
			if s.Hidden || s.Name() == "help" {
				continue
			}
			if s.HasSubCommands() {
				walk(s)
				continue
			}
			out[strings.TrimPrefix(s.CommandPath(), root.Name()+" ")] = s
		}
	}
	walk(root)
	return out
}
