package relay

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
func (r *Relay) markConnected() {
	r.reg.mu.RLock()
	defer r.reg.mu.RUnlock()
	for _, list := range r.reg.byTenant {
		for _, c := range list {
			r.seen.mark(c.id.ID, time.Unix(0, c.lastHeard.Load()))
		}
	}
}

// keepLastSeen writes queued last-seen times until stop is closed, then
// writes what is left.
func (r *Relay) keepLastSeen(stop <-chan struct{}) {
	flush := time.NewTicker(lastSeenFlush)
	defer flush.Stop()
	all := time.NewTicker(lastSeenInterval)
	defer all.Stop()
	for {
		select {
		case <-stop:
			r.markConnected()
			r.writeLastSeen()
			return
		case <-all.C:
			r.markConnected()
			r.writeLastSeen()
		case <-flush.C:
			r.writeLastSeen()
		}
	}
}

func (r *Relay) writeLastSeen() {
	p := r.seen.take()
	if len(p) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err := r.st.store.SetAgentsLastSeen(ctx, p)
	r.metrics.storeOp("last_seen", start)
	if err != nil {
		r.log.Warn("cannot record when agents were last seen; will retry", "agents", len(p), "err", err)
		for id, t := range p {
			r.seen.mark(id, t)
		}
	}
}
