package accesslog

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A log written in two agent runs verifies; its lines hold what was
// added, in order, in a chain from the genesis; each run starts with a
// start line and ends with a signed checkpoint; the file is owner-only.
func TestWriteAndVerify(t *testing.T) {
	ca := newTestCA(t)
	cert := leaf(t, ca, testAgent)
	path := writeLog(t, cert, 5, 7)

	res := mustVerify(t, VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent})
	if !res.Intact || res.Problem != nil {
		t.Fatalf("verify: %+v, want intact", res)
	}
	// start, 5 streams, checkpoint; start, 7 streams, checkpoint.
	if res.Lines != 16 || res.FirstSeq != 1 || res.LastSeq != 16 || res.Follows != Genesis {
		t.Errorf("verify: %d lines, seq %d to %d, following %s; want 16 lines, seq 1 to 16, from the genesis", res.Lines, res.FirstSeq, res.LastSeq, res.Follows)
	}
	if res.Checkpoints != 2 || res.Verified != 2 || !res.CertificatesChecked || !res.CleanStop || res.Unsigned != 0 {
		t.Errorf("verify: %d checkpoints, %d verified, certificates checked %v, clean stop %v, %d unsigned; want 2, 2, true, true, 0",
			res.Checkpoints, res.Verified, res.CertificatesChecked, res.CleanStop, res.Unsigned)
	}
	es := entries(t, path)
	var types []string
	var streams []Entry
	for _, e := range es {
		types = append(types, e.Type)
		if e.Type == TypeStream {
			streams = append(streams, e)
		}
	}
	want := "start " + strings.Repeat("stream ", 5) + "checkpoint start " + strings.Repeat("stream ", 7) + "checkpoint"
	if got := strings.Join(types, " "); got != want {
		t.Errorf("line types: got %s, want %s", got, want)
	}
	for i, e := range streams {
		r := record(i)
		if e.Request != r.Request || e.Backend != r.Backend || e.Service != r.Service || e.Code != r.Code || e.End != r.End ||
			e.BytesToService != r.BytesToService || e.BytesFromService != r.BytesFromService || e.Duration() != r.Duration ||
			e.Relay != r.Relay || e.Session != r.Session {
			t.Errorf("stream line %d: got %+v, want %+v", i, e, r)
		}
	}
	if es[0].Agent != testAgent || es[0].Version != "test" {
		t.Errorf("start line: got %+v, want agent %s version test", es[0], testAgent)
	}
	if ck := es[6]; ck.Why != WhyStop || ck.Lines != 6 {
		t.Errorf("first checkpoint: got why %q lines %d, want stop after 6 lines", ck.Why, ck.Lines)
	}
	if runtime.GOOS != "windows" {
		for _, f := range []string{path, filepath.Dir(path)} {
			fi, err := os.Stat(f)
			if err != nil {
				t.Fatal(err)
			}
			if perm := fi.Mode().Perm(); perm&0o077 != 0 {
				t.Errorf("%s has mode %v, want owner-only", f, perm)
			}
		}
	}
}

// The second run's first line follows the first run's last: one chain.
func TestRestartContinuesTheChain(t *testing.T) {
	cert := leaf(t, newTestCA(t), testAgent)
	path := writeLog(t, cert, 2, 2)
	lines := readLines(t, path)
	if len(lines) != 8 {
		t.Fatalf("%d lines, want 8", len(lines))
	}
	e, err := ParseLine(lines[4])
	if err != nil {
		t.Fatal(err)
	}
	if e.Type != TypeStart || e.Prev != hashLine(lines[3]) || e.Seq != 5 || e.Note != "" {
		t.Fatalf("second run's first line: %+v; want a start line with seq 5 following the first run's checkpoint (%s), without a note after a clean stop", e, hashLine(lines[3]))
	}
}

