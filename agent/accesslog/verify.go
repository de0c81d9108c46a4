package accesslog

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Kinds of problem Verify reports.
const (
	ProblemAltered    = "altered"    // a line's content changed
	ProblemRemoved    = "removed"    // lines are missing
	ProblemInserted   = "inserted"   // a line that the chain does not hold
	ProblemReordered  = "reordered"  // lines out of their order
	ProblemInvalid    = "invalid"    // not an access-log line at all
	ProblemTooLong    = "too_long"   // a line longer than MaxLine
	ProblemTruncated  = "truncated"  // the last line is incomplete: what a crash in the middle of a write leaves
	ProblemCheckpoint = "checkpoint" // a checkpoint that does not verify: forged, or the lines it covers were rewritten
	ProblemKey        = "key"        // the chain of log keys is broken, or a checkpoint is signed by a key outside it
)

// Problem is the first place where the chain does not hold.
type Problem struct {
	Kind   string `json:"kind"`
	File   string `json:"file"` // base name
	Line   int    `json:"line"` // 1-based, in File
	Detail string `json:"detail"`
}

func (p *Problem) String() string {
	return fmt.Sprintf("%s:%d: %s: %s", p.File, p.Line, p.Kind, p.Detail)
}

// Tampering reports whether the problem is not what a crash leaves.
func (p *Problem) Tampering() bool { return p.Kind != ProblemTruncated }

// VerifyOptions say what to verify a log against.
type VerifyOptions struct {
	// Path is the log's current file (rotated files are found beside it).
	Path string
	// Roots are the CA roots that must have issued the certificates of
	// checkpoints (the agent's ca.crt). Nil: the certificates are not
	// checked, only the signatures against them.
	Roots *x509.CertPool
	// Agent is the SPIFFE ID the certificates of checkpoints must carry
	// (the agent's own). Empty: any.
	Agent string
	// Key is the fingerprint (Fingerprint) of the log key the chain of
	// keys must start from: the one the tenant recorded, or the one in the
	// agent's state directory. With it, a log that names no log key at all
	// is not intact: its checkpoints are signed with certificates only,
	// which whoever runs the CA can make. Empty: the chain starts from the
	// first key the log names, whatever it is (Result.FirstKey says which,
	// to compare with a fingerprint recorded elsewhere).
	Key string
	// Mark is the writer's mark file (Options.Mark): a log that ends
	// before the checkpoint it records had its last lines removed. Empty:
	// not checked (a copy of the log, which may rightly be older).
	Mark string
	// StopLosses is the writer's record of stops that could not write
	// their records (Options.StopLosses): the stops it lists whose lost
	// line the log does not hold yet are reported (Result.LostAtStop).
	// Empty: not read (a copy of the log).
	StopLosses string
	// KeyRecord is the writer's key record (Options.KeyRecord): when the
	// oldest file left starts with a later key than the pinned one (the
	// files before were rotated away), the record links the pinned key
	// to it. Empty: not read; the first key the log names must then be
	// the pinned one.
	KeyRecord string

	mark *mark // what Mark held, for verify
}

