package accesslog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/fulldisk"
)

// lostDir is a log in dir/log with its mark and record of stops that
// lost records in dir, as the agent keeps them in its state directory.
type lostDir struct {
	dir, path, mark, stops string
	key                    ed25519.PrivateKey
	pub                    ed25519.PublicKey
}

func newLostDir(t *testing.T, logDir string) *lostDir {
	t.Helper()
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	dir := t.TempDir()
	if logDir == "" {
		logDir = filepath.Join(dir, "log")
	}
	return &lostDir{dir: dir, path: filepath.Join(logDir, "access.log"), mark: filepath.Join(dir, "access-log.mark"),
		stops: filepath.Join(dir, "access-log.lost"), key: key, pub: pub}
}

func (d *lostDir) options() Options {
	return Options{Path: d.path, Key: d.key, Mark: d.mark, StopLosses: d.stops, Agent: testAgent, Version: "test", RetryInterval: time.Hour}
}

func (d *lostDir) verifyOptions() VerifyOptions {
	return VerifyOptions{Path: d.path, Key: Fingerprint(d.pub), Mark: d.mark, StopLosses: d.stops}
}

// run runs the writer once, adding n records, and returns it stopped.
func (d *lostDir) run(t *testing.T, n int) *running {
	t.Helper()
	l := startLog(t, d.options())
	for i := range n {
		l.Add(record(i))
	}
	l.stop()
	return l
}