// A start after a run that did not stop cleanly (the log does not end
// with a stop checkpoint) says so.
func TestStartAfterAnUncleanStop(t *testing.T) {
	cert := leaf(t, newTestCA(t), testAgent)
	path := writeLog(t, cert, 2)
	lines := readLines(t, path)
	writeLines(t, path, lines[:len(lines)-1]) // as if killed before the stop checkpoint
	l := startLog(t, Options{Path: path, Certificate: func() *tls.Certificate { return cert }})
	l.stop()
	es := entries(t, path)
	if st := es[3]; st.Type != TypeStart || !strings.Contains(st.Note, "does not end with the checkpoint of a clean stop") {
		t.Fatalf("start line: %+v, want a note about the unclean stop", st)
	}
	if res := mustVerify(t, VerifyOptions{Path: path}); !res.Intact {
		t.Fatalf("verify: %+v", res)
	}
}

// Verify reports the first line altered, removed, inserted or reordered,
// a truncated or garbled file, and forged checkpoints, each at its file
// and line.
func TestVerifyFindsTampering(t *testing.T) {
	ca := newTestCA(t)
	cert := leaf(t, ca, testAgent)
	// Lines: 1 start, 2-6 streams, 7 checkpoint, 8 start, 9-13 streams, 14 checkpoint.
	orig := readLines(t, writeLog(t, cert, 5, 5))
	if len(orig) != 14 {
		t.Fatalf("%d lines, want 14", len(orig))
	}
	clone := func() [][]byte {
		out := make([][]byte, len(orig))
		for i, l := range orig {
			out[i] = bytes.Clone(l)
		}
		return out
	}
	edit := func(line []byte, from, to string) []byte {
		if !bytes.Contains(line, []byte(from)) {
			t.Fatalf("line %s has no %s", line, from)
		}
		return bytes.Replace(line, []byte(from), []byte(to), 1)
	}
	// resign rewrites a checkpoint line's fields and signs it with c.
	resign := func(line []byte, c *tls.Certificate, prev string, mutate func(*checkpointLine)) []byte {
		var ck checkpointLine
		if err := json.Unmarshal(line, &ck); err != nil {
			t.Fatal(err)
		}
		ck.Prev = prev
		if mutate != nil {
			mutate(&ck)
		}
		st := commitState{head: ck.Prev, seq: ck.Lines}
		var out []byte
		l := New(Options{Path: "x", Certificate: func() *tls.Certificate { return c }})
		err := l.emitCheckpoint(func(v any, set func(uint64, string)) error {
			set(ck.Seq, ck.Prev)
			v.(*checkpointLine).Time = ck.Time
			out, _ = json.Marshal(v)
			return nil
		}, &st, ck.Time, ck.Why)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	// rechain recomputes every prev from line i on, as a forger without
	// the key would after editing line i-1.
	rechain := func(ls [][]byte, i int) [][]byte {
		for ; i < len(ls); i++ {
			var m map[string]any
			dec := json.NewDecoder(bytes.NewReader(ls[i]))
			dec.UseNumber()
			if err := dec.Decode(&m); err != nil {
				t.Fatal(err)
			}
			m["prev"] = hashLine(ls[i-1])
			ls[i], _ = json.Marshal(m)
		}
		return ls
	}
	forger := leaf(t, nil, testAgent)
	cases := []struct {
		name   string
		mutate func() [][]byte // nil result: the file is written by the case itself
		raw    func() []byte
		kind   string
		line   int
		noCA   bool // verify without roots
	}{
		{name: "edited line", kind: ProblemAltered, line: 4, mutate: func() [][]byte {
			ls := clone()
			ls[3] = edit(ls[3], `"bytes_to_service":102`, `"bytes_to_service":999`)
			return ls
		}},
		{name: "edited seq", kind: ProblemAltered, line: 4, mutate: func() [][]byte {
			ls := clone()
			ls[3] = edit(ls[3], `"seq":4`, `"seq":40`)
			return ls
		}},
		{name: "removed line", kind: ProblemRemoved, line: 4, mutate: func() [][]byte {
			ls := clone()
			return append(ls[:3], ls[4:]...)
		}},
		{name: "two lines swapped", kind: ProblemReordered, line: 4, mutate: func() [][]byte {
			ls := clone()
			ls[3], ls[4] = ls[4], ls[3]
			return ls
		}},
		{name: "line inserted", kind: ProblemInserted, line: 4, mutate: func() [][]byte {
			ls := clone()
			forged := edit(ls[2], `"request":"req-001"`, `"request":"req-forged"`)
			return append(ls[:3], append([][]byte{forged}, ls[3:]...)...)
		}},
		{name: "line inserted with a correct link", kind: ProblemInserted, line: 4, mutate: func() [][]byte {
			ls := clone()
			forged := edit(ls[3], `"request":"req-002"`, `"request":"req-forged"`) // seq 4, prev = hash of line 3
			return append(ls[:3], append([][]byte{forged}, ls[3:]...)...)
		}},
		{name: "garbled line", kind: ProblemInvalid, line: 6, mutate: func() [][]byte {
			ls := clone()
			ls[5] = []byte(`{"seq":6, this is not JSON`)
			return ls
		}},
		{name: "overlong line", kind: ProblemTooLong, line: 6, mutate: func() [][]byte {
			ls := clone()
			ls[5] = bytes.Repeat([]byte("x"), MaxLine+10)
			return ls
		}},
		{name: "file truncated in the middle of a line", kind: ProblemTruncated, line: 9, raw: func() []byte {
			b := append(bytes.Join(orig[:8], []byte("\n")), '\n')
			return append(b, orig[8][:len(orig[8])/2]...)
		}},
		{name: "checkpoint's line count edited", kind: ProblemCheckpoint, line: 7, mutate: func() [][]byte {
			ls := clone()
			ls[6] = edit(ls[6], `"lines":6`, `"lines":5`)
			return ls
		}},
		{name: "last checkpoint's time edited", kind: ProblemCheckpoint, line: 14, mutate: func() [][]byte {
			ls := clone()
			var ck checkpointLine
			json.Unmarshal(ls[13], &ck)
			later, _ := json.Marshal(ck.Time.Add(time.Hour))
			now, _ := json.Marshal(ck.Time)
			ls[13] = edit(ls[13], string(now), string(later))
			return ls
		}},
		{name: "lines rewritten and re-chained without the key", kind: ProblemCheckpoint, line: 7, mutate: func() [][]byte {
			ls := clone()
			ls[3] = edit(ls[3], `"bytes_to_service":102`, `"bytes_to_service":999`)
			return rechain(ls, 4)
		}},
		{name: "lines rewritten and checkpoints re-signed with another key", kind: ProblemCheckpoint, line: 7, mutate: func() [][]byte {
			ls := clone()
			ls[3] = edit(ls[3], `"bytes_to_service":102`, `"bytes_to_service":999`)
			ls = rechain(ls, 4)
			ls[6] = resign(ls[6], forger, hashLine(ls[5]), nil)
			return rechain(ls, 7)
		}},
		{name: "checkpoint of another agent", kind: ProblemCheckpoint, line: 14, mutate: func() [][]byte {
			ls := clone()
			ls[13] = resign(ls[13], leaf(t, ca, "spiffe://tether.internal/tenant/acme/agent/other"), hashLine(ls[12]), nil)
			return ls
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "access.log")
			if tc.raw != nil {
				if err := os.WriteFile(path, tc.raw(), 0o600); err != nil {
					t.Fatal(err)
				}
			} else {
				writeLines(t, path, tc.mutate())
			}
			o := VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent}
			res := mustVerify(t, o)
			if res.Intact || res.Problem == nil {
				t.Fatalf("verify: intact (%d lines), want %s at line %d", res.Lines, tc.kind, tc.line)
			}
			if p := res.Problem; p.Kind != tc.kind || p.Line != tc.line || p.File != "access.log" {
				t.Fatalf("verify: %v, want %s at access.log:%d", p, tc.kind, tc.line)
			}
			if res.Problem.Tampering() != (tc.kind != ProblemTruncated) {
				t.Errorf("%s counted as tampering: %v", tc.kind, res.Problem.Tampering())
			}
			if res.Lines != tc.line-1 {
				t.Errorf("verify checked %d lines before the problem at line %d", res.Lines, tc.line)
			}
		})
	}
	// A forger's own certificate is caught by the CA roots only: without
	// them the signature verifies against the certificate it came with.
	t.Run("forged signer without roots", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "access.log")
		ls := clone()
		ls[13] = resign(ls[13], forger, hashLine(ls[12]), nil)
		writeLines(t, path, ls)
		if res := mustVerify(t, VerifyOptions{Path: path}); !res.Intact || res.CertificatesChecked {
			t.Fatalf("verify without roots: %+v, want intact, certificates not checked", res)
		}
		if res := mustVerify(t, VerifyOptions{Path: path, Roots: ca.roots}); res.Intact || res.Problem.Kind != ProblemCheckpoint {
			t.Fatalf("verify with roots: %+v, want the checkpoint refused", res)
		}
	})
}

