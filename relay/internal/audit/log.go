// Package audit is the relay's audit trail: the kinds of record
// (kinds.go) and Log, which writes every record to the store and, one JSON
// object per line, to an append-only file on the relay's host.
package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// Record is one entry of the audit trail.
type Record = store.AuditRecord

// Batching of the writer.
const (
	auditBatch = 512
	auditQueue = 8192
	// auditLinger is how long the writer waits for more records before
	// writing a batch that nobody waits for (see Record): under load, many
	// ended streams share one transaction instead of one each.
	auditLinger = 20 * time.Millisecond
	// storeTimeout bounds one batch's write to the store (the store
	// retries a busy database within it).
	storeTimeout = 10 * time.Second
	// auditBacklog bounds the records the writer keeps for the store
	// after a write failed (in the file already, unless the file failed
	// too) and writes again, before what came after them, until the
	// store takes them. Beyond it, records are in the file only, or
	// nowhere (Lost counts them).
	auditBacklog = 4096
	// auditOverflow bounds the records added while the queue is full
	// (they go to the file at once) that are kept to be written to the
	// store in their place. Beyond it, they are in the file only.
	auditOverflow = 4096
	// retryMin and retryMax bound the wait before the writer tries the
	// records it keeps again when nothing new comes to write.
	retryMin = 500 * time.Millisecond
	retryMax = 30 * time.Second
	// replayTail is how much of the end of the audit file the writer
	// reads as it starts, for records the store had not taken (unstored).
	replayTail = 16 << 20
)

// Log writes audit records to the store and, one JSON object per line, to
// an append-only file. Until Start, and after Stop, each record is written
// as it is added; in between one goroutine, which Stop waits for, writes
// them in batches.
//
// A batch the store does not take (it is down, restarting, stalled) is
// written to the file at once, marked store_error, and kept (up to
// auditBacklog records): the writer writes it again, before the records
// that came after it, with the next batch and, when none comes, after a
// backoff, until the store takes it. Every record has a key of its own
// (Record.Key), so one whose transaction committed although its answer was
// lost is not stored twice.
//
// When the file cannot be written either (the disk is full), the records
// the store did not take are in memory only: the writer keeps them (as far
// as auditBacklog) and writes them to the store and to the file again
// until one of them takes them; Unwritten counts them, and Durable says
// the trail is not durable until none is left. Those it drops, and those
// it still keeps at Stop, are lost (Lost, LostUnfiled). A failed or short
// append is cut back off the file, so the next line starts on a line of
// its own.
type Log struct {
	ctx  context.Context // for store writes: not cancelled, so that shutdown loses no record
	st   *store.Store
	log  *slog.Logger
	path string

	fileMu      sync.Mutex // serialises appends to file; guards file, lastFileErr, rot, reopen
	file        *os.File
	lastFileErr error // the last append's failure, nil once one succeeds
	fileErrors  atomic.Int64
	rot         Rotation // SetRotation; zero: never rotated
	reopen      bool     // file was rotated (renamed) and no new one opened yet
	rotations   atomic.Int64

	mu     sync.RWMutex // enqueue holds it shared; Stop exclusively, to close queue
	closed bool         // no writer goroutine: write at once
	queue  chan item
	// Committed, when set before Start, is told when each batch began
	// to be written (for metrics).
	Committed func(start time.Time)
	done      chan struct{}

	keyPrefix string        // this Log's part of every record's key
	keySeq    atomic.Uint64 // the other part

	// orderMu orders the records as they are added: it guards nextSeq,
	// the handing over to queue and overflow.
	orderMu  sync.Mutex
	nextSeq  uint64
	overflow []item // added while queue was full, in order; filed already
	// overflowed wakes the writer when a record was added to overflow.
	overflowed chan struct{}
	// overflowN is len(overflow), and backlogN len(backlog), for Queued.
	overflowN atomic.Int64
	backlogN  atomic.Int64
	// overflowUnfiled counts the records of overflow whose append to
	// the file failed, and backlogUnfiled those of backlog: records in
	// memory only (Unwritten).
	overflowUnfiled atomic.Int64
	backlogUnfiled  atomic.Int64
	// Records never to be stored: in the file only, or nowhere.
	lostFiled, lostUnfiled atomic.Int64

	// The writer goroutine's own.
	backlog   []item        // not yet stored, in order (filed, unless the file failed)
	retry     *time.Timer   // tries backlog again
	retryWait time.Duration // the next wait of retry
	buf       []item
	recBuf    []Record

	everyMu   sync.Mutex    // guards every and stopEvery
	every     []periodic    // registered by Every
	stopEvery chan struct{} // closed by Stop; nil before Start and after Stop
	everyWG   sync.WaitGroup
}