// block makes the log's directory a regular file (root cannot write
// under it either) and returns what makes it writable again.
func (d *lostDir) block(t *testing.T) (unblock func()) {
	t.Helper()
	logDir := filepath.Dir(d.path)
	if err := os.Rename(logDir, logDir+".aside"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(logDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		if err := os.Remove(logDir); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(logDir+".aside", logDir); err != nil {
			t.Fatal(err)
		}
	}
}

// startLines returns the start lines and the lost lines of the log.
func startAndLost(t *testing.T, path string) (starts, lost []Entry) {
	t.Helper()
	for _, e := range entries(t, path) {
		switch e.Type {
		case TypeStart:
			starts = append(starts, e)
		case TypeLost:
			lost = append(lost, e)
		}
	}
	return starts, lost
}

func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Lstat(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// A stop that cannot write the log (here it could not be written for the
// whole run) records the records it loses outside the log; verify
// reports them as lost at a stop, not in the log yet; the next start
// that can write the log says so in its start line (not that the agent
// was killed), writes a lost line with their count and the stop's time,
// and only then removes the record; verify counts them.
func TestLossAtStopRecordedAtTheNextStart(t *testing.T) {
	d := newLostDir(t, "")
	d.run(t, 3)
	unblock := d.block(t)
	before := time.Now().UTC()
	l := d.run(t, 5)
	if !errors.Is(l.Err(), ErrUnwritable) {
		t.Fatalf("Err of the run that could not write: %v, want ErrUnwritable", l.Err())
	}
	stops, _, err := readStopLosses(d.stops)
	if err != nil || len(stops) != 1 || stops[0].lost != 5 || stops[0].at || stops[0].time.Before(before) || !strings.Contains(stops[0].err, "not a directory") {
		t.Fatalf("record of the stop: %+v, %v; want 5 lost, no position (no line written), the error", stops, err)
	}
	unblock()

	res := mustVerify(t, d.verifyOptions())
	if !res.Intact || !res.CleanStop || res.Lost != 0 || len(res.LostAtStop) != 1 || res.LostAtStop[0].Lost != 5 || res.LostAtStop[0].InLog ||
		!res.LostAtStop[0].Time.Equal(stops[0].time) {
		t.Fatalf("verify before the next start: intact %v, clean stop %v, lost %d, lost at stop %+v; want intact and 5 lost at the stop, not in the log",
			res.Intact, res.CleanStop, res.Lost, res.LostAtStop)
	}

	d.run(t, 1)
	starts, lost := startAndLost(t, d.path)
	if len(starts) != 2 || len(lost) != 1 {
		t.Fatalf("%d start lines and %d lost lines, want 2 and 1", len(starts), len(lost))
	}
	if n := starts[1].Note; !strings.Contains(n, "could not write 5 records") || strings.Contains(n, "killed or crashed") {
		t.Errorf("start line's note: %q; want the 5 records lost at the stop, and no crash", n)
	}
	if e := lost[0]; e.Lost != 5 || !e.Stopped.Equal(stops[0].time) || e.Seq != starts[1].Seq+2 || !strings.Contains(e.Note, "not a directory") {
		t.Errorf("lost line: %+v; want 5 lost at the stop of %v, after the start and key lines, with the error", e, stops[0].time)
	}
	if exists(t, d.stops) {
		t.Error("the record of the stop is still there after its lost line was written")
	}
	res = mustVerify(t, d.verifyOptions())
	if !res.Intact || !res.CleanStop || res.Lost != 5 || res.LostLineCount != 1 || len(res.LostLines) != 1 || res.LostLines[0].Lost != 5 ||
		len(res.LostAtStop) != 0 {
		t.Errorf("verify after the next start: intact %v, lost %d in %d line(s) %+v, lost at stop %+v; want intact, 5 lost in one line, none pending",
			res.Intact, res.Lost, res.LostLineCount, res.LostLines, res.LostAtStop)
	}
}

// A disk that fills up while the agent runs: the stop cannot write its
// last records nor its checkpoint. The next start says the log ends where
// that stop left it (not that the agent was killed), and every record is
// either in the log or counted in a lost line: none lost unsaid, none
// counted twice.
func TestLossAtStopOnAFullDisk(t *testing.T) {
	tmpfs := fulldisk.Dir(t, "1m")
	if tmpfs == "" {
		return // ran in a child process on a small tmpfs
	}
	d := newLostDir(t, filepath.Join(tmpfs, "log")) // the state directory on another file system
	l := startLog(t, d.options())
	l.Add(record(0))
	waitFor(t, "the first record on disk", func() bool { return bytes.Contains(mustRead(t, d.path), []byte("req-000")) })
	free := fulldisk.Fill(t, tmpfs)
	const added = 1 + 300 // more than a page of slack in the log's last page holds
	for i := 1; i < added; i++ {
		l.Add(record(i))
	}
	l.stop()
	stops, _, err := readStopLosses(d.stops)
	if err != nil || len(stops) != 1 || !stops[0].at || !strings.Contains(stops[0].err, "no space left") {
		t.Fatalf("record of the stop: %+v, %v; want one stop, at the log's last line, out of space", stops, err)
	}
	free()

	d.run(t, 0)
	starts, lost := startAndLost(t, d.path)
	if len(starts) != 2 || len(lost) != 1 {
		t.Fatalf("%d start lines and %d lost lines, want 2 and 1", len(starts), len(lost))
	}
	if n := starts[1].Note; !strings.Contains(n, "could not write its last records and that checkpoint") || strings.Contains(n, "killed or crashed") ||
		!strings.Contains(n, "no space left") {
		t.Errorf("start line's note: %q; want the stop that could not write, why, and no crash", n)
	}
	streams := 0
	for _, e := range entries(t, d.path) {
		if e.Type == TypeStream {
			streams++
		}
	}
	if lost[0].Lost != stops[0].lost || uint64(streams)+lost[0].Lost != added {
		t.Errorf("%d stream lines and %d lost (recorded %d), want %d in all", streams, lost[0].Lost, stops[0].lost, added)
	}
	if res := mustVerify(t, d.verifyOptions()); !res.Intact || res.Lost != lost[0].Lost || len(res.LostAtStop) != 0 {
		t.Errorf("verify: intact %v (%v), lost %d, lost at stop %+v; want intact, %d lost", res.Intact, res.Problem, res.Lost, res.LostAtStop, lost[0].Lost)
	}
	if exists(t, d.stops) {
		t.Error("the record of the stop is still there after its lost line was written")
	}
}

// A start that cannot write the log either keeps the stops it read, and
// its own stop writes them back with its own: the next start that can
// write the log writes a lost line for each.
func TestLossAtStopCarriedByARunThatCannotWriteEither(t *testing.T) {
	d := newLostDir(t, "")
	d.run(t, 1)
	unblock := d.block(t)
	d.run(t, 5)
	d.run(t, 2)
	stops, _, err := readStopLosses(d.stops)
	if err != nil || len(stops) != 2 || stops[0].lost != 5 || stops[1].lost != 2 {
		t.Fatalf("record after two stops that could not write: %+v, %v; want 5 then 2", stops, err)
	}
	d.run(t, 0) // the log still blocked, and nothing to lose: the record stays as it is
	if again, _, err := readStopLosses(d.stops); err != nil || len(again) != 2 {
		t.Fatalf("record after a run with nothing lost: %+v, %v; want the two stops kept", again, err)
	}
	unblock()
	d.run(t, 0)
	starts, lost := startAndLost(t, d.path)
	if len(lost) != 2 || lost[0].Lost != 5 || lost[1].Lost != 2 || !lost[0].Stopped.Equal(stops[0].time) || !lost[1].Stopped.Equal(stops[1].time) {
		t.Fatalf("lost lines: %+v; want 5 and 2, one per stop", lost)
	}
	if n := starts[len(starts)-1].Note; !strings.Contains(n, "2 stops of the agent could not write 7 records") {
		t.Errorf("start line's note: %q; want the two stops and 7 records", n)
	}
	if res := mustVerify(t, d.verifyOptions()); !res.Intact || res.Lost != 7 || res.LostLineCount != 2 {
		t.Errorf("verify: intact %v, lost %d in %d lines; want intact, 7 in 2", res.Intact, res.Lost, res.LostLineCount)
	}
}

// The record is removed only after its lost lines are committed: an
// agent stopped in between (killed, a power cut) finds it again at its
// next start and writes the lines again. The count is never lost, at
// the price of a second line, which the start line's note explains and
// verify counts once.
func TestLossAtStopWrittenTwice(t *testing.T) {
	d := newLostDir(t, "")
	d.run(t, 2)
	lines := readLines(t, d.path)
	last, err := ParseLine(lines[len(lines)-1])
	if err != nil {
		t.Fatal(err)
	}
	stopped := time.Now().UTC()
	rec := []stopLoss{{time: stopped, lost: 4, at: true, seq: last.Seq, head: hashLine(lines[len(lines)-1]), err: "sync: input/output error"}}
	if err := writeStopLosses(d.stops, rec); err != nil {
		t.Fatal(err)
	}
	d.run(t, 0)
	if exists(t, d.stops) {
		t.Fatal("the record is still there after its lost line was written")
	}
	// As if the agent had been killed before it removed the record.
	if err := writeStopLosses(d.stops, rec); err != nil {
		t.Fatal(err)
	}
	res := mustVerify(t, d.verifyOptions())
	if res.Lost != 4 || len(res.LostAtStop) != 1 || !res.LostAtStop[0].InLog {
		t.Errorf("verify with the record left behind: lost %d, lost at stop %+v; want 4, and the stop reported as in the log already", res.Lost, res.LostAtStop)
	}
	d.run(t, 0)
	starts, lost := startAndLost(t, d.path)
	if len(lost) != 2 || lost[0].Lost != 4 || lost[1].Lost != 4 || !lost[1].Stopped.Equal(stopped) {
		t.Fatalf("lost lines: %+v; want the stop's line twice", lost)
	}
	if n := starts[len(starts)-1].Note; !strings.Contains(n, "the log went on after that stop") {
		t.Errorf("start line's note: %q; want it to say that the log went on since the stop", n)
	}
	res = mustVerify(t, d.verifyOptions())
	if !res.Intact || res.Lost != 4 || res.LostLineCount != 2 || res.LostLines[0].Again || !res.LostLines[1].Again {
		t.Errorf("verify: intact %v, lost %d in %d lines %+v; want 4 counted once, the second line marked as the same stop again", res.Intact, res.Lost, res.LostLineCount, res.LostLines)
	}
}

// A record of stops that does not parse (edited, or garbage) costs no
// panic: the start line says so, with why, and it is removed once that
// line is written; verify refuses it, saying why.
func TestStopLossesUnreadable(t *testing.T) {
	d := newLostDir(t, "")
	d.run(t, 1)
	if err := os.WriteFile(d.stops, []byte(stopLossHeader+"\nstop yesterday lost 9 error \"x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(d.verifyOptions()); err == nil || !strings.Contains(err.Error(), "not a record of stops with records lost") {
		t.Errorf("verify with a garbled record: %v, want an error saying so", err)
	}
	d.run(t, 0)
	starts, lost := startAndLost(t, d.path)
	if n := starts[len(starts)-1].Note; len(lost) != 0 || !strings.Contains(n, "cannot read the record of the agent's stops") || !strings.Contains(n, "time \"yesterday\"") {
		t.Errorf("start line's note %q and %d lost lines; want a note naming the garbled time, and no lost line", n, len(lost))
	}
	if exists(t, d.stops) {
		t.Error("the garbled record is still there after the start line said so")
	}
	if res := mustVerify(t, d.verifyOptions()); !res.Intact {
		t.Errorf("verify: %v", res.Problem)
	}
}

func TestParseStopLosses(t *testing.T) {
	h := stopLossHeader + "\n"
	ok := "stop 2026-12-07T16:33:20.123456789Z lost 12 seq 41 head " + Genesis + " error \"write: no space left on device\"\n"
	if stops, err := parseStopLosses([]byte(h + ok + "stop 2026-12-07T17:00:00Z lost 1 error \"\"\n")); err != nil || len(stops) != 2 ||
		stops[0].lost != 12 || stops[0].seq != 41 || !stops[0].at || stops[1].at || stops[1].lost != 1 {
		t.Fatalf("parse of a good record: %+v, %v", stops, err)
	}
	for _, tc := range []struct{ name, in, want string }{
		{"empty", "", "does not end with a newline"},
		{"no stop", h, "no stop line"},
		{"other header", "tether-agent access log stops v0\n" + ok, "line 1"},
		{"no newline", strings.TrimSuffix(h+ok, "\n"), "does not end with a newline"},
		{"blank line", h + ok + "\n", "line 3"},
		{"crlf", h + strings.TrimSuffix(ok, "\n") + "\r\n", "line 2"},
		{"zero lost", h + "stop 2026-12-07T16:33:20Z lost 0 error \"x\"\n", "at least 1"},
		{"leading zero", h + "stop 2026-12-07T16:33:20Z lost 012 error \"x\"\n", "lost"},
		{"negative", h + "stop 2026-12-07T16:33:20Z lost -1 error \"x\"\n", "lost"},
		{"overflow", h + "stop 2026-12-07T16:33:20Z lost 18446744073709551616 error \"x\"\n", "lost"},
		{"not UTC", h + "stop 2026-12-07T17:33:20+01:00 lost 1 error \"x\"\n", "UTC"},
		{"bad head", h + "stop 2026-12-07T16:33:20Z lost 1 seq 4 head abc error \"x\"\n", "head"},
		{"seq without head", h + "stop 2026-12-07T16:33:20Z lost 1 seq 4 error \"x\"\n", "want"},
		{"unquoted error", h + "stop 2026-12-07T16:33:20Z lost 1 error x\n", "quoted"},
		{"more after the error", h + "stop 2026-12-07T16:33:20Z lost 1 error \"x\" y\n", "quoted"},
		{"not quoted as Go quotes", h + "stop 2026-12-07T16:33:20Z lost 1 error \"\\x41\"\n", "quoted"},
		{"long error", h + "stop 2026-12-07T16:33:20Z lost 1 error \"" + strings.Repeat("x", maxStopError+1) + "\"\n", "longer than"},
		{"no error", h + "stop 2026-12-07T16:33:20Z lost 1\n", "no \"error\""},
		{"too many", h + strings.Repeat(ok, maxStops+1), "stop lines"},
		{"too long", h + strings.Repeat("x", maxStopLosses), "longer than"},
		{"not UTF-8", h + "stop \xff\n", "UTF-8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseStopLosses([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// Beyond maxStops the oldest two stops become one: no count is dropped.
func TestAddStopKeepsEveryCount(t *testing.T) {
	var stops []stopLoss
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range maxStops + 3 {
		stops = addStop(stops, stopLoss{time: t0.Add(time.Duration(i) * time.Minute), lost: uint64(i + 1), err: "x"})
	}
	var n uint64
	for _, s := range stops {
		n += s.lost
	}
	if len(stops) != maxStops || n != (maxStops+3)*(maxStops+4)/2 || !stops[len(stops)-1].time.Equal(t0.Add((maxStops+2)*time.Minute)) {
		t.Fatalf("%d stops counting %d, want %d counting %d, the newest last", len(stops), n, maxStops, (maxStops+3)*(maxStops+4)/2)
	}
	if _, err := parseStopLosses(formatStopLosses(stops)); err != nil {
		t.Fatalf("the record of %d stops does not read back: %v", len(stops), err)
	}
}
