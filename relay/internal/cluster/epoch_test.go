package cluster

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/internal/store"
)

// eachEngine runs test with a new, empty store of each engine.
func eachEngine(t *testing.T, test func(t *testing.T, open func() *store.Store)) {
	for _, name := range []string{"sqlite", "postgres"} {
		t.Run(name, func(t *testing.T) {
			dsn := filepath.Join(t.TempDir(), "relay.db")
			if name == "postgres" {
				dsn = pgtest.Shared(t).CreateDatabase(t)
			}
			test(t, func() *store.Store {
				st, err := store.OpenDSN(context.Background(), dsn)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { st.Close() })
				return st
			})
		})
	}
}

// run is one run of a relay: its membership, run until stop.
type run struct {
	c      *Cluster
	fenced chan error
	stop   func()
}

// start runs the membership of relay-1 proposing epoch, heartbeating
// every 20 ms, on a store of its own (a process of its own), and waits for
// its first heartbeat to be written, or for it to be fenced.
func start(t *testing.T, st *store.Store, epoch int64) *run {
	t.Helper()
	r := &run{fenced: make(chan error, 16)}
	r.c = New(Config{Store: st, ID: "relay-1", Epoch: epoch, Heartbeat: 20 * time.Millisecond, Started: time.Now(),
		Logger: slog.New(slog.DiscardHandler),
		Fenced: func(err error) {
			select {
			case r.fenced <- err:
			default:
			}
		}})
	changed := r.c.Changes()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.c.Run(ctx) }()
	r.stop = func() { cancel(); <-done }
	t.Cleanup(r.stop)
	select {
	case <-changed: // its first heartbeat is written: it is live
	case err := <-r.fenced:
		t.Fatalf("a run of relay-1 proposing epoch %d was fenced at its start: %v", epoch, err)
	case <-time.After(10 * time.Second):
		t.Fatal("no heartbeat within 10 s")
	}
	return r
}

// TestRestartOnClockBehind: a relay stopped cleanly and started again on
// a host whose clock went back 30 s (an NTP step, a VM restored) joins its
// cluster; it was fenced by its own earlier run's epoch, and stopped,
// until its clock passed that. A run that starts while an earlier one
// still runs, on a clock behind the earlier one's, fences that one all
// the same.
func TestRestartOnClockBehind(t *testing.T) {
	eachEngine(t, func(t *testing.T, open func() *store.Store) {
		now := time.Now().UnixNano()
		first := start(t, open(), now)
		first.stop() // a clean stop: it leaves the cluster
		st := open()
		second := start(t, st, now-int64(30*time.Second))
		if rs, err := st.Relays(context.Background()); err != nil || len(rs) != 1 || rs[0].Epoch <= now {
			t.Fatalf("relays after the restart: %+v, %v; want relay-1 at an epoch above the earlier run's %d", rs, err, now)
		}
		// A third process under the same id, on a clock a minute behind:
		// the later start takes the row, the second stops.
		third := start(t, open(), now-int64(time.Minute))
		select {
		case err := <-second.fenced:
			if !errors.Is(err, store.ErrFenced) {
				t.Fatalf("the second run was told %v, want ErrFenced", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the second run, still heartbeating after a third started, was not fenced within 10 s")
		}
		select {
		case err := <-third.fenced:
			t.Fatalf("the latest run was fenced: %v", err)
		default:
		}
	})
}