// Result is what Verify found.
type Result struct {
	Intact bool     `json:"intact"`
	Dir    string   `json:"dir"`
	Files  []string `json:"files"` // base names, oldest first
	// Lines is the number of lines checked (up to the problem, if any).
	Lines    int    `json:"lines"`
	FirstSeq uint64 `json:"first_seq,omitempty"`
	LastSeq  uint64 `json:"last_seq,omitempty"`
	// Follows is the hash the first line follows: Genesis for a chain
	// that starts there, the hash of a deleted file's last line when the
	// oldest files were rotated away.
	Follows string `json:"follows,omitempty"`
	// Checkpoints counts the checkpoints checked and Verified those whose
	// signature verified (and, with roots, whose certificate was the
	// agent's). Every checkpoint checked verified when they are equal.
	Checkpoints         int  `json:"checkpoints"`
	Verified            int  `json:"checkpoints_verified"`
	CertificatesChecked bool `json:"certificates_checked"`
	// Unsigned is the number of lines after the last checkpoint: lines
	// removed from the end of the log are not detectable among them.
	Unsigned int `json:"unsigned"`
	// FirstKey is the fingerprint of the first log key the log names and
	// Key that of the key in force at its end (they differ when a key
	// line introduced a new key); both are empty for a log that names
	// none. Pinned is the fingerprint the first key had to match
	// (VerifyOptions.Key), empty when none was given. KeyLines counts the
	// key lines checked.
	FirstKey string `json:"first_key,omitempty"`
	Key      string `json:"key,omitempty"`
	Pinned   string `json:"pinned_key,omitempty"`
	KeyLines int    `json:"key_lines,omitempty"`
	// Keys lists the log keys in force along the log, oldest first: from
	// where, how each links to the pinned key, what each signed.
	Keys []KeyUse `json:"keys,omitempty"`
	// KeyRecord is the key record read (VerifyOptions.KeyRecord), and
	// KeyRecordError why it could not be read whole.
	KeyRecord      []KeyLink `json:"key_record,omitempty"`
	KeyRecordError string    `json:"key_record_error,omitempty"`
	// CAOnly counts the lines, before the first key line, that a
	// checkpoint signed with the agent's certificate covers: lines of
	// earlier versions of the agent, verified against the CA only.
	// Whoever runs the CA could have rewritten them before the agent
	// named its log key (afterwards, the key's signatures cover them
	// through the chain). Up to the last checkpoint when the log names no
	// key.
	CAOnly int `json:"ca_only_lines,omitempty"`
	// CleanStop is true when the last line is the checkpoint an agent
	// writes when it stops cleanly.
	CleanStop bool     `json:"clean_stop"`
	Problem   *Problem `json:"problem,omitempty"`
	// Unclosed lists the streams whose open line has no stream line after
	// it (the first MaxUnclosed, oldest first), and UnclosedCount counts
	// them: streams still open while the agent runs, or whose end was
	// never recorded (the agent was killed or crashed while they were
	// open: then Restarted, when it started again since). Lines older than
	// the open lines (written before agents recorded them) count nothing.
	Unclosed      []Unclosed `json:"unclosed,omitempty"`
	UnclosedCount int        `json:"unclosed_count,omitempty"`
	// Altered lists the start lines whose note records that the log was
	// altered before that start, as the agent found from the mark in its
	// state directory (lines removed from the end back to a checkpoint,
	// or lines added after a clean stop): the chain goes on intact from
	// the altered log, so this note is the evidence that remains (the
	// first MaxUnclosed, oldest first; AlteredCount counts them all).
	Altered      []Noted `json:"altered,omitempty"`
	AlteredCount int     `json:"altered_count,omitempty"`
	// Lost is the number of records of streams that the lost lines say
	// could not be written (a stop's lost line written twice, as an
	// agent stopped between writing it and removing its record of the
	// stop writes it, counted once). LostLines lists the lost lines (the
	// first MaxUnclosed, oldest first; LostLineCount counts them all).
	// The chain is intact without them: losses are not tampering and do
	// not make the log not intact.
	Lost          uint64 `json:"lost,omitempty"`
	LostLines     []Loss `json:"lost_lines,omitempty"`
	LostLineCount int    `json:"lost_line_count,omitempty"`
	// LostAtStop lists the stops of the agent that could not write their
	// records, as the agent recorded them outside the log
	// (VerifyOptions.StopLosses), oldest first: the agent's next start
	// writes their lost lines. A stop whose lost line the log already
	// holds (InLog) is not counted again.
	LostAtStop []StopLoss `json:"lost_at_stop,omitempty"`

	lastLine    int    // the number of lines checked in the last file
	lastCkptSeq uint64 // the seq of the last checkpoint verified
	afterMark   *Problem
}

// Noted is a start line and its note.
type Noted struct {
	File string    `json:"file"`
	Line int       `json:"line"`
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Note string    `json:"note"`
}

// Loss is a lost line.
type Loss struct {
	File string    `json:"file"`
	Line int       `json:"line"`
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Lost uint64    `json:"lost"`
	// Stopped is the time of the stop at which the records were lost,
	// for the lost lines a start writes from the record of such a stop.
	Stopped time.Time `json:"stopped,omitzero"`
	Note    string    `json:"note"`
	// Again: a lost line of the same stop (Stopped) and count comes
	// before it; Lost counts them once.
	Again bool `json:"again,omitempty"`
}