// periodic is a function Every calls at an interval.
type periodic struct {
	interval time.Duration
	f        func()
}

// Open opens (creating, 0600) the audit file at path for appending. The
// log writes each record as it is added (as the short-lived admin
// commands need) until Start.
func Open(ctx context.Context, st *store.Store, path string, log *slog.Logger) (*Log, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	if err := endLine(f); err != nil {
		// Not fatal: the next record is glued onto the cut line.
		log.Error("audit: end a line of the audit file cut short", "path", path, "err", err)
	}
	return &Log{ctx: context.WithoutCancel(ctx), st: st, log: log, path: path, file: f, closed: true,
		queue: make(chan item, auditQueue), done: make(chan struct{}), overflowed: make(chan struct{}, 1),
		keyPrefix: rand.Text()[:16] + "."}, nil
}

// Queued is how many records wait to be written to the store: queued,
// or written to the file and kept for the store after a write failed.
func (a *Log) Queued() int {
	return len(a.queue) + int(a.overflowN.Load()) + int(a.backlogN.Load())
}

// endLine ends the file's last line when a process stopped in the
// middle of writing it, so that the next record is not glued onto it.
func endLine(f *os.File) error {
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return err
	}
	last := make([]byte, 1)
	if _, err := f.ReadAt(last, fi.Size()-1); err != nil {
		return err
	}
	if last[0] != '\n' {
		_, err = f.Write([]byte{'\n'})
	}
	return err
}

// Lost is how many records since Open will never be in the store: kept
// beyond the bounds while the store failed, refused by the store, or
// kept in memory only (the file failed too) when the writer stopped.
// LostUnfiled says how many of them are not in the audit file either.
func (a *Log) Lost() int64 { return a.lostFiled.Load() + a.lostUnfiled.Load() }

// LostUnfiled is how many records of Lost are not in the audit file
// either: the store and the file both failed to take them; LostFiled
// how many are in the file only.
func (a *Log) LostUnfiled() int64 { return a.lostUnfiled.Load() }

// LostFiled is how many records of Lost are in the audit file only.
func (a *Log) LostFiled() int64 { return a.lostFiled.Load() }

// FileErrors is how many appends to the audit file failed since Open.
func (a *Log) FileErrors() int64 { return a.fileErrors.Load() }

// Unwritten is how many records are in memory only: the store did not
// take them and the append to the audit file failed. The writer tries
// both again; they are lost if the relay stops or dies before.
func (a *Log) Unwritten() int {
	return int(a.overflowUnfiled.Load() + a.backlogUnfiled.Load())
}

// ErrNotDurable is what Durable returns while records are in memory only.
var ErrNotDurable = errors.New("the audit trail cannot be written: the store and the audit file both fail")

// Durable returns nil, or an error wrapping ErrNotDurable (with the
// number of records in memory only and the file's last failure) while
// Unwritten is not 0.
func (a *Log) Durable() error {
	n := a.Unwritten()
	if n == 0 {
		return nil
	}
	a.fileMu.Lock()
	ferr := a.lastFileErr
	a.fileMu.Unlock()
	if ferr == nil {
		return fmt.Errorf("%w: %d records in memory only", ErrNotDurable, n)
	}
	return fmt.Errorf("%w: %d records in memory only (%v)", ErrNotDurable, n, ferr)
}

// Start starts the writer goroutine: from now on records are written in
// batches. Stop ends it.
func (a *Log) Start() {
	a.mu.Lock()
	a.closed = false
	a.mu.Unlock()
	go a.run()
	a.everyMu.Lock()
	defer a.everyMu.Unlock()
	a.stopEvery = make(chan struct{})
	for _, p := range a.every {
		a.startPeriodic(p)
	}
}

