package relay

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// runRelay runs a relay with cfg until the test ends, when Run must return
// without error; it returns once the relay serves. cfg must name every
// listener that is on by default (a port 0 address or Off): a default port
// would make the test fail wherever a relay runs with its defaults.
func runRelay(t *testing.T, cfg Config) *Relay {
	t.Helper()
	r, _ := startRelay(t, cfg)
	return r
}

// startRelay runs a relay with cfg as runRelay does, and returns with it
// a stop that ends Run and waits for it to return without error (at the
// test's end, if not called before).
func startRelay(t *testing.T, cfg Config) (*Relay, func()) {
	t.Helper()
	if cfg.AgentListen == "" || cfg.SOCKSListen == "" || cfg.ConnectListen == "" {
		t.Fatal("runRelay, startRelay: set AgentListen, SOCKSListen and ConnectListen (127.0.0.1:0 or Off); the defaults are fixed ports")
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Error(err)
				}
			case <-time.After(30 * time.Second):
				t.Error("Run did not return")
			}
		})
	}
	t.Cleanup(stop)
	for deadline := time.Now().Add(20 * time.Second); !r.serving.Load(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("relay never started serving")
		}
	}
	return r, stop
}