// After a crash in the middle of a write, Verify reports the incomplete
// last line as such (not as tampering); the next run cuts it off, says so
// in its start line, and the chain is intact again.
func TestIncompleteLastLineIsRepaired(t *testing.T) {
	cert := leaf(t, newTestCA(t), testAgent)
	path := writeLog(t, cert, 3)
	partial := []byte(`{"seq":6,"time":"2026-01-02T03:04:05Z","type":"str`)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(partial)
	f.Close()
	res := mustVerify(t, VerifyOptions{Path: path})
	if res.Intact || res.Problem.Kind != ProblemTruncated || res.Problem.Line != 6 || res.Problem.Tampering() {
		t.Fatalf("verify: %+v, want an incomplete last line at 6, not tampering", res.Problem)
	}
	if res.Lines != 5 {
		t.Errorf("verify checked %d lines before it, want 5", res.Lines)
	}
	l := startLog(t, Options{Path: path, Certificate: func() *tls.Certificate { return cert }})
	l.Add(record(9))
	l.stop()
	// 5 lines of the first run; start, stream, checkpoint of the second.
	if res := mustVerify(t, VerifyOptions{Path: path}); !res.Intact || res.Lines != 8 {
		t.Fatalf("verify after the repair: %+v, want intact with 8 lines", res)
	}
	es := entries(t, path)
	if st := es[5]; st.Type != TypeStart || st.Repaired != int64(len(partial)) || !strings.Contains(st.Note, "cut 50 bytes") {
		t.Fatalf("start line after the repair: %+v, want repaired_bytes %d and a note", st, len(partial))
	}
}

