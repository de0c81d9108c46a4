// Package audit is the relay's audit trail: the kinds of record
// (kinds.go) and Log, which writes every record to the store and, one JSON
// object per line, to an append-only file on the relay's host.
package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
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
)

// Log writes audit records to the store and, one JSON object per line, to
// an append-only file. Until Start, and after Stop, each record is written
// as it is added; in between one goroutine, which Stop waits for, writes
// them in batches.
type Log struct {
	ctx  context.Context // for store writes: not cancelled, so that shutdown loses no record
	st   *store.Store
	log  *slog.Logger
	path string

	fileMu sync.Mutex // serialises appends to file
	file   *os.File

	mu     sync.RWMutex // enqueue holds it shared; Stop exclusively, to close queue
	closed bool         // no writer goroutine: write at once
	queue  chan item
	// Committed, when set before Start, is told when each batch began
	// to be written (for metrics).
	Committed func(start time.Time)
	done      chan struct{}

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
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return &Log{ctx: context.WithoutCancel(ctx), st: st, log: log, path: path, file: f, closed: true,
		queue: make(chan item, auditQueue), done: make(chan struct{})}, nil
}

// Queued is how many records wait to be written.
func (a *Log) Queued() int { return len(a.queue) }

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
// records from Record) lingers up to auditLinger for company.
func (a *Log) run() {
	defer close(a.done)
	items := make([]item, 0, auditBatch)
	recs := make([]Record, 0, auditBatch)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for it := range a.queue {
		items = append(items[:0], it)
	fill:
		for len(items) < auditBatch {
			select {
			case it, ok := <-a.queue:
				if !ok {
					break fill
				}
				items = append(items, it)
			default:
				break fill
			}
		}
		if !waited(items) && len(items) < auditBatch {
			timer.Reset(auditLinger)
		linger:
			for len(items) < auditBatch {
				select {
				case it, ok := <-a.queue:
					if !ok {
						break linger
					}
					items = append(items, it)
					if it.done != nil {
						break linger // someone waits: write now
					}
				case <-timer.C:
					break linger
				}
			}
			timer.Stop()
		}
		recs = recs[:0]
		for _, it := range items {
			recs = append(recs, it.rec)
		}
		start := time.Now()
		a.write(recs)
		if a.Committed != nil {
			a.Committed(start)
		}
		for _, it := range items {
			if it.done != nil {
				close(it.done)
			}
		}
		clear(items) // drop references to written records
	}
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
	rec  Record
	done chan struct{}
}

// Add records rec (stamping its time when unset) and returns once it is in
// the store and the file, so an action is never taken unaudited even when
// the relay dies right after. Concurrent adds share one transaction.
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
// The queue is bounded; when it is full, Record waits for room.
func (a *Log) Record(rec Record) { a.enqueue(rec, false) }

// enqueue hands rec to run. Without a writer goroutine it writes at once
// and returns nil. With wait it returns the channel closed once run has
// written rec.
func (a *Log) enqueue(rec Record, wait bool) chan struct{} {
	if rec.At.IsZero() {
		rec.At = time.Now()
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
	a.queue <- it // run drains the queue while close waits for this lock
	a.mu.RUnlock()
	return it.done
}

// write stores recs and appends them to the file. A record the store could
// not take is still written to the file, marked store_error, so nothing is
// lost.
func (a *Log) write(recs []Record) {
	ctx, cancel := context.WithTimeout(a.ctx, storeTimeout)
	err := a.st.AddAudit(ctx, recs)
	cancel()
	if err != nil {
		a.log.Error("audit: store write failed; records kept in the audit file only", "records", len(recs), "err", err)
	}
	buf := make([]byte, 0, 256*len(recs))
	for _, r := range recs {
		line, merr := json.Marshal(auditLine{Record: r, StoreError: errString(err)})
		if merr != nil {
			a.log.Error("audit: encode record", "kind", r.Kind, "err", merr)
			continue
		}
		buf = append(append(buf, line...), '\n')
	}
	a.fileMu.Lock()
	defer a.fileMu.Unlock()
	if _, werr := a.file.Write(buf); werr != nil {
		a.log.Error("audit: append to file failed", "path", a.path, "records", len(recs), "err", werr)
	}
}

type auditLine struct {
	Record
	StoreError string `json:"store_error,omitempty"`
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
