package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// Exit statuses of Tether's commands. A command may define more of its
// own (tether-agent's 3, refused for good) through an error with an
// ExitCode method.
const (
	ExitOK      = 0 // the command did what was asked
	ExitFailure = 1 // it could not (the relay refused, a file is missing, …)
	ExitUsage   = 2 // the command line is wrong: an unknown command or flag, missing arguments
)

// UsageError is a command line that cannot be run as written: an unknown
// command or flag, a flag value that does not parse, a wrong number of
// arguments. It exits with ExitUsage, and is followed by a hint to the
// command's help (never the whole usage).
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// ExitCode is ExitUsage.
func (e *UsageError) ExitCode() int { return ExitUsage }

// Usagef returns a *UsageError with a message.
func Usagef(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// Reported marks err as reported already by the command that returned it
// (tether-agent's refusal for good, which the agent has logged with what
// to do): Execute prints nothing more and exits with err's ExitCode.
func Reported(err error) error {
	if err == nil {
		return nil
	}
	return &reportedError{err: err}
}

type reportedError struct{ err error }

func (e *reportedError) Error() string { return e.err.Error() }
func (e *reportedError) Unwrap() error { return e.err }

// ExitCode is the status a command that returned err exits with: ExitOK
// for nil, the code of the first error in the chain with an ExitCode()
// method (a *UsageError: ExitUsage), else ExitFailure.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var coded interface{ ExitCode() int }
	if errors.As(err, &coded) {
		return coded.ExitCode()
	}
	return ExitFailure
}

// Execute runs root with args under ctx, prints an error to stderr as
// "PROG: message" (a usage error followed by a pointer to the command's
// help; nothing for an error marked Reported) and returns the exit status
// for os.Exit.
func Execute(ctx context.Context, root *cobra.Command, args []string, stderr io.Writer) int {
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	if errors.Is(err, errHelpShown) {
		return ExitUsage
	}
	if _, ok := errors.AsType[*reportedError](err); ok {
		return ExitCode(err)
	}
	fmt.Fprintf(stderr, "%s: %v\n", root.Name(), err)
	code := ExitCode(err)
	if code == ExitUsage && cmd != nil {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return code
}
