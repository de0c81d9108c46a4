package accesslog

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Rotating the log key.
//
// Whoever gets the machine gets the log key, and with it could rewrite
// the whole log and sign it again. The writer therefore replaces the key
// now and then (Options.KeyRotation, or RotateKey) and the old private
// key is destroyed: the intruder then holds only the key in force, and
// can rewrite at most the lines written since it was put in force. The
// steps, each durable before the next, so that a crash at any point
// leaves a log that verifies and an agent that starts:
//
//  1. NextKey makes the new key and stores it apart (the agent: a
//     next-key file in its state directory). A crash here: the log does
//     not name it, and the next start discards it.
//  2. A key line naming the new key, signed by the old one, is committed
//     (written and fsynced) on its own; the checkpoints after it are
//     signed by the new key. A crash here: the log names the new key, and
//     the next start finishes steps 3 and 4 with the old and new keys it
//     still has.
//  3. The new key is appended to the key record, signed by the old one.
//  4. KeyReplaced replaces the stored key with the new one and destroys
//     the old (the agent renames the next-key file over the key file).
//
// Steps 3 and 4 failing leave the same state as a crash after step 2;
// the writer tries them again at its next checkpoint tick, and the next
// start finishes them too.

// Steps of a key rotation (Options.AfterStep).
const (
	StepNextKey  = "next-key" // the new key is stored apart
	StepKeyLine  = "key-line" // the key line naming it is in the log
	StepRecord   = "record"   // it is in the key record
	StepReplaced = "replaced" // it replaced the old key, which is gone
)

// rotationRetry is how long the writer waits to try a rotation again
// after NextKey failed.
const rotationRetry = time.Minute

// rotation is the writer's state of a key rotation.
type rotation struct {
	able    bool               // the options allow rotation (set by New, then read only)
	req     chan chan error    // RotateKey's requests
	waiters []chan error       // told when the rotation under way ends
	due     bool               // a key line naming next is to be written
	next    ed25519.PrivateKey // the new key, stored by NextKey
	old     ed25519.PrivateKey // after the key line: the old key, until steps 3 and 4 are done
	nextAt  time.Time          // the next scheduled rotation; zero: none
	seq     uint64             // the seq of the key line naming next
	at      time.Time          // its time
	rec     bool               // step 3 is done
}

// keyState is the key in force, for other goroutines.
type keyState struct {
	mu    sync.Mutex
	pub   ed25519.PublicKey
	since time.Time
}

func publicOf(k ed25519.PrivateKey) ed25519.PublicKey {
	if len(k) != ed25519.PrivateKeySize {
		return nil
	}
	return k.Public().(ed25519.PublicKey)
}

// KeyInForce returns the fingerprint of the log key in force and since
// when it is; "" when the log has no key.
func (l *Log) KeyInForce() (fingerprint string, since time.Time) {
	l.keyState.mu.Lock()
	defer l.keyState.mu.Unlock()
	if l.keyState.pub == nil {
		return "", time.Time{}
	}
	return Fingerprint(l.keyState.pub), l.keyState.since
}

// RotateKey asks the writer (Run) to replace the log key now, and waits
// until the new key is in force and the old one destroyed, or the
// rotation failed, or done is closed.
func (l *Log) RotateKey(done <-chan struct{}) error {
	if !l.rot.able {
		return errors.New("the access log cannot replace its key: it has no log key, or no place to keep the next one")
	}
	w := make(chan error, 1)
	select {
	case l.rot.req <- w:
	case <-done:
		return errors.New("the access log is not running")
	}
	select {
	case err := <-w:
		return err
	case <-done:
		select {
		case err := <-w: // told as the writer stopped
			return err
		default:
		}
		return errors.New("the access log stopped before the key was replaced")
	}
}

func (l *Log) canRotate() bool {
	return l.o.Key != nil && l.o.NextKey != nil && l.o.KeyReplaced != nil && l.o.KeyRecord != ""
}

