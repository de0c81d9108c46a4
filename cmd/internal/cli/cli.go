// Package cli holds what Tether's commands share: how a command tree
// behaves (cobra roots and groups, usage errors with suggestions, exit
// statuses, commands one binary names but cannot run), output formats
// (-o table, json, yaml), the human forms of times, durations and sizes
// in tables, build information and the version command, the choice of log
// handler, and a context cancelled by SIGINT/SIGTERM.
package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// NewLogger builds the logger for a command: JSON when w is not a terminal
// (or format is "json"), text otherwise.
func NewLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	lv, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	return NewLeveledLogger(w, lv, format)
}

// ParseLevel parses a log level: debug, info (also ""), warn or error.
func ParseLevel(level string) (slog.Level, error) {
	switch level {
	case "", "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log level %q: want debug, info, warn or error", level)
}

// NewLeveledLogger is NewLogger with a level that may change while the
// logger is in use (a *slog.LevelVar).
func NewLeveledLogger(w io.Writer, level slog.Leveler, format string) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "", "auto":
		if isTerminal(w) {
			return slog.New(slog.NewTextHandler(w, opts)), nil
		}
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want auto, json or text", format)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// SignalContext returns a context cancelled on SIGINT or SIGTERM. A second
// signal is left to the default handler (terminating at once).
func SignalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		cancel() // restores default signal handling
	}()
	return ctx, cancel
}

// Fail prints an error for the operator and exits with status 1 (for
// commands not built with NewRoot and Execute).
func Fail(prog string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
	os.Exit(1)
}

// ParseInterspersed parses flags and allows them after positional
// arguments too ("tenant add acme --data-dir d"), returning the
// positionals.
func ParseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// QuietQUICBufferWarning turns off quic-go's own warning about small UDP
// socket buffers (unless the environment already decides): the relay and
// the agent log the sizes themselves, with what to do, in their structured
// log, where quic-go's line to stderr would say the same outside it.
func QuietQUICBufferWarning() {
	if os.Getenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING") == "" {
		os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	}
}