// Every has f called every interval while the writer runs (from Start to
// Stop), and once more as Stop begins, before the last records are
// written: for a part that sums what it audits over an interval (a
// throttle.Tally of refusals) and has no goroutine of its own to write
// the sums. f must not block for long. Registered after Stop, f is not
// called.
func (a *Log) Every(interval time.Duration, f func()) {
	a.everyMu.Lock()
	defer a.everyMu.Unlock()
	p := periodic{interval: interval, f: f}
	a.every = append(a.every, p)
	if a.stopEvery != nil {
		a.startPeriodic(p)
	}
}

// startPeriodic calls p.f every p.interval until stopEvery is closed,
// then once more. everyMu is held.
func (a *Log) startPeriodic(p periodic) {
	stop := a.stopEvery
	a.everyWG.Go(func() {
		t := time.NewTicker(p.interval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				p.f()
				return
			case <-t.C:
				p.f()
			}
		}
	})
}

// run writes queued records until Stop is called and the queue is empty.
// It commits whatever has queued up while the previous batch was written
// (group commit): one transaction per batch under load. A batch that
// somebody waits for is written at once; one that nobody waits for (only
// records from Record) lingers up to auditLinger for company. Records
// kept after a failed write go first, in the same transaction.
func (a *Log) run() {
	defer close(a.done)
	items := make([]item, 0, auditBatch)
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	a.retry = time.NewTimer(time.Hour)
	a.retry.Stop()
	defer a.retry.Stop()
	if recs := a.unstored(); len(recs) > 0 {
		// Written before anything recorded from now on; those the store
		// holds already are skipped by their keys.
		a.backlog = make([]item, len(recs))
		for i, r := range recs {
			a.backlog[i] = item{rec: r, filed: true}
		}
		a.backlogN.Store(int64(len(recs)))
		a.log.Info("audit: records of the audit file marked as not in the store are written to it again", "records", len(recs))
		a.retry.Reset(0)
	}
	for {
		items = items[:0]
		// Records that overflowed are taken below, once the queue holds
		// nothing added before them: no waiting for more then.
		if a.overflowN.Load() == 0 {
			select {
			case it, ok := <-a.queue:
				if !ok {
					a.commit(nil)
					a.stopKept()
					return
				}
				items = a.add(items, it)
			case <-a.retry.C:
			case <-a.overflowed:
			}
		}
	fill:
		for len(items) < auditBatch {
			select {
			case it, ok := <-a.queue:
				if !ok { // Stop: nothing more is queued
					items = a.takeOverflow(items, math.MaxUint64)
					break fill
				}
				items = a.add(items, it)
			default:
				// Queue empty: whatever overflowed came before anything
				// queued from now on.
				items = a.takeOverflow(items, math.MaxUint64)
				break fill
			}
		}
		if len(items) > 0 && !waited(items) && len(items) < auditBatch {
			linger.Reset(auditLinger)
		linger:
			for len(items) < auditBatch {
				select {
				case it, ok := <-a.queue:
					if !ok {
						break linger
					}
					items = a.add(items, it)
					if it.done != nil {
						break linger // someone waits: write now
					}
				case <-linger.C:
					break linger
				}
			}
			linger.Stop()
		}
		a.commit(items)
		clear(items) // drop references to written records
	}
}

// unstored returns the records of the last replayTail bytes of the audit
// trail's files (the audit file, and before it the rotated files, newest
// first, as far as replayTail reaches: a relay may have stopped just
// after rotating) marked store_error or store_queue_full that have a key
// (up to the last auditBacklog of them), in the order they were written:
// records a relay stopped or killed before the store took them, and
// records of the admin commands (which do not try again). Lines without a
// key (written before records had one) are passed over: they could be
// stored twice.
func (a *Log) unstored() []Record {
	files, err := Files(a.path)
	if err != nil {
		a.log.Error("audit: read the audit file for records not in the store", "err", err)
		return nil
	}
	// From the newest file back, until replayTail bytes are taken.
	type part struct {
		path string
		from int64
	}
	var parts []part
	left := int64(replayTail)
	for i := len(files) - 1; i >= 0 && left > 0; i-- {
		fi, err := os.Stat(files[i])
		if err != nil {
			a.log.Error("audit: read the audit file for records not in the store", "err", err)
			continue
		}
		from := max(fi.Size()-left, 0)
		left -= fi.Size() - from
		parts = append(parts, part{files[i], from})
	}
	slices.Reverse(parts)
	var recs []Record
	for _, p := range parts {
		recs = a.unstoredIn(recs, p.path, p.from)
	}
	if n := len(recs) - auditBacklog; n > 0 {
		recs = recs[n:]
	}
	return recs
}

