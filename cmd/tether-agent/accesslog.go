package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/agent/accesslog"
	"github.com/tetherhq/tether/installer"
)

// errLogBroken is returned when --verify finds the access log not intact
// (exit status 1).
var errLogBroken = errors.New("the access log is not intact")

// maxWarnings bounds the warnings about unreadable lines when printing.
const maxWarnings = 10

// accessLog prints the agent's access log, or verifies it (--verify).
// Exit status: 0 printed, or intact; 1 broken, or unreadable; 2 usage.
func accessLog(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(prog+" access-log", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "agent config file (YAML): its access log is read (default: the installed service's config)")
	file := fs.String("file", "", "the access log's current file, instead of the config's (a copy, say); its rotated files are read beside it")
	caPath := fs.String("ca", "", "CA roots (PEM) that issued the agent's certificates, for --verify (default: ca.crt in the state directory)")
	verify := fs.Bool("verify", false, "walk the hash chain across the files and check every checkpoint's signature: exit 0 intact, 1 broken")
	since := fs.Duration("since", 0, "only lines written within this long, e.g. 2h")
	service := fs.String("service", "", "only streams to this service")
	backend := fs.String("backend", "", "only streams of this backend (name, or backend:name)")
	output := fs.String("o", "", "output: table (default) or json; with --verify: text (default) or json")
	if err := fs.Parse(args); err != nil {
		return flag.ErrHelp // the flag package has said what is wrong
	}
	usage := func(format string, a ...any) error {
		fmt.Fprintf(stderr, prog+" access-log: "+format+"\n", a...)
		return flag.ErrHelp
	}
	if fs.NArg() > 0 {
		return usage("takes no arguments (got %q)", fs.Args())
	}
	if *since < 0 {
		return usage("--since %v: want a positive duration", *since)
	}
	switch {
	case *verify && *output != "" && *output != "text" && *output != "json":
		return usage("-o %q: want text or json with --verify", *output)
	case !*verify && *output != "" && *output != "table" && *output != "json":
		return usage("-o %q: want table or json", *output)
	case *verify && (*since != 0 || *service != "" || *backend != ""):
		return usage("--verify checks the whole log: --since, --service and --backend do not apply")
	}
	cfg := agent.Config{}
	if *configPath == "" && *file == "" {
		*configPath = installer.DefaultLayout().ConfigPath
	}
	if *configPath != "" {
		c, err := agent.LoadConfig(*configPath)
		if err != nil {
			if *file == "" && *configPath == installer.DefaultLayout().ConfigPath {
				return fmt.Errorf("%w (give --config FILE, or --file PATH for an access log anywhere)", err)
			}
			return err
		}
		cfg = c
	}
	if *file != "" {
		cfg.AccessLog.Path = *file
	}
	if *verify {
		return verifyAccessLog(cfg, *caPath, *output == "json", stdout)
	}
	return printAccessLog(cfg.AccessLogPath(), filter{since: *since, service: *service, backend: *backend, now: time.Now()}, *output == "json", stdout, stderr)
}

// filter selects the lines to print.
type filter struct {
	since   time.Duration
	service string
	backend string
	now     time.Time
}

func (f filter) match(e *accesslog.Entry) bool {
	if f.since > 0 && e.Time.Before(f.now.Add(-f.since)) {
		return false
	}
	if f.service == "" && f.backend == "" {
		return true
	}
	if e.Type != accesslog.TypeStream {
		return false
	}
	if f.service != "" && e.Service != f.service {
		return false
	}
	if f.backend != "" && e.Backend != f.backend && strings.TrimPrefix(e.Backend, "backend:") != f.backend {
		return false
	}
	return true
}