// Files rotate at MaxSize, each closed by a checkpoint; the chain runs on
// across them, and the oldest are deleted beyond MaxFiles without
// breaking it: the oldest file kept names the hash it follows.
func TestRotationKeepsTheChain(t *testing.T) {
	ca := newTestCA(t)
	cert := leaf(t, ca, testAgent)
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	l := startLog(t, Options{Path: path, MaxSize: 2 << 10, MaxFiles: 100, Certificate: func() *tls.Certificate { return cert }})
	const n = 60
	for i := range n {
		l.Add(record(i))
	}
	l.stop()
	files, err := Files(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 4 {
		t.Fatalf("%d files after %d records of ~300 bytes at 2 KiB each, want several", len(files), n)
	}
	for _, f := range files[:len(files)-1] {
		ls := readLines(t, f)
		e, err := ParseLine(ls[len(ls)-1])
		if err != nil || e.Type != TypeCheckpoint || e.Why != WhyRotate {
			t.Errorf("%s ends with %+v (%v), want a rotation checkpoint", filepath.Base(f), e, err)
		}
		if fi, _ := os.Stat(f); fi.Size() > 2<<10+2<<10 {
			t.Errorf("%s is %d bytes, want about 2 KiB", filepath.Base(f), fi.Size())
		}
	}
	res := mustVerify(t, VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent})
	if !res.Intact || res.Checkpoints != len(files) || res.Verified != res.Checkpoints {
		t.Fatalf("verify: %+v, want intact with one checkpoint per file", res)
	}
	var got []string
	for _, e := range entries(t, path) {
		if e.Type == TypeStream {
			got = append(got, e.Request)
		}
	}
	if len(got) != n || got[0] != "req-000" || got[n-1] != record(n-1).Request {
		t.Fatalf("streams read back: %d, from %v; want %d in order", len(got), got[:min(3, len(got))], n)
	}

	// A replaced rotated file breaks the chain where it starts.
	t.Run("replaced rotated file", func(t *testing.T) {
		other := writeLog(t, cert, 3)
		b, _ := os.ReadFile(other)
		if err := os.WriteFile(files[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
		res := mustVerify(t, VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent})
		if res.Intact || res.Problem.File != filepath.Base(files[1]) || res.Problem.Line != 1 {
			t.Fatalf("verify: %+v, want a problem at %s:1", res.Problem, filepath.Base(files[1]))
		}
	})

	// Keeping fewer files deletes the oldest; the rest still verifies.
	t.Run("oldest files deleted", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "access.log")
		l := startLog(t, Options{Path: path, MaxSize: 2 << 10, MaxFiles: 3, Certificate: func() *tls.Certificate { return cert }})
		for i := range n {
			l.Add(record(i))
		}
		l.stop()
		files, _ := Files(path)
		if len(files) != 3 {
			t.Fatalf("%d files, want 3", len(files))
		}
		res := mustVerify(t, VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent})
		if !res.Intact || res.Follows == Genesis || res.FirstSeq == 1 {
			t.Fatalf("verify: %+v, want intact, following a deleted file's last line", res)
		}
		first, _ := ParseLine(readLines(t, files[0])[0])
		if first.Prev != res.Follows {
			t.Fatalf("the oldest file's first line names %s, verify says the chain follows %s", first.Prev, res.Follows)
		}
	})
}