// scheduleRotation arms t for the next scheduled rotation, if any: at
// once for a key older than KeyRotation.
func (l *Log) scheduleRotation(t *time.Timer) {
	if l.o.KeyRotation <= 0 || !l.canRotate() {
		return
	}
	if l.rot.nextAt.IsZero() {
		l.rot.nextAt = l.o.KeySince.Add(l.o.KeyRotation)
	}
	t.Reset(max(l.rot.nextAt.Sub(l.o.Now()), 0))
}

// startRotation makes the next key (step 1), unless a rotation is under
// way.
func (l *Log) startRotation() {
	if !l.canRotate() {
		l.rot.fail(errors.New("the access log cannot replace its key"))
		return
	}
	if l.rot.due || l.rot.old != nil {
		return // under way: its end tells the waiters
	}
	next, err := l.o.NextKey()
	if err == nil && len(next) != ed25519.PrivateKeySize {
		err = errors.New("the next key is not an ed25519 private key")
	}
	if err != nil {
		l.log.Error("access log: cannot make the next log key: the key in force stays, and the writer tries again", "err", err, "retry_in", rotationRetry)
		l.rot.nextAt = l.o.Now().Add(rotationRetry)
		l.rot.fail(fmt.Errorf("make the next log key: %w", err))
		return
	}
	l.step(StepNextKey)
	l.rot.next, l.rot.due = next, true
}

// keyLineCommitted: the key line naming the next key is in the log
// (step 2); from now on it signs.
func (l *Log) keyLineCommitted(seq uint64, at time.Time) {
	l.rot.old, l.o.Key = l.o.Key, l.rot.next
	l.rot.seq, l.rot.at, l.rot.due, l.rot.next, l.rot.rec = seq, at, false, nil, false
	l.o.KeySince = at
	l.keyState.mu.Lock()
	l.keyState.pub, l.keyState.since = publicOf(l.o.Key), at
	l.keyState.mu.Unlock()
	l.step(StepKeyLine)
}

// afterFlush finishes a rotation whose key line is committed (steps 3
// and 4), and arms t for the next one.
func (l *Log) afterFlush(t *time.Timer) {
	if l.rot.old == nil {
		return
	}
	if !l.rot.rec {
		if err := AppendKeyRecord(l.o.KeyRecord, l.rot.old, publicOf(l.o.Key), l.rot.seq, l.rot.at); err != nil {
			l.log.Error("access log: the new log key is in force, but it cannot be added to the key record: the old key is kept until it is (the writer tries again; the next start does too)", "record", l.o.KeyRecord, "err", err)
			return
		}
		l.rot.rec = true
		l.step(StepRecord)
	}
	if err := l.o.KeyReplaced(l.rot.old, l.o.Key); err != nil {
		l.log.Error("access log: the new log key is in force, but cannot replace the old one on disk, which stays until it does (the writer tries again; the next start does too)", "err", err)
		return
	}
	l.step(StepReplaced)
	old := l.rot.old
	clear(old) // the old private key, out of this process's memory too
	l.rot.old = nil
	l.log.Info("access log: replaced the log key; the old one is destroyed: the lines before the key line cannot be signed again", "key", Fingerprint(publicOf(l.o.Key)), "seq", l.rot.seq)
	l.rot.nextAt = time.Time{}
	if l.o.KeyRotation > 0 {
		l.rot.nextAt = l.rot.at.Add(l.o.KeyRotation)
	}
	l.rot.tell(nil)
	t.Stop()
	l.scheduleRotation(t)
}

func (l *Log) step(s string) {
	if l.o.AfterStep != nil {
		l.o.AfterStep(s)
	}
}

// fail tells the waiters that the rotation failed.
func (r *rotation) fail(err error) { r.tell(err) }

func (r *rotation) tell(err error) {
	for _, w := range r.waiters {
		w <- err
	}
	r.waiters = nil
}
