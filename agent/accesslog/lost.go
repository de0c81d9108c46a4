package accesslog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// While it runs, the writer records in the log itself the records it had
// to drop (a lost line). At a stop, when the log cannot be written (a full
// disk, an I/O error), that is no longer possible: the records still
// waiting are lost with the stop, and the log ends as a killed agent's
// does. So the stop records the loss in a small file outside the log's
// directory (Options.StopLosses; the agent keeps it in its state
// directory, beside the mark): each stop that lost records, when, how many
// and why. The next start that can write the log says so in its start
// line and writes a lost line for each of them (with "stopped", the time
// of that stop), in the commit of its start line, and removes the file
// only once that commit is on disk.
//
// The file, owner-only, replaced as a whole (a new file synced, then
// renamed over it):
//
//	tether-agent access log stops with records lost v1
//	stop 2026-12-07T16:33:20.123456789Z lost 12 seq 41 head <64 hex digits> error "write: no space left on device"
//
// one stop line each, oldest first: the time of the stop (RFC 3339, UTC,
// as Go's RFC3339Nano writes it), the records lost, then "seq N head
// HASH", the last line the log held at that stop, when that run had
// written its start line (absent otherwise: the log's end is an earlier
// run's), then the error, quoted as Go quotes strings, at most
// maxStopError bytes. Anything else is refused.
//
// The count is never dropped: a start that cannot write the log either
// keeps the stops it read, and its own stop writes them back with its own.
// It may be written twice: an agent killed (or a power cut) between the
// commit of the lost lines and the removal of the file writes them again
// at its next start. Verify counts a stop's lost line once (same stopped
// time, same count), and the start line's note says so when the log went
// on since the last stop recorded (which that stop's seq and head show).

const (
	stopLossHeader = "tether-agent access log stops with records lost v1"
	maxStopError   = 256      // bytes of a stop's error, unquoted
	maxStops       = 32       // stop lines in the file; beyond, the oldest two are added together
	maxStopLosses  = 64 << 10 // bytes of the file
)

// stopLoss is one stop of the agent that could not write its records.
type stopLoss struct {
	time time.Time // of the stop, UTC
	lost uint64    // records lost, at least 1
	// seq and head: the log's last line at the stop, when that run had
	// written its start line (at is true); the lines lost came after it.
	at   bool
	seq  uint64
	head string
	err  string // why the log could not be written
}

// parseStopLosses parses what a file of stops with records lost holds
// (Options.StopLosses). The file may have been edited by anyone with
// access to the state directory: everything is checked.
func parseStopLosses(b []byte) ([]stopLoss, error) {
	if len(b) > maxStopLosses {
		return nil, fmt.Errorf("longer than %d bytes", maxStopLosses)
	}
	if !utf8.Valid(b) {
		return nil, errors.New("not UTF-8")
	}
	rest, ok := bytes.CutSuffix(b, []byte("\n"))
	if !ok {
		return nil, errors.New("does not end with a newline")
	}
	lines := strings.Split(string(rest), "\n")
	if lines[0] != stopLossHeader {
		return nil, fmt.Errorf("line 1: want %q", stopLossHeader)
	}
	lines = lines[1:]
	switch {
	case len(lines) == 0:
		return nil, errors.New("no stop line")
	case len(lines) > maxStops:
		return nil, fmt.Errorf("%d stop lines, want at most %d", len(lines), maxStops)
	}
	out := make([]stopLoss, 0, len(lines))
	for i, s := range lines {
		sl, err := parseStopLine(s)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+2, err)
		}
		out = append(out, sl)
	}
	return out, nil
}

