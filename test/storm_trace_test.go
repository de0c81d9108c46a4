package test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// stormTrace counts what the fleet's agents log at warning level and above,
// by message and the shape of its error, so that a slow reconnect storm
// shows why agents were not back (TETHER_BENCH_STORM_TRACE=1 prints the
// counts and the relay's figures every few seconds of the storm).
type stormTrace struct {
	mu     sync.Mutex
	counts map[string]int
}

func newStormTrace() *stormTrace { return &stormTrace{counts: make(map[string]int)} }

// numbers and addresses vary from line to line; the shape of a line does not.
var traceNoise = regexp.MustCompile(`[0-9]+(\.[0-9]+)*(ms|s|µs)?|\[[0-9a-f:]+\]`)

func (t *stormTrace) add(msg, err string) {
	if len(err) > 160 {
		err = err[:160]
	}
	key := msg + ": " + traceNoise.ReplaceAllString(err, "N")
	t.mu.Lock()
	t.counts[key]++
	t.mu.Unlock()
}

// take returns the counts since the last take, largest first.
func (t *stormTrace) take() []string {
	t.mu.Lock()
	c := t.counts
	t.counts = make(map[string]int)
	t.mu.Unlock()
	var out []string
	for k, n := range c {
		out = append(out, fmt.Sprintf("%6d %s", n, k))
	}
	slices.Sort(out)
	slices.Reverse(out)
	return out
}

func (t *stormTrace) logger() *slog.Logger { return slog.New(traceHandler{t: t}) }

// report prints the counts and the relay's figures every period until ctx
// ends.
func (t *stormTrace) report(ctx context.Context, addr string, since time.Time, period time.Duration) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s, err := tryStats(addr)
		lines := t.take()
		if len(lines) > 8 {
			lines = lines[:8]
		}
		fmt.Fprintf(os.Stderr, "storm +%4.0fs: %d connected, %d handshakes failed, %d throttled (stats err %v)\n%s",
			time.Since(since).Seconds(), s.AgentConnections, s.HandshakesFailed, s.HandshakesThrottled, err, strings.Join(lines, "\n"))
		fmt.Fprintln(os.Stderr)
	}
}

type traceHandler struct{ t *stormTrace }

func (h traceHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h traceHandler) Handle(_ context.Context, r slog.Record) error {
	var err string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" || a.Key == "reason" {
			err = a.Value.String()
			return false
		}
		return true
	})
	h.t.add(r.Message, err)
	return nil
}
func (h traceHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h traceHandler) WithGroup(string) slog.Handler      { return h }