// StopLoss is a stop of the agent that could not write its records, as
// recorded outside the log.
type StopLoss struct {
	Time time.Time `json:"time"`
	Lost uint64    `json:"lost"`
	// Seq is the last line of the log at that stop (0: that run wrote no
	// line).
	Seq   uint64 `json:"seq,omitempty"`
	Error string `json:"error"`
	// InLog: the log already holds its lost line (the agent was stopped
	// after writing it and before removing the record).
	InLog bool `json:"in_log,omitempty"`
}

// lossKey is what tells a stop's lost line written again.
type lossKey struct {
	stopped time.Time
	lost    uint64
}

// lossTally counts the lost lines.
type lossTally struct {
	seen map[lossKey]bool // at most maxTracked
}

func (lt *lossTally) line(v *vline, res *Result) {
	e := &v.e
	if e.Type != TypeLost {
		return
	}
	again := false
	if !e.Stopped.IsZero() {
		k := lossKey{e.Stopped.UTC(), e.Lost}
		switch {
		case lt.seen[k]:
			again = true
		case len(lt.seen) < maxTracked:
			if lt.seen == nil {
				lt.seen = make(map[lossKey]bool)
			}
			lt.seen[k] = true
		}
	}
	if !again {
		res.Lost = addCount(res.Lost, e.Lost)
	}
	if res.LostLineCount < MaxUnclosed {
		res.LostLines = append(res.LostLines, Loss{File: v.file, Line: v.n, Seq: e.Seq, Time: e.Time, Lost: e.Lost, Stopped: e.Stopped, Note: e.Note, Again: again})
	}
	res.LostLineCount++
}

// stopsAtStop fills res.LostAtStop with stops.
func (lt *lossTally) stopsAtStop(stops []stopLoss, res *Result) {
	for _, s := range stops {
		res.LostAtStop = append(res.LostAtStop, StopLoss{Time: s.time, Lost: s.lost, Seq: s.seq, Error: s.err, InLog: lt.seen[lossKey{s.time, s.lost}]})
	}
}

// altersNoted reports whether a start line's note records that the log
// was altered before that start (removedFromEnd, addedAfterStop).
func altersNoted(note string) bool {
	return strings.Contains(note, notedRemoved) || strings.Contains(note, notedAdded)
}

// MaxUnclosed bounds Result.Unclosed and Result.Altered.
const MaxUnclosed = 100

// maxTracked bounds the open lines Verify holds while it looks for their
// ends; beyond it, open lines are not followed (Result says so with an
// UnclosedCount of at least maxTracked).
const maxTracked = 100000

// Unclosed is a stream with an open line and no line of its end.
type Unclosed struct {
	File      string    `json:"file"`
	Line      int       `json:"line"`
	Time      time.Time `json:"time"`
	Request   string    `json:"request"`
	Backend   string    `json:"backend"`
	Service   string    `json:"service"`
	Relay     string    `json:"relay,omitempty"`
	Session   string    `json:"session,omitempty"`
	Restarted bool      `json:"restarted,omitempty"` // the agent started again after it opened
}

// streamKey is what an open line and its stream's end line share.
type streamKey struct{ relay, session, request, service, backend string }

func keyOf(e *Entry) streamKey {
	return streamKey{e.Relay, e.Session, e.Request, e.Service, e.Backend}
}

// openStreams follows open lines to their ends.
type openStreams struct {
	byKey   map[streamKey][]*openRef
	n       int
	full    bool // open lines were left unfollowed
	starts  int  // start lines seen
	ordinal int
}

type openRef struct {
	u       Unclosed
	starts  int // start lines before it
	ordinal int
}

