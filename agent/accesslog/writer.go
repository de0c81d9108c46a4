package accesslog

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Options.
const (
	DefaultMaxSize            = 10 << 20
	DefaultMaxFiles           = 10
	DefaultCheckpointInterval = time.Minute
	DefaultRetryInterval      = 5 * time.Second
	DefaultCommitDelay        = 10 * time.Millisecond
	DefaultQueueSize          = 4096
	DefaultMinRetention       = 24 * time.Hour
)

// warnLogEvery is how often, at most, the writer repeats that rotation
// deletes records too young.
const warnLogEvery = time.Hour

// maxPending bounds the records the writer holds while the log cannot be
// written; beyond it the queue fills and Add counts what it drops.
const maxPending = 16384

// maxBatch bounds the records committed with one write and one fsync.
const maxBatch = 1024

// errorLogEvery is how often, at most, the writer repeats that the log
// still cannot be written.
const errorLogEvery = time.Minute

// rotateRetry is how long the writer waits before it tries again to
// rotate a file it could not rename.
const rotateRetry = time.Minute

// Options configure a Log. The zero value of every field but Path works.
type Options struct {
	// Path is the file written now; rotated files are kept beside it,
	// named after it (access.log → access-20260102T150405.123456789Z.log).
	// Required.
	Path string
	// MaxSize is the size at which the file is rotated: it is closed with
	// a checkpoint and renamed, and a new one started. A file grows past
	// it by at most one line and the checkpoint. Default 10 MiB.
	MaxSize int64
	// MaxFiles is how many files are kept, the current one included; the
	// oldest rotated files beyond it are deleted. Default 10.
	MaxFiles int
	// CheckpointInterval is how often a checkpoint is written while lines
	// are written. Default 1m.
	CheckpointInterval time.Duration
	// RetryInterval is how often the writer tries again while the log
	// cannot be written. Default 5s.
	RetryInterval time.Duration
	// CommitDelay is how long the writer gathers records after the first
	// of a batch arrives before it writes and fsyncs them, so that a
	// steady stream of short connections costs an fsync per CommitDelay
	// rather than one per record (a record is durable at most CommitDelay
	// later; a stream never waits for it). Default 10ms; negative: none.
	CommitDelay time.Duration
	// QueueSize bounds the records waiting for the writer; Add drops (and
	// counts) records beyond it. Refusals take at most half of it.
	// Default 4096.
	QueueSize int
	// RefusalBurst and RefusalEvery are the budget of lines of refused
	// streams: a burst of RefusalBurst, then one per RefusalEvery; the
	// refusals beyond it are counted and written every SummaryInterval
	// (see refusals.go). Defaults 50, 30s and 1m.
	RefusalBurst    int
	RefusalEvery    time.Duration
	SummaryInterval time.Duration
	// MinRetention: when rotation deletes a file rotated less than this
	// long ago, the log holds less than MinRetention of records, and the
	// writer warns (Logger, Warning). Default 24h.
	MinRetention time.Duration
	// Key is the log key (keys.go): it signs the checkpoints, and a key
	// line naming it follows each start line and heads each new file.
	// Made on the tenant's machine and never sent anywhere. Rotation
	// (rotatekey.go) replaces it.
	Key ed25519.PrivateKey
	// KeySince is when Key was put in force (the key record's time of
	// it); zero: now.
	KeySince time.Time
	// KeyRotation is how often the writer replaces the log key
	// (rotatekey.go); 0: only when RotateKey asks. A key older than it at
	// Open is replaced right after the start line. Rotation needs
	// NextKey, KeyReplaced and KeyRecord.
	KeyRotation time.Duration
	// KeyRecord is a file outside the log's directory where the writer
	// appends each new key, signed by the one before (keyrecord.go), so
	// that Verify links the pinned key to the keys after it once the
	// files that introduced them are deleted. It must end with Key.
	KeyRecord string
	// NextKey makes the next log key and stores it durably where the
	// next start finds it, before the writer puts it in the log.
	NextKey func() (ed25519.PrivateKey, error)
	// KeyReplaced is called once the key line naming next is in the log
	// and the key record: it replaces the stored key old with next and
	// destroys old. Until it returns nil, the stored next key and the old
	// one stay for the next start to finish the rotation.
	KeyReplaced func(old, next ed25519.PrivateKey) error
	// AfterStep, when not nil, is called after each durable step of a
	// key rotation (StepNextKey, StepKeyLine, StepRecord, StepReplaced):
	// the files then are what a crash at that point leaves.
	AfterStep func(step string)
	// Certificate, when Key is nil, returns the key that signs checkpoints
	// and its certificate (the agent's, replaced by renewals), as earlier
	// versions signed them: Verify can then check them against the CA
	// only. The key must be ECDSA. Nil, with Key nil: no checkpoints.
	Certificate func() *tls.Certificate
	// Mark, when not empty, is a file outside the log's directory where
	// the writer records how far the chain reached at each checkpoint
	// (mark.go): a start whose log ends before it says so in its start
	// line. The agent keeps it in its state directory.
	Mark string
	// StopLosses, when not empty, is a file outside the log's directory
	// where a stop that cannot write every record records how many it
	// lost, when and why (lost.go); the next start that can write the
	// log writes a lost line for each such stop, says so in its start
	// line, and then removes the file. The agent keeps it in its state
	// directory. Empty: such records are lost with only an error logged.
	StopLosses string
	// Agent and Version are written in the start line: who writes the log.
	Agent   string
	Version string
	// Logger receives the writer's errors; nil discards them.
	Logger *slog.Logger
	// Changed is called, from the writer's goroutine, when Err turns
	// non-nil or nil again. It must not block.
	Changed func()
	// Now is the clock; nil uses time.Now.
	Now func() time.Time
}