// While lines are written, a checkpoint follows within the interval; an
// idle log gets none.
func TestCheckpointEveryInterval(t *testing.T) {
	cert := leaf(t, newTestCA(t), testAgent)
	path := filepath.Join(t.TempDir(), "access.log")
	l := startLog(t, Options{Path: path, CheckpointInterval: 50 * time.Millisecond, Certificate: func() *tls.Certificate { return cert }})
	intervals := func() int { return bytes.Count(mustRead(t, path), []byte(`"why":"interval"`)) }
	lastIsCheckpoint := func() bool {
		ls := readLines(t, path)
		e, err := ParseLine(ls[len(ls)-1])
		return err == nil && e.Type == TypeCheckpoint
	}
	l.Add(record(0))
	waitFor(t, "an interval checkpoint after the first record", func() bool {
		return bytes.Contains(mustRead(t, path), []byte(`"req-000"`)) && lastIsCheckpoint()
	})
	n, before := intervals(), len(readLines(t, path))
	l.Add(record(1))
	waitFor(t, "an interval checkpoint after the second record", func() bool {
		return bytes.Contains(mustRead(t, path), []byte(`"req-001"`)) && lastIsCheckpoint()
	})
	l.stop()
	if got := intervals(); got != n+1 {
		t.Errorf("%d interval checkpoints, want %d: one per interval with new lines", got, n+1)
	}
	if got := len(readLines(t, path)); got != before+3 {
		t.Errorf("%d lines after one more record, its checkpoint and the stop checkpoint; want %d", got, before+3)
	}
	if res := mustVerify(t, VerifyOptions{Path: path}); !res.Intact || !res.CleanStop {
		t.Fatalf("verify: %+v, want intact, ending with a clean stop", res)
	}
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A log that cannot be written says so (Err, Changed), keeps its records
// and writes them once it can; nothing is lost.
func TestUnwritableThenRecovers(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "logs")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil { // a file where the directory should be
		t.Fatal(err)
	}
	path := filepath.Join(blocker, "access.log")
	var changes atomic.Int32
	l := startLog(t, Options{Path: path, RetryInterval: 20 * time.Millisecond, Changed: func() { changes.Add(1) }})
	err := l.Err()
	if !errors.Is(err, ErrUnwritable) {
		t.Fatalf("Err after opening under a file: %v, want ErrUnwritable", err)
	}
	if changes.Load() != 1 {
		t.Errorf("Changed called %d times, want once", changes.Load())
	}
	for i := range 5 {
		l.Add(record(i))
	}
	if l.Err() == nil {
		t.Fatal("Err cleared while the directory is still blocked")
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the log writable again", func() bool { return l.Err() == nil })
	// The writer calls Changed once Err has turned nil, on its own
	// goroutine: it may not have yet when Err is seen nil here.
	waitFor(t, "Changed called on the recovery", func() bool { return changes.Load() >= 2 })
	l.stop()
	if changes.Load() != 2 {
		t.Errorf("Changed called %d times, want twice (failing, recovered)", changes.Load())
	}
	res := mustVerify(t, VerifyOptions{Path: path})
	if !res.Intact || res.Lines != 6 { // no key: no checkpoints
		t.Fatalf("verify: %+v, want intact with the start line and 5 streams", res)
	}
}

// When the writer falls behind, Add drops records without blocking, Err
// says so, and the log records how many were lost.
func TestQueueFullIsRecorded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	l := New(Options{Path: path, QueueSize: 2})
	for i := range 5 { // no writer yet: the queue holds 2
		l.Add(record(i))
	}
	if err := l.Err(); !errors.Is(err, ErrUnwritable) || !strings.Contains(err.Error(), "3 records dropped") {
		t.Fatalf("Err: %v, want 3 records dropped", err)
	}
	r := &running{Log: l}
	l.Open()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	r.stop = func() { cancel(); <-done }
	waitFor(t, "the loss recorded", func() bool { return l.Err() == nil })
	r.stop()
	var lost uint64
	streams := 0
	for _, e := range entries(t, path) {
		switch e.Type {
		case TypeLost:
			lost += e.Lost
		case TypeStream:
			streams++
		}
	}
	if lost != 3 || streams != 2 {
		t.Fatalf("log: %d lost, %d streams; want 3 and 2", lost, streams)
	}
}

