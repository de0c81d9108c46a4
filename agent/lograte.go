package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// logLimiter keeps what a relay can make the agent log within bounds: at
// most logBurst lines a logWindow go at their level, the rest at debug
// level; the first line of a window after one that held some back says how
// many (not_logged). A relay decides how many streams it opens, and so how
// many refusals the agent would log.
type logLimiter struct {
	mu      sync.Mutex
	start   time.Time // of the current window
	n       int       // lines at their level in the window
	dropped int       // lines held back to debug level since the last one at its level
}

const (
	logWindow = 10 * time.Second
	logBurst  = 10
)

// log logs msg with args at level, or at debug level when the window's
// lines are spent.
func (l *logLimiter) log(log *slog.Logger, level slog.Level, msg string, args ...any) {
	now := time.Now()
	l.mu.Lock()
	if now.Sub(l.start) >= logWindow {
		l.start, l.n = now, 0
	}
	dropped := 0
	if l.n < logBurst {
		l.n++
		dropped, l.dropped = l.dropped, 0
	} else {
		l.dropped++
		level = slog.LevelDebug
	}
	l.mu.Unlock()
	if dropped > 0 {
		args = append(args[:len(args):len(args)], "not_logged", dropped)
	}
	log.Log(context.Background(), level, msg, args...)
}