func (o *Options) setDefaults() {
	if o.MaxSize <= 0 {
		o.MaxSize = DefaultMaxSize
	}
	if o.MaxFiles <= 0 {
		o.MaxFiles = DefaultMaxFiles
	}
	o.MaxFiles = max(o.MaxFiles, 2)
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = DefaultCheckpointInterval
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = DefaultRetryInterval
	}
	if o.QueueSize <= 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.CommitDelay == 0 {
		o.CommitDelay = DefaultCommitDelay
	}
	if o.RefusalBurst <= 0 {
		o.RefusalBurst = DefaultRefusalBurst
	}
	if o.RefusalEvery <= 0 {
		o.RefusalEvery = DefaultRefusalEvery
	}
	if o.SummaryInterval <= 0 {
		o.SummaryInterval = DefaultSummaryInterval
	}
	if o.MinRetention <= 0 {
		o.MinRetention = DefaultMinRetention
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Changed == nil {
		o.Changed = func() {}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// ErrUnwritable wraps every error Err returns.
var ErrUnwritable = errors.New("access log cannot be written")

// Log writes an access log. Create it with New, call Open once, then run
// Run on a goroutine of its own; Add queues records from anywhere.
type Log struct {
	o     Options
	log   *slog.Logger
	queue chan Record
	lost  atomic.Uint64 // records Add dropped and the writer has not noted yet

	errMu sync.Mutex // guards err
	err   error      // why the log cannot be written now; nil when it can

	refMu    sync.Mutex // guards tokens, refilled, acc
	tokens   float64    // refusal lines the budget allows now
	refilled time.Time
	acc      refusalSet // refusals beyond the budget, not yet taken by the writer

	keyState keyState // the key in force, for KeyInForce

	warnMu   sync.Mutex // guards warning, warnedAt
	warning  string     // rotation deletes records too young; "" when not
	warnedAt time.Time

	// The writer's state: touched by Open, then only by Run.
	f           *os.File
	unlock      func()
	size        int64  // of f, committed
	head        string // hash of the last committed line
	seq         uint64 // seq of the last committed line
	since       int    // committed lines since the last checkpoint
	pending     []Record
	start       *startLine // the start line, until written
	lostNoted   uint64     // lost records taken from lost, not yet written
	wantCkpt    string     // a checkpoint to write after the pending lines (Why…)
	keyDue      bool       // a key line is to follow the start line, or head a new file
	rot         rotation   // the key rotation (rotatekey.go)
	sums        refusalSet // refusals counted, to write
	lastWarnLog time.Time
	failing     error
	failedAt    time.Time
	lastErrLog  time.Time
	rotateAfter time.Time // no rotation before this (after a failed one)
	buf         bytes.Buffer
	line        bytes.Buffer  // one line being encoded
	enc         *json.Encoder // into line
	certWarned  bool          // the warning about a certificate too long for a checkpoint was logged
	markWarned  bool          // the warning about a mark that cannot be written was logged
	// Stops of earlier runs that lost records (StopLosses), read by Open:
	// their lost lines go with the start line; the file is removed once
	// they are committed (stopsWritten). stopsBad: the file does not
	// parse; the start line says so, and it is removed once that is
	// committed.
	stops        []stopLoss
	stopsBad     bool
	stopsWritten bool
}

// New returns a log writing to o.Path; nothing is opened yet.
func New(o Options) *Log {
	o.setDefaults()
	l := &Log{o: o, log: o.Logger.With("access_log", o.Path), queue: make(chan Record, o.QueueSize), head: Genesis, tokens: float64(o.RefusalBurst)}
	if l.o.KeySince.IsZero() {
		l.o.KeySince = o.Now()
	}
	l.rot.req = make(chan chan error)
	l.rot.able = l.canRotate()
	l.keyState.pub, l.keyState.since = publicOf(o.Key), l.o.KeySince
	l.enc = json.NewEncoder(&l.line)
	l.enc.SetEscapeHTML(false) // '<' is one byte, not six: lines stay short
	return l
}

// Path is the file the log writes now.
func (l *Log) Path() string { return l.o.Path }

// Add queues r for the writer. It never blocks: when the queue is full the
// record is dropped and counted, and Err says so until the writer has
// written a line recording the loss. A refusal (End EndRefused) beyond the
// budget of refusal lines, or while the queue is half full, is counted
// for the next `refusals` line instead.
func (l *Log) Add(r Record) {
	if r.End == EndRefused && !l.admitRefusal(&r) {
		return
	}
	select {
	case l.queue <- r:
	default:
		if r.End == EndRefused {
			l.countRefusal(&r)
			return
		}
		l.lost.Add(1)
	}
}

// Warning says, for a day after it last happened, that rotation deleted
// records younger than MinRetention; "" otherwise.
func (l *Log) Warning() string {
	l.warnMu.Lock()
	defer l.warnMu.Unlock()
	if l.warning != "" && l.o.Now().Sub(l.warnedAt) > l.o.MinRetention {
		l.warning = ""
	}
	return l.warning
}

// Err reports why the log cannot be written now (wrapping ErrUnwritable),
// or nil. Records dropped because the writer fell behind count as a
// failure until the writer has recorded their loss in the log.
func (l *Log) Err() error {
	l.errMu.Lock()
	err := l.err
	l.errMu.Unlock()
	if err != nil {
		return err
	}
	if n := l.lost.Load(); n > 0 {
		return fmt.Errorf("%w: %d records dropped: the writer fell behind", ErrUnwritable, n)
	}
	return nil
}

// Open opens (creating it when needed) the log file, takes its lock,
// finds where the chain stands and, when the agent stopped in the middle
// of a line, cuts that incomplete line off (the start line says how many
// bytes were cut). It queues a start line. A failure is logged and kept
// for Err; Run tries again. Call Open once, before Run, on the goroutine
// that then starts Run.
func (l *Log) Open() {
	l.start = &startLine{Type: TypeStart, Agent: l.o.Agent, Version: l.o.Version}
	l.keyDue = l.o.Key != nil
	if l.o.StopLosses != "" {
		stops, bad, err := readStopLosses(l.o.StopLosses)
		switch {
		case err != nil && bad:
			l.stopsBad = true
			l.note(fmt.Sprintf("cannot read the record of the agent's stops that could not write the log, removed once this line is written: %v", err))
		case err != nil:
			// Kept: it may well be readable at the next start.
			l.note(fmt.Sprintf("cannot read the record of the agent's stops that could not write the log: %v", err))
		default:
			l.stops = stops
		}
	}
	if err := l.open(); err != nil {
		l.fail(err)
	}
}

func (l *Log) open() error {
	dir := filepath.Dir(l.o.Path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	if l.unlock == nil {
		unlock, err := lockFile(l.o.Path + ".lock")
		if err != nil {
			return err
		}
		l.unlock = unlock
	}
	f, err := os.OpenFile(l.o.Path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	_ = f.Chmod(0o600) // a file created by an older writer or by hand
	t, err := readTail(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("read the end of the file: %w", err)
	}
	switch {
	case t.tooLong:
		// Not something this writer leaves: keep the file as it is for
		// Verify to report, and start a new one.
		f.Close()
		aside := l.nextRotatedName()
		if err := os.Rename(l.o.Path, aside); err != nil {
			return fmt.Errorf("move aside a file whose last line is longer than %d bytes: %w", MaxLine, err)
		}
		l.note(fmt.Sprintf("%s ended with a line longer than %d bytes: moved aside as %s; the chain starts again", filepath.Base(l.o.Path), MaxLine, filepath.Base(aside)))
		if f, err = os.OpenFile(l.o.Path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600); err != nil {
			return fmt.Errorf("open: %w", err)
		}
		t = tail{head: Genesis}
	case t.partial > 0:
		// The agent stopped (a crash, a power cut) in the middle of a
		// write: the line was never complete, so it was never part of
		// the chain. Cut it off, and say so in the start line.
		if err := f.Truncate(t.size - t.partial); err != nil {
			f.Close()
			return fmt.Errorf("cut an incomplete last line: %w", err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("cut an incomplete last line: %w", err)
		}
		l.start.Repaired = t.partial
		l.note(fmt.Sprintf("cut %d bytes of an incomplete last line: the agent stopped while writing it", t.partial))
		t.size -= t.partial
	}
	// The mark (mark.go) tells more than the file: lines removed back to
	// a checkpoint, or added after a clean stop.
	markNote := ""
	if l.start != nil && l.o.Mark != "" {
		switch m, ok, err := readMark(l.o.Mark); {
		case err != nil:
			l.note(fmt.Sprintf("cannot read the mark of the last checkpoint: %v", err))
		case ok && m.seq > t.seq:
			markNote = removedFromEnd(t.seq, m, l.o.Mark)
		case ok && m.stop && t.seq > m.seq && !t.stopped:
			markNote = addedAfterStop(t.seq, m, l.o.Mark)
		}
	}
	if !t.hasLines && t.size == 0 {
		// An empty file: the chain continues from the newest rotated one.
		if prev, err := l.rotatedTail(); err != nil {
			f.Close()
			return err
		} else if prev.hasLines {
			t.head, t.seq = prev.head, prev.seq
			t.stopped = prev.stopped
		}
	}
	// Where the last stop that could not write the log left it: its
	// lines are the last, or it never wrote any, or the log went on.
	leftByStop, movedOn := false, false
	if n := len(l.stops); n > 0 && l.start != nil {
		if s := l.stops[n-1]; s.at {
			leftByStop = s.seq == t.seq && s.head == t.head
			movedOn = !leftByStop
		}
	}
	switch {
	case t.badLast:
		l.note("the last line of the file does not parse: the chain continues from its hash, with seq starting again at 1")
	case markNote != "":
		l.note(markNote)
	case leftByStop && !t.stopped:
		l.note(fmt.Sprintf("the log does not end with the checkpoint of a clean stop: the agent stopped at %s but could not write its last records and that checkpoint", l.stops[len(l.stops)-1].time.Format(time.RFC3339Nano)))
	case t.hasLines && !t.stopped:
		l.note("the log does not end with the checkpoint of a clean stop: the agent was killed or crashed (or its last lines were removed)")
	}
	if l.start != nil && len(l.stops) > 0 {
		l.note(stopsNote(l.stops, l.o.StopLosses, movedOn))
	}
	l.f, l.size, l.head, l.seq, l.since = f, t.size, t.head, t.seq, 0
	return nil
}

// stopsNote says, in a start line, that earlier stops lost records,
// which the lost lines after it count.
func stopsNote(stops []stopLoss, path string, movedOn bool) string {
	var n uint64
	for _, s := range stops {
		n = addCount(n, s.lost)
	}
	last := stops[len(stops)-1]
	s := fmt.Sprintf("the agent's last stop, at %s, could not write %d records of streams to the log (%s): they are lost, and a lost line counts them", last.time.Format(time.RFC3339Nano), last.lost, last.err)
	if len(stops) > 1 {
		s = fmt.Sprintf("%d stops of the agent could not write %d records of streams to the log (the last, at %s: %s): they are lost, and a lost line for each stop counts them", len(stops), n, last.time.Format(time.RFC3339Nano), last.err)
	}
	s += fmt.Sprintf(" (recorded in %s)", path)
	if movedOn {
		s += "; the log went on after that stop: if it already holds a lost line for it, the agent was stopped after writing that line and before removing the record, and verify counts it once"
	}
	return s
}

// note adds a remark to the start line.
func (l *Log) note(s string) {
	l.log.Warn("access log: " + s)
	if l.start == nil {
		return
	}
	if l.start.Note != "" {
		s = l.start.Note + "; " + s
	}
	l.start.Note = clip(s, maxField)
}

// rotatedTail reads the end of the newest rotated file.
func (l *Log) rotatedTail() (tail, error) {
	files, err := Files(l.o.Path)
	if err != nil {
		return tail{}, err
	}
	for i := len(files) - 1; i >= 0; i-- {
		if files[i] == l.o.Path {
			continue
		}
		f, err := os.Open(files[i])
		if err != nil {
			return tail{}, fmt.Errorf("read the newest rotated file: %w", err)
		}
		t, err := readTail(f)
		f.Close()
		if err != nil {
			return tail{}, fmt.Errorf("read the newest rotated file: %w", err)
		}
		return t, nil
	}
	return tail{head: Genesis}, nil
}

// Run writes queued records until ctx is done, then writes what is still
// queued, ends the file with a checkpoint and closes it. Records are
// committed in batches: one write and one fsync for all the records that
// queued up while the previous batch was written. While the log cannot be
// written, Run keeps up to maxPending records and tries again every
// RetryInterval. Records added after Run returned are not written.
func (l *Log) Run(ctx context.Context) {
	defer l.close()
	ckpt := time.NewTicker(l.o.CheckpointInterval)
	defer ckpt.Stop()
	retry := time.NewTicker(l.o.RetryInterval)
	defer retry.Stop()
	summary := time.NewTicker(l.o.SummaryInterval)
	defer summary.Stop()
	// gather is armed when a batch's first record arrives; the batch is
	// written when it fires (CommitDelay) or when it is full.
	gather := time.NewTimer(time.Hour)
	gather.Stop()
	var gathering bool
	rotTimer := time.NewTimer(time.Hour)
	rotTimer.Stop()
	defer rotTimer.Stop()
	l.scheduleRotation(rotTimer)
	if l.failing == nil {
		l.flush() // the start line, at once: a full disk shows now, not at the first stream
		l.afterFlush(rotTimer)
	}
	for {
		queue := l.queue
		if len(l.pending) >= maxPending {
			queue = nil // let the queue fill: Add counts what it drops
		}
		var retryC <-chan time.Time
		if l.failing != nil {
			retryC = retry.C
		}
		var gatherC <-chan time.Time
		if gathering {
			gatherC = gather.C
		}
		select {
		case <-ctx.Done():
			gather.Stop()
			l.finish()
			l.afterFlush(rotTimer)
			l.rot.fail(errors.New("the access log stopped before the key was replaced"))
			return
		case w := <-l.rot.req:
			l.rot.waiters = append(l.rot.waiters, w)
			l.startRotation()
			if l.failing == nil {
				l.drain()
				l.flush()
			}
			l.afterFlush(rotTimer)
		case <-rotTimer.C:
			l.startRotation()
			if l.failing == nil {
				l.drain()
				l.flush()
			}
			l.afterFlush(rotTimer)
		case r := <-queue:
			l.pending = append(l.pending, r)
			l.drain()
			switch {
			case l.failing != nil:
			case l.o.CommitDelay > 0 && !gathering && len(l.pending) < maxPending:
				gathering = true
				gather.Reset(l.o.CommitDelay)
			case !gathering:
				l.flush()
			}
		case <-gatherC:
			gathering = false
			l.drain()
			if l.failing == nil {
				l.flush()
			}
		case <-ckpt.C:
			if l.failing == nil && (l.since > 0 || len(l.pending) > 0) {
				l.wantCkpt = WhyInterval
				l.flush()
			}
			l.afterFlush(rotTimer) // a rotation's last steps, when they failed
		case <-retryC:
			l.flush()
			l.afterFlush(rotTimer)
		case <-summary.C:
			l.takeRefusals()
			if l.failing == nil && !l.sums.empty() {
				l.drain()
				l.flush()
			}
		}
	}
}

// finish writes everything queued, then the checkpoint of a clean stop.
func (l *Log) finish() {
	for {
		l.drain()
		if len(l.queue) == 0 || l.failing != nil {
			break
		}
		l.flush()
	}
	l.takeRefusals()
	l.wantCkpt = WhyStop
	l.flush()
	n := uint64(len(l.pending)+len(l.queue)) + l.lostNoted + l.lost.Load()
	for _, c := range l.sums.lines() {
		n = addCount(n, c.Count) // refused streams counted, not written
	}
	if n == 0 {
		if l.stopsWritten {
			l.removeStops() // again, if it failed after the commit
		}
		return
	}
	if l.o.StopLosses == "" {
		l.log.Error("access log: records not written at stop are lost", "records", n, "err", l.failing)
		return
	}
	why := "records queued after the stop's last write"
	if l.failing != nil {
		why = l.failing.Error()
	}
	s := stopLoss{time: l.o.Now().UTC(), lost: n, err: why}
	if l.start == nil {
		// This run wrote its start line: the lines lost follow the last
		// one it committed.
		s.at, s.seq, s.head = true, l.seq, l.head
	}
	// Stops read at the start and not written since are kept: their
	// counts are lost with nothing else.
	stops := addStop(l.stops, s)
	if err := writeStopLosses(l.o.StopLosses, stops); err != nil {
		l.log.Error("access log: records not written at stop are lost, and the loss cannot be recorded for the next start either", "records", n, "err", l.failing, "record", l.o.StopLosses, "record_err", err)
		return
	}
	l.stopsWritten = false // the file is this stop's now
	l.log.Error("access log: records not written at stop are lost; the next start records the loss in the log", "records", n, "err", l.failing, "record", l.o.StopLosses)
}

// removeStops removes the record of stops that lost records, once the
// lost lines that count them (or the start line that says it did not
// parse) are committed.
func (l *Log) removeStops() {
	if err := removeStopLosses(l.o.StopLosses); err != nil {
		// Kept for a retry at the stop; should it stay, the next start
		// writes its lost lines again, and verify counts each stop once.
		l.log.Warn("access log: cannot remove the record of stops that lost records, now in the log", "record", l.o.StopLosses, "err", err)
		return
	}
	l.stopsWritten = false
}

// drain moves what is queued to pending, up to maxPending.
func (l *Log) drain() {
	for len(l.pending) < maxPending {
		select {
		case r := <-l.queue:
			l.pending = append(l.pending, r)
		default:
			return
		}
	}
}

// commitState is the chain's position, as of the last line in buf.
type commitState struct {
	size  int64
	head  string
	seq   uint64
	since int
}

// flush writes the start line, a line for lost records, the pending
// records and a wanted checkpoint, rotating the file when it reaches
// MaxSize. Each file's part is committed with one write and one fsync; a
// failure rolls the file back to its last committed size and keeps what
// was not committed for the next try.
func (l *Log) flush() {
	l.lostNoted += l.lost.Swap(0)
	if l.start == nil && l.lostNoted == 0 && len(l.pending) == 0 && l.wantCkpt == "" && l.sums.empty() && !l.rot.due {
		return
	}
	if l.f == nil {
		if err := l.open(); err != nil {
			l.fail(err)
			return
		}
	}
	now := l.o.Now().UTC()
	st := commitState{size: l.size, head: l.head, seq: l.seq, since: l.since}
	l.buf.Reset()
	// What buf holds beyond the last commit.
	var bufStart, bufKey, bufStops, bufLost, bufSums, bufRotate bool
	ckpt := false // a checkpoint was written: the mark follows
	stop := false // the last line written is the checkpoint of a clean stop
	starting := l.start != nil
	bufRecs := 0
	emit := func(v any, set func(seq uint64, prev string)) error {
		set(st.seq+1, st.head)
		l.line.Reset()
		if err := l.enc.Encode(v); err != nil {
			return err // only for values json cannot encode: never for these types, their times checked by lineTime
		}
		b := bytes.TrimSuffix(l.line.Bytes(), []byte("\n"))
		if len(b) > MaxLine {
			// Never with fields clipped as they are (see maxStreamLine):
			// a line its own reader would refuse is not written.
			return fmt.Errorf("a %T of %d bytes, over the reader's bound of %d", v, len(b), MaxLine)
		}
		l.buf.Write(b)
		l.buf.WriteByte('\n')
		st.head, st.seq = hashLine(b), st.seq+1
		st.since++
		return nil
	}
	commit := func() error {
		if l.buf.Len() == 0 {
			return nil
		}
		if _, err := l.f.Write(l.buf.Bytes()); err != nil {
			return l.rollback(fmt.Errorf("write: %w", err))
		}
		if err := l.f.Sync(); err != nil {
			return l.rollback(fmt.Errorf("sync: %w", err))
		}
		st.size += int64(l.buf.Len())
		l.size, l.head, l.seq, l.since = st.size, st.head, st.seq, st.since
		if bufStart {
			l.start = nil
		}
		if bufKey {
			l.keyDue = false
		}
		if bufRotate {
			l.keyLineCommitted(st.seq, now)
		}
		if bufStops || bufStart && l.stopsBad {
			// Only now that the lines saying what the file held are on
			// disk is it removed.
			l.stops, l.stopsBad, l.stopsWritten = nil, false, true
			l.removeStops()
		}
		if bufLost {
			l.lostNoted = 0
		}
		if bufSums {
			l.sums = refusalSet{}
		}
		n := copy(l.pending, l.pending[bufRecs:]) // keep the array: bounded by maxPending
		clear(l.pending[n:])
		l.pending = l.pending[:n]
		bufStart, bufKey, bufStops, bufLost, bufSums, bufRotate, bufRecs = false, false, false, false, false, false, 0
		l.buf.Reset()
		return nil
	}
	// rotateIfFull closes a full file with a checkpoint and starts a new one.
	rotateIfFull := func() error {
		if st.size+int64(l.buf.Len()) < l.o.MaxSize || now.Before(l.rotateAfter) {
			return nil
		}
		if err := l.emitCheckpoint(emit, &st, now, WhyRotate); err != nil {
			return err
		}
		ckpt = true
		if err := commit(); err != nil {
			return err
		}
		l.rotate(now)
		if l.f == nil {
			if err := l.open(); err != nil {
				return err
			}
		}
		st = commitState{size: l.size, head: l.head, seq: l.seq, since: l.since}
		if l.size == 0 && l.o.Key != nil {
			// A new file: it starts with the key in force, so that the
			// log names it even when the files before are deleted.
			l.keyDue = true
			if err := l.emitKey(emit, &st, now); err != nil {
				return err
			}
			bufKey = true
		}
		return nil
	}
	if s := l.start; s != nil {
		s.Time = now
		s.Agent, s.Version, s.Note = field(s.Agent, maxField), field(s.Version, maxField), field(s.Note, maxField)
		if err := emit(s, func(seq uint64, prev string) { s.Seq, s.Prev = seq, prev }); err != nil {
			l.fail(err)
			return
		}
		bufStart = true
	}
	if l.keyDue && !bufKey {
		if err := l.emitKey(emit, &st, now); err != nil {
			l.fail(err)
			return
		}
		bufKey = true
	}
	for _, sl := range l.stops {
		v := &lostLine{Time: now, Type: TypeLost, Lost: sl.lost, Stopped: sl.time, Note: field(stopLossNote(sl), maxField)}
		if err := emit(v, func(seq uint64, prev string) { v.Seq, v.Prev = seq, prev }); err != nil {
			l.fail(err)
			return
		}
		bufStops = true
	}
	if n := l.lostNoted; n > 0 {
		v := &lostLine{Time: now, Type: TypeLost, Lost: n, Note: "records of streams dropped before they could be written: the writer fell behind or the log could not be written"}
		if err := emit(v, func(seq uint64, prev string) { v.Seq, v.Prev = seq, prev }); err != nil {
			l.fail(err)
			return
		}
		bufLost = true
	}
	if !l.sums.empty() {
		for _, v := range l.sums.lines() {
			if err := emit(v, func(seq uint64, prev string) { v.Seq, v.Prev = seq, prev }); err != nil {
				l.fail(err)
				return
			}
		}
		bufSums = true
	}
	for bufRecs < len(l.pending) {
		if err := rotateIfFull(); err != nil {
			l.fail(err)
			return
		}
		v := l.pending[bufRecs].line(now)
		if err := emit(v, v.set); err != nil {
			l.fail(err)
			return
		}
		bufRecs++
		if bufRecs >= maxBatch {
			if err := commit(); err != nil { // cuts pending and counts from 0 again
				l.fail(err)
				return
			}
		}
	}
	if err := rotateIfFull(); err != nil {
		l.fail(err)
		return
	}
	if l.rot.due && l.rot.next != nil {
		// The new key, signed by the old one, after the lines queued
		// before the rotation and committed with them: the lines before
		// are sealed by the old key, and those after are signed by the
		// new one only once this line is on disk.
		if err := l.emitKeyLine(emit, &st, now, l.o.Key, l.rot.next.Public().(ed25519.PublicKey)); err != nil {
			l.fail(err)
			return
		}
		bufRotate = true
		if err := commit(); err != nil {
			l.fail(err)
			return
		}
	}
	// A stop always ends with a checkpoint, so that Verify can tell a
	// clean stop; otherwise one is written only over new lines.
	if why := l.wantCkpt; why != "" && (st.since > 0 || why == WhyStop) {
		if err := l.emitCheckpoint(emit, &st, now, why); err != nil {
			l.fail(err)
			return
		}
		ckpt, stop = true, why == WhyStop
	}
	if err := commit(); err != nil {
		l.fail(err)
		return
	}
	// The start line moves the mark on too: the lines after a clean
	// stop's are this run's from then on.
	if (ckpt || starting && l.start == nil) && l.o.Mark != "" {
		if err := writeMark(l.o.Mark, mark{seq: l.seq, head: l.head, stop: stop}); err == nil {
			l.markWarned = false
		} else if !l.markWarned {
			l.markWarned = true // until it works again: not at every checkpoint
			l.log.Warn("access log: cannot record the mark of the last checkpoint; removing lines from the end of the log may go unnoticed until it can", "mark", l.o.Mark, "err", err)
		}
	}
	l.wantCkpt = ""
	l.recovered()
}

// emitKey adds a key line naming the log key, signed with it.
func (l *Log) emitKey(emit func(any, func(uint64, string)) error, st *commitState, now time.Time) error {
	if len(l.o.Key) != ed25519.PrivateKeySize {
		return errors.New("sign key line: the log key is not an ed25519 private key")
	}
	return l.emitKeyLine(emit, st, now, l.o.Key, l.o.Key.Public().(ed25519.PublicKey))
}

// emitKeyLine adds a key line naming key, signed with signer.
func (l *Log) emitKeyLine(emit func(any, func(uint64, string)) error, st *commitState, now time.Time, signer ed25519.PrivateKey, key ed25519.PublicKey) error {
	if len(signer) != ed25519.PrivateKeySize || len(key) != ed25519.PublicKeySize {
		return errors.New("sign key line: not an ed25519 key")
	}
	pub := encodeKey(key)
	v := &keyLine{Time: now, Type: TypeKey, Key: pub,
		Sig: base64.StdEncoding.EncodeToString(ed25519.Sign(signer, keyMessage(st.head, st.seq, now, pub)))}
	return emit(v, func(seq uint64, prev string) { v.Seq, v.Prev = seq, prev })
}

// emitCheckpoint adds a checkpoint of the chain as st has it, signed
// with the log key, or else with the agent's certificate key. Without
// either (Options.Key and Certificate nil) it adds nothing.
func (l *Log) emitCheckpoint(emit func(any, func(uint64, string)) error, st *commitState, now time.Time, why string) error {
	if l.o.Key != nil {
		if len(l.o.Key) != ed25519.PrivateKeySize {
			return errors.New("sign checkpoint: the log key is not an ed25519 private key")
		}
		pub := encodeKey(l.o.Key.Public().(ed25519.PublicKey))
		lines := st.seq // the lines before the checkpoint
		v := &keyedCheckpointLine{Time: now, Type: TypeCheckpoint, Why: why, Lines: lines, Key: pub,
			Sig: base64.StdEncoding.EncodeToString(ed25519.Sign(l.o.Key, keyedCheckpointMessage(st.head, lines, now, pub)))}
		if err := emit(v, func(seq uint64, prev string) { v.Seq, v.Prev = seq, prev }); err != nil {
			return err
		}
		st.since = 0
		return nil
	}
	if l.o.Certificate == nil {
		return nil
	}
	cert := l.o.Certificate()
	if cert == nil || len(cert.Certificate) == 0 {
		return nil
	}
	signer, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return errors.New("sign checkpoint: the agent's key cannot sign")
	}
	if _, ok := signer.Public().(*ecdsa.PublicKey); !ok {
		return errors.New("sign checkpoint: the agent's key is not ECDSA")
	}
	certB64 := base64.StdEncoding.EncodeToString(cert.Certificate[0])
	if len(certB64) > maxCert {
		// The reader takes no certificate this long: a checkpoint with it
		// would read as invalid. The lines go on, unsigned, until a
		// renewal brings a certificate of an ordinary size.
		if !l.certWarned {
			l.certWarned = true
			l.log.Error("access log: the agent's certificate is too long to put in a checkpoint: no checkpoint is written until a renewal replaces it", "bytes", len(cert.Certificate[0]), "max_base64", maxCert)
		}
		return nil
	}
	l.certWarned = false
	lines := st.seq // the lines before the checkpoint
	digest := sha256.Sum256(checkpointMessage(st.head, lines, now))
	sig, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return fmt.Errorf("sign checkpoint: %w", err)
	}
	v := &checkpointLine{Time: now, Type: TypeCheckpoint, Why: why, Lines: lines,
		Cert: certB64, Sig: base64.StdEncoding.EncodeToString(sig)}
	if err := emit(v, func(seq uint64, prev string) { v.Seq, v.Prev = seq, prev }); err != nil {
		return err
	}
	st.since = 0
	return nil
}

// rollback cuts the file back to its last committed size after a failed
// write, so that no part of an uncommitted line stays in it. When even
// that fails, the file is closed: the next try opens it again and finds
// where the chain stands from what the file holds.
func (l *Log) rollback(err error) error {
	l.buf.Reset()
	if terr := l.f.Truncate(l.size); terr != nil {
		l.f.Close()
		l.f = nil
	}
	return err
}

// rotate renames the (committed, checkpointed) file aside, starts a new
// one and deletes the oldest rotated files beyond MaxFiles. A failed
// rename keeps the file in use, and rotation is tried again later.
func (l *Log) rotate(now time.Time) {
	l.f.Close()
	l.f = nil
	name := l.nextRotatedName()
	if err := os.Rename(l.o.Path, name); err != nil {
		l.log.Error("access log: cannot rotate the file; it grows past max_size until a later try succeeds", "err", err)
		l.rotateAfter = now.Add(rotateRetry)
		return // flush opens the file again
	}
	syncDir(filepath.Dir(l.o.Path))
	f, err := os.OpenFile(l.o.Path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return // flush tries to open it again, and fails loudly if it must
	}
	l.f, l.size = f, 0
	l.prune()
}

// nextRotatedName names the file being rotated now: after the time of
// the newest rotated file, whatever the clock says, so that the names
// keep the order of the chain (two rotations within a clock tick, a clock
// set back).
func (l *Log) nextRotatedName() string {
	at := l.o.Now().UTC()
	if files, err := Files(l.o.Path); err == nil {
		for _, f := range files {
			if t, ok := rotatedTime(l.o.Path, filepath.Base(f)); ok && !at.After(t) {
				at = t.Add(time.Nanosecond)
			}
		}
	}
	return rotatedName(l.o.Path, at)
}

// prune deletes the oldest rotated files beyond MaxFiles.
func (l *Log) prune() {
	files, err := Files(l.o.Path)
	if err != nil {
		l.log.Warn("access log: cannot list rotated files to delete the oldest", "err", err)
		return
	}
	now := l.o.Now()
	for len(files) > l.o.MaxFiles {
		if err := os.Remove(files[0]); err != nil && !errors.Is(err, fs.ErrNotExist) {
			l.log.Warn("access log: cannot delete the oldest rotated file", "file", files[0], "err", err)
			return
		}
		// A file named after now was rotated before the clock went back (or
		// named after such a one, to keep the order): its age says
		// nothing of how fast the log rotates.
		if at, ok := rotatedTime(l.o.Path, filepath.Base(files[0])); ok && !at.After(now) && now.Sub(at) < l.o.MinRetention {
			l.rotatedTooFast(now, now.Sub(at))
		}
		files = files[1:]
	}
}

// rotatedTooFast says that rotation deleted a file whose last line was
// written only kept ago: the log holds less than MinRetention of records.
// Logged at once, then at most every warnLogEvery; Warning says so for
// MinRetention after the last time.
func (l *Log) rotatedTooFast(now time.Time, kept time.Duration) {
	msg := fmt.Sprintf("rotation deleted access-log records written only %v ago: the log keeps less than %v of records (max_size × max_files is too small for the streams it records, or a flood of streams is pushing records out)",
		kept.Round(time.Second), l.o.MinRetention)
	l.warnMu.Lock()
	first := l.warning == ""
	l.warning, l.warnedAt = msg, now
	l.warnMu.Unlock()
	if first || now.Sub(l.lastWarnLog) >= warnLogEvery {
		l.lastWarnLog = now
		l.log.Warn("access log: "+msg, "max_size", l.o.MaxSize, "max_files", l.o.MaxFiles)
	}
	if first {
		l.o.Changed()
	}
}

// fail records that the log cannot be written, and says so: at once the
// first time, then at most every errorLogEvery while it lasts.
func (l *Log) fail(err error) {
	now := l.o.Now()
	first := l.failing == nil
	l.failing = err
	if first {
		l.failedAt = now
	}
	werr := fmt.Errorf("%w: %s: %w", ErrUnwritable, l.o.Path, err)
	l.errMu.Lock()
	l.err = werr
	l.errMu.Unlock()
	if first || now.Sub(l.lastErrLog) >= errorLogEvery {
		l.lastErrLog = now
		msg := "access log cannot be written: records wait in memory and are written when it can be"
		if !first {
			msg = "access log still cannot be written"
		}
		l.log.Error(msg, "err", err, "waiting", len(l.pending), "since", l.failedAt.UTC().Format(time.RFC3339))
	}
	if first {
		l.o.Changed()
	}
}

// recovered clears a failure after a successful commit.
func (l *Log) recovered() {
	if l.failing == nil {
		return
	}
	l.log.Warn("access log can be written again", "was", l.failing, "failed_for", l.o.Now().Sub(l.failedAt).Round(time.Millisecond))
	l.failing = nil
	l.errMu.Lock()
	l.err = nil
	l.errMu.Unlock()
	l.o.Changed()
}

// close syncs and closes the file and releases the lock.
func (l *Log) close() {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	if l.unlock != nil {
		l.unlock()
		l.unlock = nil
	}
}

// syncDir makes a rename in dir durable where the system allows it.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