func (o *openStreams) line(v *vline) {
	e := &v.e
	switch e.Type {
	case TypeStart:
		o.starts++
	case TypeOpen:
		if o.n >= maxTracked {
			o.full = true
			return
		}
		if o.byKey == nil {
			o.byKey = make(map[streamKey][]*openRef)
		}
		k := keyOf(e)
		o.ordinal++
		o.byKey[k] = append(o.byKey[k], &openRef{starts: o.starts, ordinal: o.ordinal, u: Unclosed{File: v.file, Line: v.n, Time: e.Time,
			Request: e.Request, Backend: e.Backend, Service: e.Service, Relay: e.Relay, Session: e.Session}})
		o.n++
	case TypeStream:
		if e.End == EndRefused {
			return // a refused stream never had an open line
		}
		k := keyOf(e)
		if refs := o.byKey[k]; len(refs) > 0 {
			if len(refs) == 1 {
				delete(o.byKey, k)
			} else {
				o.byKey[k] = refs[1:]
			}
			o.n--
		}
	}
}

// result fills res's Unclosed and UnclosedCount.
func (o *openStreams) result(res *Result) {
	var all []*openRef
	for _, refs := range o.byKey {
		all = append(all, refs...)
	}
	slices.SortFunc(all, func(a, b *openRef) int { return a.ordinal - b.ordinal })
	res.UnclosedCount = len(all)
	if o.full {
		res.UnclosedCount = max(res.UnclosedCount, maxTracked)
	}
	for _, r := range all[:min(len(all), MaxUnclosed)] {
		r.u.Restarted = o.starts > r.starts
		res.Unclosed = append(res.Unclosed, r.u)
	}
}

// Verify walks the chain of the log at o.Path across its files and
// checks every checkpoint. It stops at the first problem, which
// Result.Problem describes; an error means the files could not be read.
func Verify(o VerifyOptions) (Result, error) {
	// The mark is read before the log: a writer records it after the
	// lines it names, so the log read next holds them.
	var m mark
	hasMark := false
	if o.Mark != "" {
		var err error
		if m, hasMark, err = readMark(o.Mark); err != nil {
			return Result{}, err
		}
		if hasMark {
			o.mark = &m
		}
	}
	// Read before the log too: a start removes it only after writing
	// its lost lines, so a stop read here is in the log read next, or
	// still to be written.
	var stops []stopLoss
	if o.StopLosses != "" {
		var err error
		if stops, _, err = readStopLosses(o.StopLosses); err != nil {
			return Result{}, err
		}
	}
	var record []KeyLink
	var recordErr error
	if o.KeyRecord != "" {
		record, recordErr = ReadKeyRecord(o.KeyRecord)
	}
	files, err := Files(o.Path)
	if err != nil {
		return Result{}, err
	}
	names := make([]string, len(files))
	for i, f := range files {
		names[i] = filepath.Base(f)
	}
	open := func(i int) (io.ReadCloser, error) { return os.Open(files[i]) }
	res, err := verify(names, open, o, stops, record, recordErr)
	res.Dir = filepath.Dir(o.Path)
	if err == nil && res.Problem == nil && hasMark && m.seq > res.LastSeq {
		p := &Problem{Kind: ProblemRemoved, Detail: removedFromEnd(res.LastSeq, m, o.Mark)}
		if len(names) > 0 {
			p.File = names[len(names)-1]
		}
		p.Line = res.lastLine + 1
		res.Problem, res.Intact, res.CleanStop = p, false, false
	}
	if err == nil && res.Problem == nil && hasMark && m.stop && res.LastSeq > m.seq && res.lastCkptSeq <= m.seq && res.afterMark != nil {
		// Lines after the agent's clean stop that no checkpoint of its
		// own follows; unless the agent started meanwhile and moved the
		// mark on (then they are its own, not checkpointed yet).
		if again, ok, _ := readMark(o.Mark); ok && again == m {
			p := res.afterMark
			p.Kind, p.Detail = ProblemInserted, addedAfterStop(res.LastSeq, m, o.Mark)
			res.Problem, res.Intact, res.CleanStop = p, false, false
		}
	}
	return res, err
}

// vline is one line as the verifier sees it.
type vline struct {
	file     string
	n        int // line number in file
	last     bool
	complete bool
	tooLong  bool
	e        Entry
	perr     error // parse error
	hash     string
}

// lines reads the lines of a sequence of files, one at a time.
type lines struct {
	names []string
	open  func(int) (io.ReadCloser, error)
	i     int
	f     io.ReadCloser
	lr    *lineReader
	n     int
	ahead *vline // a line read by peek
	err   error
}