// parseStopLine parses "stop TIME lost N [seq N head HASH] error QUOTED".
func parseStopLine(s string) (stopLoss, error) {
	var sl stopLoss
	i := strings.Index(s, " error ")
	if i < 0 {
		return sl, errors.New(`no "error"`)
	}
	quoted := s[i+len(" error "):]
	f := strings.Split(s[:i], " ")
	if (len(f) != 4 && len(f) != 8) || f[0] != "stop" || f[2] != "lost" || len(f) == 8 && (f[4] != "seq" || f[6] != "head") {
		return sl, errors.New(`want "stop TIME lost N [seq N head HASH] error \"TEXT\""`)
	}
	t, err := time.Parse(time.RFC3339Nano, f[1])
	if err != nil || t.UTC().Format(time.RFC3339Nano) != f[1] {
		return sl, fmt.Errorf("time %.40q: want RFC 3339 in UTC", f[1])
	}
	sl.time = t.UTC()
	if sl.lost, err = parseCount(f[3]); err != nil || sl.lost == 0 {
		return sl, fmt.Errorf("lost %.30q: want a number of records, at least 1", f[3])
	}
	if len(f) == 8 {
		if sl.seq, err = parseCount(f[5]); err != nil {
			return sl, fmt.Errorf("seq %.30q: want a number", f[5])
		}
		if !isHash(f[7]) {
			return sl, errors.New("head: want a hex SHA-256")
		}
		sl.at, sl.head = true, f[7]
	}
	if len(quoted) == 0 || quoted[0] != '"' {
		return sl, errors.New("error: want a quoted string")
	}
	if sl.err, err = strconv.Unquote(quoted); err != nil || strconv.Quote(sl.err) != quoted {
		return sl, errors.New("error: not a string quoted as Go quotes it, or more after it")
	}
	if len(sl.err) > maxStopError || !utf8.ValidString(sl.err) {
		return sl, fmt.Errorf("error: longer than %d bytes, or not UTF-8", maxStopError)
	}
	return sl, nil
}

// parseCount parses a decimal number as the writer writes it: digits
// only, no leading zero.
func parseCount(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || strconv.FormatUint(n, 10) != s {
		return 0, errors.New("not a number")
	}
	return n, nil
}

// formatStopLosses is what the file holds for stops.
func formatStopLosses(stops []stopLoss) []byte {
	var b bytes.Buffer
	b.WriteString(stopLossHeader + "\n")
	for _, s := range stops {
		fmt.Fprintf(&b, "stop %s lost %d", s.time.UTC().Format(time.RFC3339Nano), s.lost)
		if s.at {
			fmt.Fprintf(&b, " seq %d head %s", s.seq, s.head)
		}
		fmt.Fprintf(&b, " error %s\n", strconv.Quote(field(s.err, maxStopError)))
	}
	return b.Bytes()
}

// addStop adds s to stops, keeping at most maxStops: beyond, the oldest
// two become one (their counts added), so that no count is ever dropped.
func addStop(stops []stopLoss, s stopLoss) []stopLoss {
	stops = append(stops, s)
	for len(stops) > maxStops {
		a, b := stops[0], stops[1]
		b.lost = addCount(a.lost, b.lost)
		stops = append([]stopLoss{b}, stops[2:]...)
	}
	return stops
}

// addCount adds two counts, at most math.MaxUint64.
func addCount(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

// readStopLosses reads the stops recorded at path; none when there is no
// file. A file that is not one is an error that says so (bad is true); so
// is a file that cannot be read (bad is false).
func readStopLosses(path string) (stops []stopLoss, bad bool, err error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if !fi.Mode().IsRegular() {
		return nil, true, fmt.Errorf("%s: not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStopLosses+1))
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", path, err)
	}
	stops, err = parseStopLosses(b)
	if err != nil {
		return nil, true, fmt.Errorf("%s: not a record of stops with records lost: %w", path, err)
	}
	return stops, false, nil
}

// writeStopLosses replaces the file at path with stops, durably
// (replaceFile).
func writeStopLosses(path string, stops []stopLoss) error {
	return replaceFile(path, formatStopLosses(stops))
}

// removeStopLosses removes the file at path, durably.
func removeStopLosses(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

// stopLossNote is the note of a lost line that records the stop s.
func stopLossNote(s stopLoss) string {
	where := ""
	if s.at {
		where = fmt.Sprintf(" (after seq %d)", s.seq)
	}
	return fmt.Sprintf("records of streams the agent could not write when it stopped at %s%s: %s", s.time.Format(time.RFC3339Nano), where, s.err)
}