// printAccessLog prints the lines of the log at path that f selects,
// oldest first: each line as written (json), or the streams as a table.
func printAccessLog(path string, f filter, asJSON bool, stdout, stderr io.Writer) error {
	files, err := accesslog.Files(path)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("no access log at %s", path)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	if !asJSON {
		fmt.Fprintln(tw, "TIME\tREQUEST\tBACKEND\tSERVICE\tCODE\tEND\tTO SERVICE\tFROM SERVICE\tDURATION")
	}
	rows, warnings := 0, 0
	err = accesslog.Read(path, func(file string, n int, e accesslog.Entry, raw []byte, perr error) error {
		if perr != nil {
			if warnings++; warnings <= maxWarnings {
				fmt.Fprintf(stderr, "%s:%d: skipped: %v (tether-agent access-log --verify checks the log)\n", file, n, perr)
			}
			return nil
		}
		if !f.match(&e) {
			return nil
		}
		if asJSON {
			_, err := fmt.Fprintf(stdout, "%s\n", raw)
			return err
		}
		ts := e.Time.UTC().Format("2006-01-02T15:04:05.000Z")
		switch e.Type {
		case accesslog.TypeStream:
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", ts, orNone(e.Request), orNone(e.Backend), orNone(e.Service),
				e.Code, e.End, e.BytesToService, e.BytesFromService, e.Duration().Round(time.Millisecond))
		case accesslog.TypeStart:
			note := ""
			if e.Note != "" {
				note = ": " + e.Note
			}
			fmt.Fprintf(tw, "%s\t(agent %s started, version %s%s)\n", ts, e.Agent, e.Version, note)
		case accesslog.TypeLost:
			fmt.Fprintf(tw, "%s\t(%d records lost: %s)\n", ts, e.Lost, e.Note)
		default:
			return nil // checkpoints: see --verify
		}
		if rows++; rows%500 == 0 {
			return tw.Flush()
		}
		return nil
	})
	if ferr := tw.Flush(); err == nil && !asJSON {
		err = ferr
	}
	if warnings > maxWarnings {
		fmt.Fprintf(stderr, "… and %d more lines skipped\n", warnings-maxWarnings)
	}
	return err
}

// verifyAccessLog walks the chain and reports.
func verifyAccessLog(cfg agent.Config, caPath string, asJSON bool, stdout io.Writer) error {
	o, err := agent.AccessLogVerifyOptions(cfg, caPath)
	if err != nil {
		return err
	}
	res, err := accesslog.Verify(o)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		printVerify(stdout, res, o)
	}
	if !res.Intact {
		return fmt.Errorf("%w: %s", errLogBroken, res.Problem)
	}
	return nil
}

func printVerify(w io.Writer, res accesslog.Result, o accesslog.VerifyOptions) {
	fmt.Fprintf(w, "access log %s: %d file(s)", res.Dir, len(res.Files))
	if len(res.Files) > 0 {
		fmt.Fprintf(w, ", %s … %s", res.Files[0], res.Files[len(res.Files)-1])
	}
	fmt.Fprintln(w)
	if p := res.Problem; p != nil {
		if p.Tampering() {
			fmt.Fprintf(w, "BROKEN at %s:%d: %s: %s\n", p.File, p.Line, p.Kind, p.Detail)
		} else {
			fmt.Fprintf(w, "INCOMPLETE at %s:%d (not tampering): %s\n", p.File, p.Line, p.Detail)
		}
		fmt.Fprintf(w, "checked before it: %d lines, %d checkpoints (%d verified)\n", res.Lines, res.Checkpoints, res.Verified)
		return
	}
	if res.Lines == 0 {
		fmt.Fprintln(w, "intact: no lines yet")
		return
	}
	fmt.Fprintf(w, "intact: %d lines, seq %d to %d", res.Lines, res.FirstSeq, res.LastSeq)
	if res.Follows == accesslog.Genesis {
		fmt.Fprintln(w, ", from the start of the chain")
	} else {
		fmt.Fprintf(w, ", following hash %.16s… (older files were rotated away)\n", res.Follows)
	}
	switch {
	case res.Checkpoints == 0:
		fmt.Fprintln(w, "checkpoints: none yet (no line is signed)")
	case res.CertificatesChecked:
		fmt.Fprintf(w, "checkpoints: %d, every signature verified, by certificates of %s issued by the agent's CA roots\n", res.Checkpoints, orNone(o.Agent))
	default:
		fmt.Fprintf(w, "checkpoints: %d, every signature verified against its own certificate (no CA roots to check the certificates: give --ca or --config)\n", res.Checkpoints)
	}
	switch {
	case res.CleanStop:
		fmt.Fprintln(w, "last line: the checkpoint of a clean stop")
	case res.Unsigned > 0:
		fmt.Fprintf(w, "last %d line(s) after the last checkpoint are not signed yet (the agent is running, or did not stop cleanly)\n", res.Unsigned)
	}
}