// next returns the next line, or nil at the end (or after an error, in
// l.err).
func (l *lines) next() *vline {
	if v := l.ahead; v != nil {
		l.ahead = nil
		return v
	}
	for l.err == nil {
		if l.f == nil {
			if l.i >= len(l.names) {
				return nil
			}
			f, err := l.open(l.i)
			if err != nil {
				l.err = fmt.Errorf("open %s: %w", l.names[l.i], err)
				return nil
			}
			l.f, l.lr, l.n = f, newLineReader(f), 0
		}
		b, complete, tooLong, err := l.lr.next()
		if errors.Is(err, io.EOF) {
			l.f.Close()
			l.f = nil
			l.i++
			continue
		}
		if err != nil {
			l.err = fmt.Errorf("read %s: %w", l.names[l.i], err)
			return nil
		}
		l.n++
		v := &vline{file: l.names[l.i], n: l.n, last: l.i == len(l.names)-1, complete: complete, tooLong: tooLong}
		if !tooLong {
			v.hash = hashLine(b)
			v.e, v.perr = ParseLine(b)
		}
		return v
	}
	return nil
}

// peek returns the line after the current one without consuming it.
func (l *lines) peek() *vline {
	if l.ahead == nil {
		l.ahead = l.next()
	}
	return l.ahead
}

func (l *lines) close() {
	if l.f != nil {
		l.f.Close()
	}
}

func verify(names []string, open func(int) (io.ReadCloser, error), o VerifyOptions, stops []stopLoss, record []KeyLink, recordErr error) (Result, error) {
	res := Result{Files: slices.Clone(names), CertificatesChecked: o.Roots != nil}
	ls := &lines{names: names, open: open}
	defer ls.close()
	var p2, p1 *vline // the two lines before the current one
	sinceCkpt := 0
	var opens openStreams
	var losses lossTally
	keys := keyChain{pinned: o.Key, record: record, recordErr: recordErr}
	res.KeyRecord = record
	if recordErr != nil {
		res.KeyRecordError = recordErr.Error()
	}
	for {
		cur := ls.next()
		if cur == nil {
			break
		}
		if p := lineProblem(cur, ls); p != nil {
			res.Problem = p
			break
		}
		if p1 == nil {
			res.Follows, res.FirstSeq = cur.e.Prev, cur.e.Seq
		} else if cur.e.Prev != p1.hash || cur.e.Seq != p1.e.Seq+1 {
			res.Problem = diagnose(p2, p1, cur, ls.peek())
			if res.Problem.File == p1.file && res.Problem.Line == p1.n {
				res.Lines-- // the line before was counted, but it is the one at fault
			}
			break
		}
		if cur.e.Type == TypeCheckpoint {
			res.Checkpoints++
		}
		if kind, detail := keys.line(cur, o); kind != "" {
			res.Problem = &Problem{Kind: kind, File: cur.file, Line: cur.n, Detail: detail}
			break
		}
		if cur.e.Type == TypeCheckpoint {
			res.Verified++
			res.lastCkptSeq = cur.e.Seq
			sinceCkpt = 0
		} else {
			sinceCkpt++
		}
		if keys.cur == nil && cur.e.Type == TypeCheckpoint {
			res.CAOnly = res.Lines + 1 // the lines this certificate-signed checkpoint covers, and itself
		}
		if o.mark != nil && res.afterMark == nil && cur.e.Seq == o.mark.seq+1 {
			res.afterMark = &Problem{File: cur.file, Line: cur.n}
		}
		res.Lines++
		res.LastSeq = cur.e.Seq
		if cur.last {
			res.lastLine = cur.n
		}
		opens.line(cur)
		losses.line(cur, &res)
		if cur.e.Type == TypeStart && altersNoted(cur.e.Note) {
			if res.AlteredCount < MaxUnclosed {
				res.Altered = append(res.Altered, Noted{File: cur.file, Line: cur.n, Seq: cur.e.Seq, Time: cur.e.Time, Note: cur.e.Note})
			}
			res.AlteredCount++
		}
		p2, p1 = p1, cur
	}
	opens.result(&res)
	losses.stopsAtStop(stops, &res)
	if ls.err != nil {
		return res, ls.err
	}
	res.Pinned, res.FirstKey, res.KeyLines, res.Keys = o.Key, keys.first, keys.keys, keys.uses
	if keys.cur != nil {
		res.Key = Fingerprint(keys.cur)
	}
	if res.Problem == nil && o.Key != "" && keys.cur == nil && p1 != nil {
		// Lines of an earlier version only, after the agent made its
		// key: what a log rewritten and signed again by whoever the CA
		// certifies for this agent would look like.
		res.Problem = &Problem{Kind: ProblemKey, File: p1.file, Line: p1.n, Detail: fmt.Sprintf(
			"no line of the log names the log key %s: every checkpoint is signed with a certificate, which whoever runs the CA can make for this agent. A log of an earlier version, or a copy kept from before the agent made its key, looks like this too: verify it without the key (--file PATH --ca FILE) to check it against the CA only", o.Key)}
	}
	res.Intact = res.Problem == nil
	res.Unsigned = sinceCkpt
	res.CleanStop = res.Intact && p1 != nil && p1.e.Type == TypeCheckpoint && p1.e.Why == WhyStop
	return res, nil
}

