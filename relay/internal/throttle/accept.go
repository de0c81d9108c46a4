package throttle

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"
)

// AcceptBackoff is what an accept loop does with an error from Accept
// worth retrying: a timeout, or the process out of file descriptors
// (EMFILE, ENFILE), a connection aborted before it was accepted, and the
// like, which net reports as temporary. Ending the listener on such an
// error would let whoever used up the descriptors (a flood of
// connections on any door) take a door, or the relay, down for good; so
// the loop waits, 5 ms at first and twice as long at each error in a
// row up to a second, and accepts again, as net/http's servers do. The
// zero value is ready; a loop keeps one.
type AcceptBackoff struct {
	delay time.Duration
}

// Retry reports whether the loop should accept again after err, having
// waited and logged (as what, the listener's name) when err is worth
// retrying; false for any other error, and when ctx ended. Accepted
// resets the delay.
func (b *AcceptBackoff) Retry(ctx context.Context, err error, log *slog.Logger, what string) bool {
	var ne net.Error
	var t interface{ Temporary() bool }
	if !(errors.As(err, &ne) && ne.Timeout()) && !(errors.As(err, &t) && t.Temporary()) {
		return false
	}
	b.delay = min(max(2*b.delay, 5*time.Millisecond), time.Second)
	if b.delay == 5*time.Millisecond || b.delay == time.Second {
		// The first of a run of errors, then once a second.
		log.Warn(what+": accept failed; accepting again shortly", "err", err, "in", b.delay)
	}
	timer := time.NewTimer(b.delay)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// Accepted resets the delay after a connection was accepted.
func (b *AcceptBackoff) Accepted() { b.delay = 0 }
