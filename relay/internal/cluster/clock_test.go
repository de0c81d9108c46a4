package cluster

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// LastHeartbeat carries the monotonic clock reading of the moment the
// heartbeat began, so that its age (time.Since) is measured on the
// monotonic clock: a step of the wall clock by more than DeadAfter (an
// NTP correction, a VM resumed) must neither make a healthy relay think
// it lost its store nor make one that lost it say it just wrote. A time
// rebuilt from Unix nanoseconds has no monotonic reading, and
// time.Since of it follows the wall clock.
func TestLastHeartbeatIsMonotonic(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "relay.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := New(Config{Store: st, ID: "relay-1", Epoch: 1, Logger: slog.New(slog.DiscardHandler)})
	if last := c.LastHeartbeat(); !last.IsZero() {
		t.Fatalf("LastHeartbeat before the first heartbeat: %v, want the zero time", last)
	}
	before := time.Now()
	c.beat(ctx)
	last := c.LastHeartbeat()
	if last.IsZero() {
		t.Fatal("no heartbeat written")
	}
	// time.Time.String ends with "m=±<seconds>" exactly when the time
	// has a monotonic reading.
	if !strings.Contains(last.String(), " m=") {
		t.Errorf("LastHeartbeat %v has no monotonic clock reading: its age follows steps of the wall clock", last)
	}
	if last.Before(before) || time.Since(last) < 0 {
		t.Errorf("LastHeartbeat %v, taken after %v: want the start of the heartbeat just written", last, before)
	}
}
