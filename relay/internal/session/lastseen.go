package session

import (
	"context"
	"sync"
	"time"
)

// The store records when each agent was last seen. Writing it on every
// heartbeat would cost a fleet of 10 000 agents 1 000 writes a second;
// instead connects and disconnects are queued and written together every
// lastSeenFlush, and every lastSeenInterval the relay writes one batch with
// the last-heard time of every connected agent.
const (
	lastSeenFlush    = 2 * time.Second
	lastSeenInterval = time.Minute
)

// lastSeen queues agents' last-seen times for the store.
type lastSeen struct {
	mu      sync.Mutex // guards pending
	pending map[string]time.Time
}

// mark queues agent id as seen at t.
func (l *lastSeen) mark(id string, t time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending == nil {
		l.pending = make(map[string]time.Time)
	}
	if t.After(l.pending[id]) {
		l.pending[id] = t
	}
}

// take returns what is queued and empties the queue.
func (l *lastSeen) take() map[string]time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.pending
	l.pending = nil
	return p
}

// markConnected queues every connected agent with the time the relay last
// heard from it.
func (s *Server) markConnected() {
	for _, c := range s.set.Select("", false, nil) {
		s.seen.mark(c.id.ID, time.Unix(0, c.lastHeard.Load()))
	}
}

// keepLastSeen writes queued last-seen times until stop is closed, then
// writes what is left, with ctx (which outlives stop).
func (s *Server) keepLastSeen(ctx context.Context, stop <-chan struct{}) {
	flush := time.NewTicker(lastSeenFlush)
	defer flush.Stop()
	all := time.NewTicker(lastSeenInterval)
	defer all.Stop()
	for {
		select {
		case <-stop:
			s.markConnected()
			s.writeLastSeen(ctx)
			return
		case <-all.C:
			s.markConnected()
			s.writeLastSeen(ctx)
		case <-flush.C:
			s.writeLastSeen(ctx)
		}
	}
}

func (s *Server) writeLastSeen(ctx context.Context) {
	p := s.seen.take()
	if len(p) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	err := s.cfg.Store.SetAgentsLastSeen(ctx, p)
	if s.cfg.StoreOp != nil {
		s.cfg.StoreOp("last_seen", start)
	}
	if err != nil {
		s.log.Warn("cannot record when agents were last seen; will retry", "agents", len(p), "err", err)
		for id, t := range p {
			s.seen.mark(id, t)
		}
	}
}