// lineProblem checks a line on its own: complete, bounded, parseable.
func lineProblem(v *vline, ls *lines) *Problem {
	switch {
	case !v.complete && v.last && !v.tooLong:
		// Only the current file's last line may be incomplete: the
		// writer was stopped in the middle of a write.
		return &Problem{Kind: ProblemTruncated, File: v.file, Line: v.n,
			Detail: "the last line is incomplete (no newline), as a crash or power cut in the middle of a write leaves it; the lines before it are intact and the agent cuts it off when it next starts"}
	case v.tooLong:
		return &Problem{Kind: ProblemTooLong, File: v.file, Line: v.n, Detail: fmt.Sprintf("line longer than %d bytes: not written by the agent", MaxLine)}
	case !v.complete:
		return &Problem{Kind: ProblemInvalid, File: v.file, Line: v.n, Detail: "a rotated file ends with an incomplete line: the agent never leaves one there"}
	case v.perr != nil:
		return &Problem{Kind: ProblemInvalid, File: v.file, Line: v.n, Detail: v.perr.Error()}
	}
	return nil
}

// diagnose explains why cur does not follow p1: which line was altered,
// removed, inserted or reordered. p2 is the line before p1 (nil at the
// start) and next the line after cur (nil at the end, or unreadable).
func diagnose(p2, p1, cur, next *vline) *Problem {
	if next != nil && (next.tooLong || next.perr != nil) {
		next = nil
	}
	at := func(v *vline, kind, format string, args ...any) *Problem {
		return &Problem{Kind: kind, File: v.file, Line: v.n, Detail: fmt.Sprintf(format, args...)}
	}
	want := p1.e.Seq + 1
	switch {
	case cur.e.Prev == p1.hash:
		// Linked to the line before it, but numbered wrong: its seq was edited.
		return at(cur, ProblemAltered, "its seq is %d but it follows %s:%d (seq %d)", cur.e.Seq, p1.file, p1.n, p1.e.Seq)
	case cur.e.Seq > want && next != nil && next.e.Seq < cur.e.Seq && next.e.Seq >= want && next.e.Prev == p1.hash:
		return at(cur, ProblemReordered, "seq %d comes before seq %d: lines were swapped or moved", cur.e.Seq, next.e.Seq)
	case next != nil && next.e.Prev == p1.hash:
		return at(cur, ProblemInserted, "the chain goes from %s:%d to the line after it: this line is not part of it", p1.file, p1.n)
	case p2 != nil && cur.e.Prev == p2.hash:
		return at(p1, ProblemInserted, "the chain goes from %s:%d to %s:%d: this line is not part of it", p2.file, p2.n, cur.file, cur.n)
	case cur.e.Seq > want:
		return at(cur, ProblemRemoved, "%d line(s) missing before it: seq jumps from %d to %d", cur.e.Seq-want, p1.e.Seq, cur.e.Seq)
	case cur.e.Seq < want:
		return at(cur, ProblemReordered, "seq %d comes after seq %d", cur.e.Seq, p1.e.Seq)
	case next != nil && next.e.Prev != cur.hash && next.e.Seq == cur.e.Seq+1:
		// Neither end of this line links: the line itself changed.
		return at(cur, ProblemAltered, "it names hash %.12s… for %s:%d, which hashes to %.12s…, and the next line does not name its hash either", cur.e.Prev, p1.file, p1.n, p1.hash)
	default:
		return at(p1, ProblemAltered, "its hash is %.12s… but the next line, %s:%d, names %.12s…", p1.hash, cur.file, cur.n, cur.e.Prev)
	}
}