// unstoredIn appends to recs the marked records of the file at path from
// offset from (the first line is passed over when from is not 0: it may
// be cut), keeping the last 2 × auditBacklog at most.
func (a *Log) unstoredIn(recs []Record, path string, from int64) []Record {
	f, err := os.Open(path)
	if err != nil {
		a.log.Error("audit: read the audit file for records not in the store", "path", path, "err", err)
		return recs
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		a.log.Error("audit: read the audit file for records not in the store", "path", path, "err", err)
		return recs
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for skip := from > 0; sc.Scan(); skip = false {
		b := sc.Bytes()
		if skip || (!bytes.Contains(b, []byte(`"store_error"`)) && !bytes.Contains(b, []byte(`"store_queue_full"`))) {
			continue // a line cut by the start of the tail, or one in the store
		}
		var l auditLine
		if err := json.Unmarshal(b, &l); err != nil || l.Key == "" || (l.StoreError == "" && !l.StoreQueueFull) {
			continue
		}
		l.Record.Seq = 0
		if len(recs) == 2*auditBacklog { // keep the last ones
			recs = append(recs[:0], recs[auditBacklog:]...)
		}
		recs = append(recs, l.Record)
	}
	if err := sc.Err(); err != nil {
		a.log.Error("audit: read the audit file for records not in the store", "path", path, "err", err)
	}
	return recs
}

// add appends it to items, after the records added before it while the
// queue was full.
func (a *Log) add(items []item, it item) []item {
	if a.overflowN.Load() > 0 {
		items = a.takeOverflow(items, it.seq)
	}
	return append(items, it)
}

// takeOverflow appends to items the overflowed records added before seq.
func (a *Log) takeOverflow(items []item, seq uint64) []item {
	a.orderMu.Lock()
	defer a.orderMu.Unlock()
	n := 0
	for n < len(a.overflow) && a.overflow[n].seq < seq {
		n++
	}
	items = append(items, a.overflow[:n]...)
	rest := copy(a.overflow, a.overflow[n:])
	clear(a.overflow[rest:])
	a.overflow = a.overflow[:rest]
	a.overflowN.Store(int64(rest))
	return items
}

// commit writes the records kept from failed writes and then items to the
// store, and those of them not yet in the file to the file, and tells
// whoever waits for items. What the store did not take is kept, up to
// auditBacklog records, and tried again (with the file, for the records
// the file did not take either).
func (a *Log) commit(items []item) {
	if len(items) == 0 && len(a.backlog) == 0 {
		return
	}
	kept := len(a.backlog)
	all := append(append(a.buf[:0], a.backlog...), items...)
	recs := a.recBuf[:0]
	for _, it := range all {
		recs = append(recs, it.rec)
	}
	var fromOverflow int64 // records taken from overflow, counted in overflowUnfiled
	for _, it := range items {
		if it.overflow && !it.filed {
			fromOverflow++
		}
	}
	start := time.Now()
	done, refused, err := a.store(recs)
	if a.Committed != nil {
		a.Committed(start)
	}
	var lines []auditLine
	for j, it := range all {
		if it.filed {
			continue
		}
		l := auditLine{Record: it.rec}
		if j >= done {
			l.StoreError = errString(err)
		} else if rerr, ok := refused[j]; ok {
			l.StoreError = rerr.Error()
		}
		lines = append(lines, l)
	}
	ferr := a.appendFile(lines)
	if ferr == nil {
		for j := range all {
			all[j].filed = true
		}
	}
	if len(refused) > 0 {
		unfiled := 0
		for j := range refused {
			if !all[j].filed {
				unfiled++
			}
		}
		a.lose(len(refused), unfiled, "refused by the store")
	}
	if err == nil {
		if kept > 0 {
			a.log.Info("audit: the store answers again; the records kept for it are written", "records", kept)
		}
		if ferr != nil {
			a.log.Error("audit: records written to the store but not to the audit file", "path", a.path, "records", len(lines), "err", ferr)
		}
		a.backlog = nil
		a.retryWait = 0
		a.retry.Stop()
	} else {
		rest := all[done:]
		if over := len(rest) - auditBacklog; over > 0 {
			a.lose(over, countUnfiled(rest[auditBacklog:]), "kept for the store while it fails")
			rest = rest[:auditBacklog]
		}
		a.backlog = append(a.backlog[:0:0], rest...)
		if ferr == nil {
			a.log.Error("audit: store write failed; records written to the audit file, marked store_error, and kept to be written again",
				"records", len(items), "kept", len(a.backlog), "err", err)
		} else {
			a.log.Error("audit: store write failed, and so did the append to the audit file; records kept in memory only, to be written to both again (lost if the relay stops first)",
				"records", len(items), "kept", len(a.backlog), "in_memory_only", countUnfiled(a.backlog), "err", err, "file_err", ferr)
		}
		a.retryWait = min(max(2*a.retryWait, retryMin), retryMax)
		a.retry.Reset(a.retryWait/2 + mrand.N(a.retryWait/2+1))
	}
	a.backlogN.Store(int64(len(a.backlog)))
	a.backlogUnfiled.Store(int64(countUnfiled(a.backlog)))
	// After backlogUnfiled: Unwritten never dips meanwhile.
	a.overflowUnfiled.Add(-fromOverflow)
	// Last: a waiter sees what this write did (Unwritten, Lost).
	for _, it := range items {
		if it.done != nil {
			close(it.done)
		}
	}
	clear(all)
	a.buf = all[:0]
	clear(recs)
	a.recBuf = recs[:0]
}

// stopKept reports, as the writer stops, the records it still keeps for
// the store: those in the file are written to the store when a relay next
// starts on it (unstored); the others are lost.
func (a *Log) stopKept() {
	n := len(a.backlog)
	if n == 0 {
		return
	}
	unfiled := countUnfiled(a.backlog)
	if unfiled == 0 {
		a.log.Error("audit: stopping with records the store did not take; they are in the audit file, marked store_error, and written to the store when the relay next starts on it", "records", n)
	} else {
		a.log.Error("audit: stopping with records the store did not take; those in the audit file, marked store_error, are written to the store when the relay next starts on it; the others, which the audit file did not take either, are lost",
			"records", n, "in_file", n-unfiled, "lost", unfiled)
		a.lose(unfiled, unfiled, "the writer stopped while the store and the audit file failed")
	}
	a.backlog = nil
	a.backlogN.Store(0)
	a.backlogUnfiled.Store(0)
}

func countUnfiled(items []item) int {
	n := 0
	for _, it := range items {
		if !it.filed {
			n++
		}
	}
	return n
}

// store writes recs to the store, in order, and returns how many of them
// are done with, from the first: stored, or refused by the store (a
// record it could never hold, whose error refused holds by index: it
// stays in the file only). err, when not nil, is the failure that stopped
// it before recs[done], to be tried again. A batch the store refuses is
// split until the records it refuses are alone, so that one record it
// cannot hold does not keep the others out.
func (a *Log) store(recs []Record) (done int, refused map[int]error, err error) {
	ctx, cancel := context.WithTimeout(a.ctx, storeTimeout)
	err = a.st.AddAudit(ctx, recs)
	cancel()
	if err == nil {
		return len(recs), nil, nil
	}
	if !a.st.Refused(err) {
		return 0, nil, err
	}
	if len(recs) == 1 {
		a.log.Error("audit: the store refused a record", "kind", recs[0].Kind, "err", err)
		return 1, map[int]error{0: err}, nil
	}
	half := len(recs) / 2
	done, refused, err = a.store(recs[:half])
	if err != nil {
		return done, refused, err
	}
	d2, r2, err := a.store(recs[half:])
	for i, e := range r2 {
		if refused == nil {
			refused = map[int]error{}
		}
		refused[half+i] = e
	}
	return half + d2, refused, err
}

// lose counts n records that will never be in the store, unfiled of them
// in the audit file neither, and says why.
func (a *Log) lose(n, unfiled int, why string) {
	a.lostFiled.Add(int64(n - unfiled))
	a.lostUnfiled.Add(int64(unfiled))
	if unfiled == 0 {
		a.log.Error("audit: records written to the audit file only, not to the store", "records", n, "why", why, "total", a.Lost())
		return
	}
	a.log.Error("audit: records lost: not in the store, and not in the audit file either", "records", unfiled, "in_file_only", n-unfiled, "why", why, "total", a.Lost(), "total_unfiled", a.LostUnfiled())
}

// waited reports whether anyone waits for one of items to be written.
func waited(items []item) bool {
	for _, it := range items {
		if it.done != nil {
			return true
		}
	}
	return false
}

// item is a queued record and the channel closed once it is written (nil
// when nobody waits for it).
type item struct {
	rec   Record
	done  chan struct{}
	seq   uint64 // the order it was added in
	filed bool   // written to the file already
	// overflow: added while the queue was full (written to the file as
	// it was added, unless that failed: overflowUnfiled counts it then).
	overflow bool
}

// Add records rec (stamping its time when unset) and returns once it is in
// the store and the file, so an action is never taken unaudited even when
// the relay dies right after. Concurrent adds share one transaction. When
// the store fails (or the queue is full), Add returns once rec is in the
// file, marked, and the writer keeps it for the store (see Log).
func (a *Log) Add(rec Record) { a.Queue(rec)() }

// Queue queues rec (stamping its time when unset) as Add does, and
// returns a wait that returns once it is written: for a record that must
// keep its place before what the caller does next, whose caller should not
// wait for it right away.
func (a *Log) Queue(rec Record) (wait func()) {
	done := a.enqueue(rec, true)
	return func() {
		if done != nil {
			<-done
		}
	}
}

// QueueWithin queues rec as Queue does and waits for its write for at most
// d: for a record that should be committed before what the caller does
// next (so that a relay killed right after keeps it), when the caller must
// not wait long on a stalled store. It reports whether rec was written.
func (a *Log) QueueWithin(rec Record, d time.Duration) bool {
	done := a.enqueue(rec, true)
	if done == nil {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// Record queues rec (stamping its time when unset) and returns without
// waiting for the write: for records of something already over, such as a
// stream that ended, where waiting would hold up nothing but the caller.
// The queue is bounded; when it is full (the store stalls), Record writes
// rec to the file at once and leaves it to the writer for the store
// (enqueue): it never waits for the store.
func (a *Log) Record(rec Record) { a.enqueue(rec, false) }

// enqueue hands rec to run. Without a writer goroutine it writes at once
// and returns nil. With wait it returns the channel closed once run has
// written rec. When the queue is full it writes rec to the file, marked
// store_queue_full, and returns nil: it is in the file, the writer stores
// it after the records added before it (up to auditOverflow such records;
// beyond, it stays in the file only).
func (a *Log) enqueue(rec Record, wait bool) chan struct{} {
	if rec.At.IsZero() {
		rec.At = time.Now()
	}
	if rec.Key == "" {
		rec.Key = a.keyPrefix + strconv.FormatUint(a.keySeq.Add(1), 36)
	}
	a.mu.RLock()
	if a.closed {
		a.mu.RUnlock()
		a.write([]Record{rec})
		return nil
	}
	it := item{rec: rec}
	if wait {
		it.done = make(chan struct{})
	}
	a.orderMu.Lock()
	it.seq = a.nextSeq
	a.nextSeq++
	select {
	case a.queue <- it:
		a.orderMu.Unlock()
		a.mu.RUnlock()
		return it.done
	default:
	}
	a.orderMu.Unlock()
	// The queue is full: to the file first (still holding mu, so that the
	// writer is not stopped meanwhile), then to overflow, in the order of
	// the records added from now on (one added concurrently may come
	// before it: their order was never set).
	ferr := a.appendFile([]auditLine{{Record: rec, StoreQueueFull: true}})
	it.done, it.filed, it.overflow = nil, ferr == nil, true
	a.orderMu.Lock()
	it.seq = a.nextSeq
	a.nextSeq++
	keep := len(a.overflow) < auditOverflow
	if keep {
		a.overflow = append(a.overflow, it)
		a.overflowN.Store(int64(len(a.overflow)))
		if !it.filed {
			a.overflowUnfiled.Add(1)
		}
	}
	a.orderMu.Unlock()
	a.mu.RUnlock()
	select {
	case a.overflowed <- struct{}{}:
	default:
	}
	switch {
	case !keep && it.filed:
		a.lose(1, 0, "the audit queue is full")
	case !keep:
		a.lose(1, 1, "the audit queue is full and the audit file failed")
	case !it.filed:
		a.log.Error("audit: the audit queue is full and the append to the audit file failed; the record is kept in memory for both", "kind", rec.Kind, "err", ferr)
	}
	return nil
}

// write stores recs and appends them to the file, without a writer
// goroutine (before Start, after Stop: the admin commands). A record the
// store could not take is still written to the file, marked store_error,
// so nothing is lost; it is not tried again.
func (a *Log) write(recs []Record) {
	ctx, cancel := context.WithTimeout(a.ctx, storeTimeout)
	err := a.st.AddAudit(ctx, recs)
	cancel()
	lines := make([]auditLine, len(recs))
	for i, r := range recs {
		lines[i] = auditLine{Record: r, StoreError: errString(err)}
	}
	ferr := a.appendFile(lines)
	switch {
	case err != nil && ferr != nil:
		a.log.Error("audit: store write failed, and so did the append to the audit file", "records", len(recs), "err", err, "file_err", ferr)
		a.lose(len(recs), len(recs), "the store and the audit file failed")
	case err != nil:
		a.log.Error("audit: store write failed; records kept in the audit file only", "records", len(recs), "err", err)
	case ferr != nil:
		a.log.Error("audit: records written to the store but not to the audit file", "path", a.path, "records", len(recs), "err", ferr)
	}
}

// appendFile appends lines to the file and reports whether they reached
// it: a failed or short write is cut back off the file (the next line
// must start on a line of its own for the file to be read: unstored),
// and the error is returned, for the caller to say what it means.
func (a *Log) appendFile(lines []auditLine) error {
	if len(lines) == 0 {
		return nil
	}
	buf := make([]byte, 0, 256*len(lines))
	for _, l := range lines {
		line, merr := json.Marshal(l)
		if merr != nil {
			a.log.Error("audit: encode record", "kind", l.Kind, "err", merr)
			continue
		}
		buf = append(append(buf, line...), '\n')
	}
	a.fileMu.Lock()
	defer a.fileMu.Unlock()
	n, err := a.file.Write(buf)
	if err != nil {
		a.fileErrors.Add(1)
		if n > 0 {
			err = errors.Join(err, a.cutLocked(n))
		}
		a.lastFileErr = err
		return fmt.Errorf("append to audit file: %w", err)
	}
	a.lastFileErr = nil
	// Between appends, whole: a failed append is cut back above, in the
	// file it was made to.
	a.rotateIfFullLocked()
	return nil
}

// cutLocked removes the n bytes a failed append left at the end of the
// file. They end where the write left the file's offset (O_APPEND). When
// an admin command appended after them meanwhile, they cannot be cut
// without its line: cutLocked ends them with a newline instead, so that
// only they are lost. fileMu is held.
func (a *Log) cutLocked(n int) error {
	end, err := a.file.Seek(0, io.SeekCurrent)
	if err != nil {
		return fmt.Errorf("cut a partly written line: %w", err)
	}
	fi, err := a.file.Stat()
	if err != nil {
		return fmt.Errorf("cut a partly written line: %w", err)
	}
	if fi.Size() == end {
		if err := a.file.Truncate(end - int64(n)); err != nil {
			return fmt.Errorf("cut a partly written line: %w", err)
		}
		return nil
	}
	if _, err := a.file.Write([]byte{'\n'}); err != nil {
		return fmt.Errorf("end a partly written line: %w", err)
	}
	return nil
}

// auditLine is a line of the audit file. StoreError says the store had
// not taken the record when it was written to the file (the writer tries
// it again, as long as it keeps it: see Log); StoreQueueFull that it was
// written to the file as it was added, the queue being full (the writer
// stores it in its place, as far as it keeps it).
type auditLine struct {
	Record
	StoreError     string `json:"store_error,omitempty"`
	StoreQueueFull bool   `json:"store_queue_full,omitempty"`
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// Stop has the functions given to Every called a last time, writes what
// is queued and stops the writer; later records are written as they are
// added. Only call it after Start.
func (a *Log) Stop() {
	a.everyMu.Lock()
	if a.stopEvery != nil {
		close(a.stopEvery)
		a.stopEvery = nil
	}
	a.everyMu.Unlock()
	a.everyWG.Wait() // their last records are queued while the writer runs
	a.mu.Lock()
	if !a.closed {
		a.closed = true
		close(a.queue)
	}
	a.mu.Unlock()
	<-a.done
}

// Close closes the audit file, after Stop (or when Start was never
// called).
func (a *Log) Close() error {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.fileMu.Lock()
	defer a.fileMu.Unlock()
	return a.file.Close()
}
