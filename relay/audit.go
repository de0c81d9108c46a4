package relay

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

// defaultAuditFile is the audit file's name in the data directory, and
// auditPathKey the setting under which a serving relay records where its
// audit file is, so that admin commands append to the same one.
const (
	defaultAuditFile = "audit.log"
	auditPathKey     = "audit_log_path"
)

// AuditRecord is one entry of the audit trail.
type AuditRecord = store.AuditRecord

// Audit record kinds.
const (
	AuditEnrol          = "agent.enrol"
	AuditConnect        = "agent.connect"   // refused connections (TLS or hello) and admitted ones
	AuditHandshake      = "agent.handshake" // TLS handshakes that failed before an identity was known
	AuditRenew          = "agent.renew"
	AuditRevoke         = "agent.revoke"
	AuditDisconnect     = "agent.disconnect" // only when the relay ends the session for a reason worth auditing
	AuditTokenCreate    = "token.create"
	AuditTenantAdd      = "tenant.add"
	AuditLimitsSet      = "tenant.limits"
	AuditBackendAdd     = "backend.add"
	AuditBackendGrant   = "backend.grant"
	AuditBackendUngrant = "backend.ungrant"
	AuditBackendCert    = "backend.certificate"
	AuditStream         = "stream"
	OutcomeOK           = "ok"
	auditBatch          = 512
	auditQueue          = 8192
	auditStoreRetries   = 3
	// auditLinger is how long the writer waits for more records before
	// writing a batch that nobody waits for (see record): under load, many
	// ended streams share one transaction instead of one each.
	auditLinger = 20 * time.Millisecond
)

// auditLog writes audit records to the store and, one JSON object per
// line, to an append-only file. One goroutine writes them in batches;
// callers wait until their record is written.
type auditLog struct {
	st   *store.Store
	log  *slog.Logger
	path string

	fileMu sync.Mutex // serialises appends to file
	file   *os.File

	mu     sync.RWMutex // add holds it shared; close exclusively, to close queue
	closed bool
	queue  chan auditItem
	// committed, when set, is told when each batch began to be written.
	committed func(start time.Time)
	done      chan struct{}
}

// openAuditLog opens (creating, 0600) the audit file at path for appending.
// A synchronous log writes each record as it is added (for the short-lived
// admin commands); otherwise records are queued for run.
func openAuditLog(st *store.Store, path string, log *slog.Logger, synchronous bool) (*auditLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return &auditLog{st: st, log: log, path: path, file: f, closed: synchronous,
		queue: make(chan auditItem, auditQueue), done: make(chan struct{})}, nil
}

// queued is how many records wait to be written.
func (a *auditLog) queued() int { return len(a.queue) }

// run writes queued records until close is called and the queue is empty.
// It commits whatever has queued up while the previous batch was written
// (group commit): one transaction per batch under load. A batch that
// somebody waits for is written at once; one that nobody waits for (only
// records from record) lingers up to auditLinger for company.
func (a *auditLog) run() {
	defer close(a.done)
	items := make([]auditItem, 0, auditBatch)
	recs := make([]AuditRecord, 0, auditBatch)
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
		if a.committed != nil {
			a.committed(start)
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
func waited(items []auditItem) bool {
	for _, it := range items {
		if it.done != nil {
			return true
		}
	}
	return false
}

// auditItem is a queued record and the channel closed once it is written
// (nil when nobody waits for it).
type auditItem struct {
	rec  AuditRecord
	done chan struct{}
}

// add records rec (stamping its time when unset) and returns once it is in
// the store and the file, so an action is never taken unaudited even when
// the relay dies right after. Concurrent adds share one transaction.
func (a *auditLog) add(rec AuditRecord) {
	if done := a.enqueue(rec, true); done != nil {
		<-done
	}
}

// record queues rec (stamping its time when unset) and returns without
// waiting for the write: for records of something already over, such as a
// stream that ended, where waiting would hold up nothing but the caller.
// The queue is bounded; when it is full, record waits for room.
func (a *auditLog) record(rec AuditRecord) { a.enqueue(rec, false) }

// enqueue hands rec to run. Records queued before close are written by
// run; after it, enqueue writes at once and returns nil. With wait it
// returns the channel closed once run has written rec.
func (a *auditLog) enqueue(rec AuditRecord, wait bool) chan struct{} {
	if rec.At.IsZero() {
		rec.At = time.Now()
	}
	a.mu.RLock()
	if a.closed {
		a.mu.RUnlock()
		a.write([]AuditRecord{rec})
		return nil
	}
	it := auditItem{rec: rec}
	if wait {
		it.done = make(chan struct{})
	}
	a.queue <- it // run drains the queue while close waits for this lock
	a.mu.RUnlock()
	return it.done
}

// write stores recs (retrying a failing store a few times) and appends them
// to the file. A record the store could not take is still written to the
// file, marked store_error, so nothing is lost.
func (a *auditLog) write(recs []AuditRecord) {
	var err error
	for attempt := range auditStoreRetries {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = a.st.AddAudit(ctx, recs)
		cancel()
		if err == nil {
			break
		}
		time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond)
	}
	if err != nil {
		a.log.Error("audit: store write failed; records kept in the audit file only", "records", len(recs), "err", err)
	}
	buf := make([]byte, 0, 256*len(recs))
	for _, r := range recs {
		line, merr := json.Marshal(auditLine{AuditRecord: r, StoreError: errString(err)})
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
	AuditRecord
	StoreError string `json:"store_error,omitempty"`
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// close writes what is queued and stops the writer; later records are
// written synchronously. Only call it after run was started.
func (a *auditLog) close() {
	a.mu.Lock()
	if !a.closed {
		a.closed = true
		close(a.queue)
	}
	a.mu.Unlock()
	<-a.done
}

// closeFile closes the audit file, after close (or when run never started).
func (a *auditLog) closeFile() error {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.fileMu.Lock()
	defer a.fileMu.Unlock()
	return a.file.Close()
}