// A stop writes every record queued, even more than the writer holds in
// memory at once.
func TestStopWritesEverythingQueued(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	const n = maxPending + 1000
	l := New(Options{Path: path, QueueSize: n})
	for i := range n {
		l.Add(record(i))
	}
	l.Open()
	l.finish() // what Run does when its context is done
	l.close()
	if res := mustVerify(t, VerifyOptions{Path: path}); !res.Intact || res.Lines != n+1 {
		t.Fatalf("verify: %d lines (intact %v), want the start line and %d streams", res.Lines, res.Intact, n)
	}
}

// Two writers never share a log.
func TestOneWriterPerLog(t *testing.T) {
	if runtime.GOOS != "linux" && runtime.GOOS != "darwin" && runtime.GOOS != "windows" {
		t.Skip("no file locks here")
	}
	path := filepath.Join(t.TempDir(), "access.log")
	first := startLog(t, Options{Path: path})
	second := startLog(t, Options{Path: path})
	if err := second.Err(); !errors.Is(err, ErrUnwritable) {
		t.Fatalf("second writer: %v, want the log refused", err)
	}
	if err := first.Err(); err != nil {
		t.Fatalf("first writer: %v", err)
	}
}

// A record reaches the file while the writer runs, without a later record,
// a checkpoint or a stop to push it out: the batch a record opens is
// committed once its CommitDelay has passed. A burst of records added
// within one delay shares a batch.
func TestRecordsCommittedAfterTheDelay(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	l := startLog(t, Options{Path: path, CommitDelay: 20 * time.Millisecond, CheckpointInterval: time.Hour})
	l.Add(record(1))
	waitFor(t, "the lone record on disk", func() bool { return bytes.Contains(mustRead(t, path), []byte("req-001")) })
	for i := 2; i <= 50; i++ {
		l.Add(record(i))
	}
	waitFor(t, "the burst on disk", func() bool { return bytes.Contains(mustRead(t, path), []byte("req-050")) })
	l.stop()
	if res := mustVerify(t, VerifyOptions{Path: path}); !res.Intact || res.Lines != 1+50 {
		t.Fatalf("verify: %d lines (intact %v), want the start line and 50 streams", res.Lines, res.Intact)
	}
}