// line checks what cur says about the log keys: a key line, a checkpoint
// signed with the key in force, or a checkpoint of an earlier version,
// signed with the agent's certificate, which only comes before the first
// key line. It returns the kind of problem and why, or "".
func (kc *keyChain) line(cur *vline, o VerifyOptions) (kind, detail string) {
	e := &cur.e
	at := fmt.Sprintf("%s:%d", cur.file, cur.n)
	if kc.cur == nil && e.Type != TypeKey && e.Type != TypeStart {
		kc.unkeyed++
	}
	switch {
	case e.Type == TypeKey:
		return kc.keyLine(e, at)
	case e.Type != TypeCheckpoint:
		return "", ""
	case e.Key != "":
		return kc.checkpoint(e)
	case kc.cur != nil:
		return ProblemKey, fmt.Sprintf("signed with a certificate, after the log named its own key %s (at %s): a key outside the chain, which whoever runs the CA can certify for this agent (an earlier version of the agent, run again after this one, signs so too: nothing tells the two apart)", Fingerprint(kc.cur), kc.curAt)
	}
	if err := checkCheckpoint(e, o); err != nil {
		return ProblemCheckpoint, err.Error()
	}
	return "", ""
}

// checkCheckpoint checks a checkpoint's signature over the chain head (its
// prev), the lines before it and its time, and that its certificate is the
// agent's.
func checkCheckpoint(e *Entry, o VerifyOptions) error {
	if e.Lines != e.Seq-1 {
		return fmt.Errorf("it claims %d lines before it, but its seq is %d", e.Lines, e.Seq)
	}
	der, err := base64.StdEncoding.DecodeString(e.Cert)
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return errors.New("the certificate's key is not ECDSA")
	}
	sig, err := base64.StdEncoding.DecodeString(e.Sig)
	if err != nil {
		return fmt.Errorf("signature: %w", err)
	}
	digest := sha256.Sum256(checkpointMessage(e.Prev, e.Lines, e.Time))
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		return errors.New("the signature does not verify: the checkpoint was forged or edited, or the lines it covers were rewritten")
	}
	if o.Agent != "" && (len(cert.URIs) != 1 || cert.URIs[0].String() != o.Agent) {
		return fmt.Errorf("signed with a certificate of %v, not of this agent (%s)", cert.URIs, o.Agent)
	}
	if o.Roots != nil {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: o.Roots, CurrentTime: e.Time, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return fmt.Errorf("signed with a certificate that the agent's CA roots did not issue (or not valid at %s): %w", e.Time.UTC().Format("2006-01-02T15:04:05Z"), err)
		}
	}
	return nil
}

// Read calls fn with every line of the log at path, oldest first, across
// its rotated files, with the line as written (raw, valid until fn
// returns). A line that does not parse comes with a non-nil err (and a
// zero Entry); fn's error stops the reading and is returned.
func Read(path string, fn func(file string, line int, e Entry, raw []byte, err error) error) error {
	files, err := Files(path)
	if err != nil {
		return err
	}
	for _, name := range files {
		if err := readFile(name, fn); err != nil {
			return err
		}
	}
	return nil
}

func readFile(name string, fn func(string, int, Entry, []byte, error) error) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("open %s: %w", name, err)
	}
	defer f.Close()
	base := filepath.Base(name)
	lr := newLineReader(f)
	for n := 1; ; n++ {
		b, complete, tooLong, err := lr.next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		var e Entry
		var perr error
		switch {
		case tooLong:
			perr = fmt.Errorf("line longer than %d bytes", MaxLine)
		case !complete:
			perr = errors.New("incomplete last line")
		default:
			e, perr = ParseLine(b)
		}
		if err := fn(base, n, e, b, perr); err != nil {
			return err
		}
	}
}
