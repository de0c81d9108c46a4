package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/agent/accesslog"
	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/installer"
)

// errLogBroken is returned when --verify finds the access log not intact
// (exit status 1).
var errLogBroken = errors.New("the access log is not intact")

// maxWarnings bounds the warnings about unreadable lines when printing.
const maxWarnings = 10

type accessLogOptions struct {
	configPath, file, caPath, key string
	keyRecord                     string
	verify, rotateKey             bool
	since                         time.Duration
	service, backend              string
}

func accessLogCmd() *cobra.Command {
	var o accessLogOptions
	cmd := &cobra.Command{
		Use:   "access-log",
		Short: "Print the agent's access log, verify it (--verify), or replace its key (--rotate-key)",
		Long: `Print the agent's access log, oldest first, across its rotated files: a
table of streams (their open and end lines, and the agent's starts, lost
records and counts of refused streams beyond the log's budget for them),
or with -o json
each line as written (-o yaml: a list of them). --since, --service and
--backend select lines.

--verify walks the log's hash chain across the files and checks every
checkpoint's signature with the log key (access-log.key in the state
directory, made on this machine and never sent anywhere), following the
chain of keys from the pinned one: --key FINGERPRINT (the first key's, as
enroll printed it), else the first key of the state directory's key record
(access-log.keys), which links it to the keys that replaced it once the
files that introduced them are deleted. A checkpoint signed
by a key outside that chain is reported, whatever the CA says. Checkpoints
of earlier versions, signed with the agent's certificate, are checked
against the agent's CA roots (that the certificate names this agent and
that they issued it), and the report says that those lines are verified
against the CA only. It reports the log as intact or the first problem at
its file and line, the streams opened whose end it does not hold
(still open, or the agent was killed before it recorded their end), and
the records lost: those its lost lines count, and those of stops that
could not write the log, recorded in the state directory, that the
agent's next start writes as lost lines. It
exits 0 when the log is intact and 1 when it is not (or cannot be read).

The log is the one of --config FILE (default: the installed service's
config), or --file PATH: a log anywhere (a copy, say), its rotated files
beside it; give --key with it, or the chain of keys starts from whatever
key the log names first (the report prints its fingerprint), and
--key-record FILE (a copy of access-log.keys) when the files that
introduced later keys were deleted.

--rotate-key replaces the log key now, as the agent does every
access_log.key_rotation (default 24h): a key line naming a new key, signed
by the old one, goes into the log, the new key into the key record, and
the old private key is destroyed, so that whoever later gets the machine
cannot rewrite the lines before. A running agent owns its log: stop it
first (the command is refused while an agent holds the state directory).`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return accessLog(o, output(cmd), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fs := cmd.Flags()
	configFlag(cmd, &o.configPath, "agent config file, YAML: its access log is read (default: the installed service's config)")
	fs.StringVar(&o.file, "file", "", "the access log's current file, instead of the config's (a copy, say); its rotated files are read beside it")
	fs.StringVar(&o.caPath, "ca", "", "CA roots (PEM) that issued the agent's certificates, for --verify (default: ca.crt in the state directory)")
	fs.BoolVar(&o.verify, "verify", false, "walk the hash chain across the files and check every checkpoint's signature: exit 0 intact, 1 broken")
	fs.StringVar(&o.keyRecord, "key-record", "", "the key record (access-log.keys) that links the pinned key to later ones, for --verify of a copy (default: the state directory's)")
	fs.BoolVar(&o.rotateKey, "rotate-key", false, "replace the log key now and destroy the old one (the agent must be stopped; it does so itself every access_log.key_rotation)")
	fs.StringVar(&o.key, "key", "", "fingerprint of the log key the chain of keys starts from, for --verify: the first one, recorded at enrolment (default: the first key of the key record in the state directory)")
	fs.DurationVar(&o.since, "since", 0, "only lines written within this long, e.g. 2h")
	fs.StringVar(&o.service, "service", "", "only streams to this service")
	fs.StringVar(&o.backend, "backend", "", "only streams of this backend (name, or backend:name)")
	cmd.MarkFlagFilename("file")
	cmd.MarkFlagFilename("ca", "pem", "crt")
	return cmd
}

// rotateLogKey replaces the access log's key now (--rotate-key).
func rotateLogKey(cfg agent.Config, stdout, stderr io.Writer) error {
	log, err := cli.NewLogger(stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return err
	}
	cfg.Logger = log
	cfg.Version = version
	old, next, err := agent.RotateAccessLogKey(cfg, "access-log --rotate-key")
	if err != nil {
		return fmt.Errorf("access-log --rotate-key: %w", err)
	}
	fmt.Fprintf(stdout, "access log key replaced: %s -> %s; the old key is destroyed (the first key's fingerprint stays the pin for --verify)\n", old, next)
	return nil
}

// accessLog prints the agent's access log, or verifies it (--verify).
// Exit status: 0 printed, or intact; 1 broken, or unreadable; 2 usage.
func accessLog(o accessLogOptions, f cli.Format, stdout, stderr io.Writer) error {
	if o.since < 0 {
		return cli.Usagef("access-log: --since %v: want a positive duration", o.since)
	}
	if o.keyRecord != "" && !o.verify {
		return cli.Usagef("access-log: --key-record is for --verify")
	}
	if o.rotateKey && (o.verify || o.file != "" || o.caPath != "" || o.key != "" || o.since != 0 || o.service != "" || o.backend != "") {
		return cli.Usagef("access-log: --rotate-key replaces the key of the config's log: only --config applies")
	}
	if o.verify && (o.since != 0 || o.service != "" || o.backend != "") {
		return cli.Usagef("access-log: --verify checks the whole log: --since, --service and --backend do not apply")
	}
	if o.key != "" {
		if !o.verify {
			return cli.Usagef("access-log: --key is for --verify")
		}
		if _, err := accesslog.ParseFingerprint(o.key); err != nil {
			return cli.Usagef("access-log: --key: %v", err)
		}
	}
	cfg := agent.Config{}
	if o.configPath == "" && o.file == "" {
		o.configPath = installer.DefaultLayout().ConfigPath
	}
	if o.configPath != "" {
		c, err := agent.LoadConfig(o.configPath)
		if err != nil {
			if o.file == "" && o.configPath == installer.DefaultLayout().ConfigPath {
				return fmt.Errorf("%w (give --config FILE, or --file PATH for an access log anywhere)", err)
			}
			return err
		}
		cfg = c
	}
	if o.file != "" {
		cfg.AccessLog.Path = o.file
	}
	if o.rotateKey {
		return rotateLogKey(cfg, stdout, stderr)
	}
	if o.verify {
		return verifyAccessLog(cfg, o.caPath, o.key, o.keyRecord, o.file == "", f, stdout)
	}
	return printAccessLog(cfg.AccessLogPath(), filter{since: o.since, service: o.service, backend: o.backend, now: time.Now()}, f, stdout, stderr)
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
	if e.Type != accesslog.TypeStream && e.Type != accesslog.TypeOpen && e.Type != accesslog.TypeRefusals {
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
// oldest first: each line as written (json), each line an item of a list
// (yaml), or the streams as a table.
func printAccessLog(path string, f filter, format cli.Format, stdout, stderr io.Writer) error {
	files, err := accesslog.Files(path)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("no access log at %s", path)
	}
	asTable := format == cli.Table
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	if asTable {
		fmt.Fprintln(tw, "TIME\tREQUEST\tBACKEND\tSERVICE\tCODE\tEND\tTO SERVICE\tFROM SERVICE\tDURATION")
	}
	rows, warnings := 0, 0
	err = accesslog.Read(path, func(file string, n int, e accesslog.Entry, raw []byte, perr error) error {
		if perr != nil {
			if warnings++; warnings <= maxWarnings {
				fmt.Fprintf(stderr, "%s:%d: skipped: %s (tether-agent access-log --verify checks the log)\n", esc(file), n, esc(perr.Error()))
			}
			return nil
		}
		if !f.match(&e) {
			return nil
		}
		switch format {
		case cli.JSON:
			_, err := fmt.Fprintf(stdout, "%s\n", raw)
			return err
		case cli.YAML:
			return cli.YAMLItem(stdout, json.RawMessage(raw))
		}
		ts := e.Time.UTC().Format("2006-01-02T15:04:05.000Z")
		switch e.Type {
		case accesslog.TypeStream:
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", ts, escNone(e.Request), escNone(e.Backend), escNone(e.Service),
				escNone(e.Code), escNone(e.End), e.BytesToService, e.BytesFromService, e.Duration().Round(time.Millisecond))
		case accesslog.TypeOpen:
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ts, escNone(e.Request), escNone(e.Backend), escNone(e.Service),
				"-", "(opened)", "-", "-", "-")
		case accesslog.TypeStart:
			note := ""
			if e.Note != "" {
				note = ": " + esc(e.Note)
			}
			fmt.Fprintf(tw, "%s\t(agent %s started, version %s%s)\n", ts, esc(e.Agent), esc(e.Version), note)
		case accesslog.TypeLost:
			fmt.Fprintf(tw, "%s\t(%d records lost: %s)\n", ts, e.Lost, esc(e.Note))
		case accesslog.TypeRefusals:
			what := "of other services, backends and codes"
			if e.Note == "" {
				what = fmt.Sprintf("of service %s by %s: %s", escNone(e.Service), escNone(e.Backend), escNone(e.Code))
			}
			fmt.Fprintf(tw, "%s\t(%d refused streams %s, counted since %s; the first was request %s)\n", ts, e.Count, what,
				e.Since.UTC().Format("2006-01-02T15:04:05.000Z"), escNone(e.Request))
		default:
			return nil // checkpoints: see --verify
		}
		if rows++; rows%500 == 0 {
			return tw.Flush()
		}
		return nil
	})
	if ferr := tw.Flush(); err == nil && asTable {
		err = ferr
	}
	if warnings > maxWarnings {
		fmt.Fprintf(stderr, "… and %d more lines skipped\n", warnings-maxWarnings)
	}
	return err
}

// printKeys lists the log keys in force along the log.
func printKeys(w io.Writer, res accesslog.Result) {
	if len(res.Keys) < 2 && (len(res.Keys) == 0 || res.Keys[0].Via != accesslog.ViaRecord) {
		return
	}
	fmt.Fprintln(w, "log keys, oldest first:")
	for _, k := range res.Keys {
		how := ""
		switch k.Via {
		case accesslog.ViaPinned:
			how = "the pinned key"
		case accesslog.ViaFirst:
			how = "the first key the log names (not pinned)"
		case accesslog.ViaLine:
			how = "introduced by a key line signed by the key before it"
		case accesslog.ViaRecord:
			how = fmt.Sprintf("linked to the pinned key by the key record (lines %d to %d, each signed by the key before it); the files that introduced it were rotated away", k.Record, k.RecordTo)
		}
		fmt.Fprintf(w, "  %s  from %s (seq %d, %s): %d checkpoint(s); %s\n", k.Fingerprint, esc(k.From), k.Seq, k.Time.UTC().Format(time.RFC3339), k.Checkpoints, how)
	}
	if res.KeyRecordError != "" {
		fmt.Fprintf(w, "key record: %s\n", esc(res.KeyRecordError))
	}
}

// verifyAccessLog walks the chain and reports.
func verifyAccessLog(cfg agent.Config, caPath, key, keyRecord string, own bool, format cli.Format, stdout io.Writer) error {
	o, err := agent.AccessLogVerifyOptions(cfg, caPath, key)
	if err != nil {
		return err
	}
	if keyRecord != "" {
		o.KeyRecord = keyRecord
	}
	if !own {
		// A copy (--file) may rightly end before the agent's last
		// checkpoint: the mark says nothing of it, nor does the record
		// of stops that could not write it.
		o.Mark, o.StopLosses = "", ""
	}
	res, err := accesslog.Verify(o)
	if err != nil {
		return err
	}
	switch format {
	case cli.JSON:
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	case cli.YAML:
		if err := cli.Print(stdout, format, res, nil); err != nil {
			return err
		}
	default:
		printVerify(stdout, res, o)
	}
	if !res.Intact {
		return fmt.Errorf("%w: %s", errLogBroken, res.Problem)
	}
	return nil
}

func printVerify(w io.Writer, res accesslog.Result, o accesslog.VerifyOptions) {
	fmt.Fprintf(w, "access log %s: %d file(s)", esc(res.Dir), len(res.Files))
	if len(res.Files) > 0 {
		fmt.Fprintf(w, ", %s … %s", esc(res.Files[0]), esc(res.Files[len(res.Files)-1]))
	}
	fmt.Fprintln(w)
	if p := res.Problem; p != nil {
		if p.Tampering() {
			fmt.Fprintf(w, "BROKEN at %s:%d: %s: %s\n", esc(p.File), p.Line, p.Kind, esc(p.Detail))
		} else {
			fmt.Fprintf(w, "INCOMPLETE at %s:%d (not tampering): %s\n", esc(p.File), p.Line, esc(p.Detail))
		}
		fmt.Fprintf(w, "checked before it: %d lines, %d checkpoints (%d verified)\n", res.Lines, res.Checkpoints, res.Verified)
		if res.Pinned != "" {
			fmt.Fprintf(w, "pinned log key: %s\n", res.Pinned)
		}
		printAltered(w, res)
		printLost(w, res, o)
		printUnclosed(w, res)
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
	if res.Checkpoints == 0 {
		fmt.Fprintln(w, "checkpoints: none yet (no line is signed)")
	} else {
		fmt.Fprintf(w, "checkpoints: %d, every signature verified\n", res.Checkpoints)
	}
	switch {
	case res.KeyLines == 0:
	case res.Pinned != "" && len(res.Keys) > 0 && res.Keys[0].Via == accesslog.ViaRecord:
		fmt.Fprintf(w, "log key: the chain holds from the pinned key %s: the oldest file left is signed by %s, which the key record links to it", res.Pinned, res.FirstKey)
	case res.Pinned != "":
		fmt.Fprintf(w, "log key: signed by the pinned key %s", res.Pinned)
	default:
		fmt.Fprintf(w, "log key: signed by %s, the first key the log names; NOT PINNED: compare it with the fingerprint recorded when the agent was enrolled (tether-agent status shows it), or give --key FINGERPRINT", res.FirstKey)
	}
	if res.KeyLines > 0 {
		if res.Key != res.FirstKey {
			fmt.Fprintf(w, ", then by %s, which a line signed by the key before it introduced", res.Key)
		}
		fmt.Fprintln(w)
		printKeys(w, res)
	}
	if res.CAOnly > 0 {
		signer := fmt.Sprintf("certificates of %s issued by the agent's CA roots", escNone(o.Agent))
		if o.Agent == "" {
			signer = "certificates, of any agent, issued by the CA roots given (--config names the agent)"
		}
		if !res.CertificatesChecked {
			signer = "their own certificates (no CA roots to check the certificates: give --ca or --config)"
		}
		if res.KeyLines == 0 {
			fmt.Fprintf(w, "VERIFIED AGAINST THE CA ONLY: the log names no log key (written by an earlier version of the agent); its checkpoints are signed with %s, which whoever runs the CA can make for this agent\n", signer)
		} else {
			fmt.Fprintf(w, "the first %d line(s), written by an earlier version of the agent, are verified against the CA only: their checkpoints are signed with %s (the log key's signatures cover them since the agent made its key)\n", res.CAOnly, signer)
		}
	}
	switch {
	case res.CleanStop:
		fmt.Fprintln(w, "last line: the checkpoint of a clean stop")
	case res.Unsigned > 0:
		fmt.Fprintf(w, "last %d line(s) after the last checkpoint are not signed yet (the agent is running, or did not stop cleanly)\n", res.Unsigned)
	}
	printAltered(w, res)
	printLost(w, res, o)
	printUnclosed(w, res)
}

// printLost lists the lost lines, and the stops that could not write
// their records whose lost line is not written yet.
func printLost(w io.Writer, res accesslog.Result, o accesslog.VerifyOptions) {
	if res.LostLineCount > 0 {
		fmt.Fprintf(w, "LOST: %d record(s) of streams could not be written (%d lost line(s)); the chain is intact without them:\n", res.Lost, res.LostLineCount)
		for _, l := range res.LostLines {
			again := ""
			if l.Again {
				again = " (this stop's line again: counted once)"
			}
			fmt.Fprintf(w, "  %s:%d seq %d at %s: %d lost%s: %s\n", esc(l.File), l.Line, l.Seq, l.Time.UTC().Format(time.RFC3339), l.Lost, again, esc(l.Note))
		}
		if res.LostLineCount > len(res.LostLines) {
			fmt.Fprintf(w, "  … and %d more (-o json lists the first %d)\n", res.LostLineCount-len(res.LostLines), accesslog.MaxUnclosed)
		}
	}
	var pending []accesslog.StopLoss
	for _, s := range res.LostAtStop {
		if !s.InLog {
			pending = append(pending, s)
		}
	}
	if len(pending) == 0 {
		return
	}
	fmt.Fprintf(w, "LOST AT STOP, NOT IN THE LOG YET: %d stop(s) of the agent could not write their records (recorded in %s; the agent's next start writes a lost line for each):\n", len(pending), esc(o.StopLosses))
	for _, s := range pending {
		fmt.Fprintf(w, "  stopped at %s: %d record(s) lost: %s\n", s.Time.UTC().Format(time.RFC3339Nano), s.Lost, esc(s.Error))
	}
}

// printAltered lists the start lines that record that the log was
// altered before them: the chain goes on intact from the altered log,
// and these notes are what remains of it.
func printAltered(w io.Writer, res accesslog.Result) {
	if res.AlteredCount == 0 {
		return
	}
	fmt.Fprintf(w, "ALTERED BEFORE %d START(S) of the agent, as it found at the start (the chain goes on intact from the altered log):\n", res.AlteredCount)
	for _, n := range res.Altered {
		fmt.Fprintf(w, "  %s:%d seq %d at %s: %s\n", esc(n.File), n.Line, n.Seq, n.Time.UTC().Format(time.RFC3339), esc(n.Note))
	}
	if res.AlteredCount > len(res.Altered) {
		fmt.Fprintf(w, "  … and %d more\n", res.AlteredCount-len(res.Altered))
	}
}

// printUnclosed lists the streams opened whose end the log does not hold.
func printUnclosed(w io.Writer, res accesslog.Result) {
	if res.UnclosedCount == 0 {
		return
	}
	fmt.Fprintf(w, "opened and not ended: %d stream(s): still open (while the agent runs), or the agent was killed or crashed before it could record their end\n", res.UnclosedCount)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  OPENED\tREQUEST\tBACKEND\tSERVICE\tSESSION\tLINE\tAGENT STARTED AGAIN SINCE")
	for _, u := range res.Unclosed {
		again := "no"
		if u.Restarted {
			again = "yes: never ended in this log"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s:%d\t%s\n", u.Time.UTC().Format("2006-01-02T15:04:05.000Z"), escNone(u.Request), escNone(u.Backend),
			escNone(u.Service), escNone(u.Session), esc(u.File), u.Line, again)
	}
	tw.Flush()
	if n := res.UnclosedCount - len(res.Unclosed); n > 0 {
		fmt.Fprintf(w, "  … and %d more (-o json lists the first %d)\n", n, accesslog.MaxUnclosed)
	}
}