// Lines removed from the end of the log back to an earlier clean stop
// (here the whole last run of the agent) leave a shorter chain that
// verifies on its own. The mark the writer keeps outside the log tells:
// Verify given it reports the lines as removed, and the next start says
// so in its start line. A copy verified without the mark is not held to
// it, and an untouched log verifies against it.
func TestTailRemovedBackToACleanStop(t *testing.T) {
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	dir := t.TempDir()
	path, markPath := filepath.Join(dir, "log", "access.log"), filepath.Join(dir, "access-log.mark")
	run := func(n int) {
		l := startLog(t, Options{Path: path, Key: key, Mark: markPath, Agent: testAgent, Version: "test"})
		for i := range n {
			l.Add(record(i))
		}
		l.stop()
	}
	run(3)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	run(5)
	o := VerifyOptions{Path: path, Key: Fingerprint(pub), Mark: markPath}
	if res := mustVerify(t, o); !res.Intact {
		t.Fatalf("verify of the untouched log against its mark: %+v", res.Problem)
	}
	if err := os.Truncate(path, fi.Size()); err != nil { // back to the end of the first run
		t.Fatal(err)
	}
	res := mustVerify(t, o)
	if res.Intact || res.Problem == nil || res.Problem.Kind != ProblemRemoved || !strings.Contains(res.Problem.Detail, "were removed") ||
		res.Problem.File != "access.log" || res.Problem.Line != 7 {
		t.Errorf("verify of a log cut back to an earlier clean stop: intact %v, problem %v; want removed at access.log:7", res.Intact, res.Problem)
	}
	if res := mustVerify(t, VerifyOptions{Path: path, Key: Fingerprint(pub)}); !res.Intact {
		t.Errorf("verify without the mark (a copy): %v, want intact", res.Problem)
	}
	run(1)
	es := entries(t, path)
	if st := es[6]; st.Type != TypeStart || !strings.Contains(st.Note, "the lines after seq 6 were removed") {
		t.Errorf("start line after the cut: %+v, want a note that lines were removed", st)
	}
	res = mustVerify(t, o)
	if !res.Intact {
		t.Errorf("verify once the agent has started again and written its checkpoint: %v, want intact (the start line says what happened)", res.Problem)
	}
	// The start line's note is reported, with or without the mark (a
	// copy of the log), as the evidence that remains.
	for _, o := range []VerifyOptions{o, {Path: path, Key: Fingerprint(pub)}} {
		if res := mustVerify(t, o); res.AlteredCount != 1 || len(res.Altered) != 1 || res.Altered[0].Seq != 7 || res.Altered[0].Line != 7 ||
			!strings.Contains(res.Altered[0].Note, "the lines after seq 6 were removed") {
			t.Errorf("verify (mark %q) after the agent started again: altered %d %+v; want the start line at seq 7 and its note", o.Mark, res.AlteredCount, res.Altered)
		}
	}
}

// A line appended after a clean stop, chained by someone without the log
// key, looks like a line the agent wrote and had not signed yet; the next
// start would continue the chain from it, and its checkpoints would cover
// it. The mark records the clean stop: Verify given it reports the line
// as inserted while the agent has not started since, and the next start
// says so in its start line. While the agent runs, its own lines after
// the stop (not signed yet) are not taken for added ones.
func TestLinesAddedAfterACleanStop(t *testing.T) {
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	dir := t.TempDir()
	path, markPath := filepath.Join(dir, "log", "access.log"), filepath.Join(dir, "access-log.mark")
	opts := Options{Path: path, Key: key, Mark: markPath, Agent: testAgent, Version: "test"}
	run := func(n int) {
		l := startLog(t, opts)
		for i := range n {
			l.Add(record(i))
		}
		l.stop()
	}
	run(2)
	lines := readLines(t, path)
	last, err := ParseLine(lines[len(lines)-1])
	if err != nil {
		t.Fatal(err)
	}
	forged, err := json.Marshal(streamLine{Seq: last.Seq + 1, Time: time.Now().UTC(), Type: TypeStream, Request: "r-forged", Backend: "backend:billing",
		Service: "db", Code: "ok", End: EndClosed, Prev: hashLine(lines[len(lines)-1])})
	if err != nil {
		t.Fatal(err)
	}
	writeLines(t, path, append(lines, forged))

	o := VerifyOptions{Path: path, Key: Fingerprint(pub), Mark: markPath}
	res := mustVerify(t, o)
	if res.Intact || res.Problem == nil || res.Problem.Kind != ProblemInserted || res.Problem.File != "access.log" || res.Problem.Line != 6 ||
		!strings.Contains(res.Problem.Detail, "added by someone other than the agent") {
		t.Errorf("verify of a log with a line added after the clean stop: intact %v, problem %v; want inserted at access.log:6", res.Intact, res.Problem)
	}
	if res := mustVerify(t, VerifyOptions{Path: path, Key: Fingerprint(pub)}); !res.Intact || res.Unsigned != 1 {
		t.Errorf("verify without the mark (a copy): %v, %d unsigned; want intact with 1 unsigned line", res.Problem, res.Unsigned)
	}
	run(1)
	es := entries(t, path)
	if st := es[6]; st.Type != TypeStart || !strings.Contains(st.Note, "the lines after seq 5 were added by someone other than the agent") ||
		strings.Contains(st.Note, "killed or crashed") {
		t.Errorf("start line after the added line: %+v, want a note that lines were added (and none of a crash)", st)
	}
	if res := mustVerify(t, o); !res.Intact || res.AlteredCount != 1 || !strings.Contains(res.Altered[0].Note, "were added by someone other than the agent") {
		t.Errorf("verify after the agent started again: intact %v, altered %d %+v; want intact, and the start line's note reported", res.Intact, res.AlteredCount, res.Altered)
	}

	// A run in progress: its lines follow the clean stop, unsigned.
	n := len(readLines(t, path))
	l := startLog(t, opts)
	l.Add(record(9))
	waitFor(t, "the run's first lines", func() bool { return len(readLines(t, path)) >= n+3 })
	waitFor(t, "the mark moved on from the clean stop", func() bool { m, ok, _ := readMark(markPath); return ok && !m.stop })
	if res := mustVerify(t, o); !res.Intact {
		t.Errorf("verify while the agent runs, before its first checkpoint: %v, want intact", res.Problem)
	}
	l.stop()
}

// A mark that cannot be written costs the log nothing but the warning,
// logged once while it lasts rather than at every checkpoint.
func TestMarkUnwritable(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	dir := t.TempDir()
	path := filepath.Join(dir, "log", "access.log")
	var out syncBuffer
	l := startLog(t, Options{Path: path, Key: key, Mark: filepath.Join(dir, "no-such-dir", "access-log.mark"), Logger: slog.New(slog.NewTextHandler(&out, nil))})
	l.Add(record(1))
	waitFor(t, "the first lines", func() bool { b, _ := os.ReadFile(path); return bytes.Count(b, []byte("\n")) >= 3 })
	l.stop()
	if err := l.Err(); err != nil {
		t.Fatalf("the log failed with its mark: %v", err)
	}
	if n := strings.Count(out.String(), "cannot record the mark"); n != 1 {
		t.Errorf("%d warnings about the mark, want 1:\n%s", n, out.String())
	}
	if res := mustVerify(t, VerifyOptions{Path: path}); !res.Intact || !res.CleanStop {
		t.Errorf("verify: %+v", res)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
