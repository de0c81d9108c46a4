package relay

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestReadinessMemo: callers that find no fresh answer while a check is
// in flight share that one check; its answer is reused for the ttl after
// it ended, and not beyond: a store that went down is reported by the
// first check after that. A caller whose request ends stops waiting.
func TestReadinessMemo(t *testing.T) {
	var checks atomic.Int32
	release := make(chan error)
	started := make(chan struct{}, 1)
	c := newReadiness(func(ctx context.Context) error {
		checks.Add(1)
		started <- struct{}{}
		return <-release
	}, time.Second)
	var mu sync.Mutex // guards now
	now := time.Unix(1000, 0)
	c.now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	advance := func(d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(d)
	}
	waiting := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			c.mu.Lock()
			inFlight := c.pending != nil
			c.mu.Unlock()
			if inFlight && int(checks.Load()) == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("check %d not in flight within 10 s", n)
			}
		}
	}

	// Twenty callers at once: one check.
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() { errs <- c.ready(context.Background()) })
	}
	<-started
	waiting(1)
	// One whose request ends stops waiting, and the check goes on.
	gone, leave := context.WithCancel(context.Background())
	goneErr := make(chan error, 1)
	go func() { goneErr <- c.ready(gone) }()
	leave()
	if err := <-goneErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("a caller whose request ended: %v, want its context's end", err)
	}
	release <- nil
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a caller sharing a check that passed: %v", err)
		}
	}
	if n := checks.Load(); n != 1 {
		t.Fatalf("%d checks for 21 callers at once, want 1", n)
	}

	// Within the ttl the answer is reused.
	advance(900 * time.Millisecond)
	for range 50 {
		if err := c.ready(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := checks.Load(); n != 1 {
		t.Fatalf("%d checks within the ttl, want 1", n)
	}

	// Past it, the next caller checks again and hears the store is down;
	// that answer is reused in turn.
	advance(100 * time.Millisecond)
	down := errors.New("store unreachable")
	got := make(chan error, 1)
	go func() { got <- c.ready(context.Background()) }()
	<-started
	release <- down
	if err := <-got; !errors.Is(err, down) {
		t.Fatalf("past the ttl, with the store down: %v, want %v", err, down)
	}
	if err := c.ready(context.Background()); !errors.Is(err, down) {
		t.Fatalf("the failure, reused: %v", err)
	}
	if n := checks.Load(); n != 2 {
		t.Fatalf("%d checks, want 2", n)
	}
}

// TestReadyzPingsStoreBounded: /readyz asked thousands of times a second
// by several clients pings the store about once a second, not once per
// request, and still answers ready.
func TestReadyzPingsStoreBounded(t *testing.T) {
	r, err := New(Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off, MetricsListen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	url := "http://" + r.opsLn.Addr().String() + "/readyz"
	get := func(cl *http.Client) int {
		resp, err := cl.Get(url)
		if err != nil {
			t.Error(err)
			return 0
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	cl := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	defer cl.CloseIdleConnections()
	for deadline := time.Now().Add(10 * time.Second); get(cl) != http.StatusOK; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("/readyz not ready within 10 s")
		}
	}
	pings := func() uint64 { return r.metrics.StoreTotals()["ping"].Count }
	p0 := pings()
	start := time.Now()
	var wg sync.WaitGroup
	var asked, notReady atomic.Int32
	for range 8 {
		wg.Go(func() {
			for time.Since(start) < 2500*time.Millisecond {
				asked.Add(1)
				if get(cl) != http.StatusOK {
					notReady.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	n := pings() - p0
	t.Logf("%d requests to /readyz in %v: %d store pings", asked.Load(), elapsed.Round(time.Millisecond), n)
	if notReady.Load() > 0 {
		t.Fatalf("%d of %d answers not ready", notReady.Load(), asked.Load())
	}
	if limit := uint64(elapsed/readyFor) + 2; n > limit {
		t.Fatalf("%d requests to /readyz in %v pinged the store %d times, want at most %d (about one a second)", asked.Load(), elapsed.Round(time.Millisecond), n, limit)
	}
}

// TestReadyzHidesStoreErrors: /readyz, which anyone who reaches the
// metrics listener may ask, says that the store does not answer but not
// the driver's error (which names the database's host, user and name);
// the relay's log has it, once however often /readyz asks. It used to answer "not ready: store unreachable: " and the error.
func TestReadyzHidesStoreErrors(t *testing.T) {
	var logs syncBuffer
	r, err := New(Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off, MetricsListen: "127.0.0.1:0",
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		stop()
		<-done // the store was closed under it: its end is not this test's
	}()
	url := "http://" + r.opsLn.Addr().String() + "/readyz"
	get := func() (int, string) {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if code, _ := get(); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz not ready within 10 s")
		}
	}
	// The store's database closed: every ping fails with the driver's
	// own error, as a PostgreSQL that refuses connections does.
	r.dir.Store.Close()
	var code int
	var body string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if code, body = get(); code != http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz still ready 10 s after the store was closed")
		}
	}
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "store unreachable: a ping failed (the relay's log has the details)") || strings.Contains(body, "sql:") || strings.Contains(body, "closed") {
		t.Fatalf("/readyz with the store down: %d %q, want 503 saying the store is unreachable without the driver's error", code, body)
	}
	// Two more failed pings: logged once in all.
	pings := func() uint64 { return r.metrics.StoreTotals()["ping"].Count }
	for p0, deadline := pings(), time.Now().Add(10*time.Second); pings() < p0+2; time.Sleep(10 * time.Millisecond) {
		if code, _ := get(); code == http.StatusOK || time.Now().After(deadline) {
			t.Fatalf("/readyz with the store closed: %d, %d pings", code, pings()-p0)
		}
	}
	if n := strings.Count(logs.String(), `"msg":"not ready: the store does not answer a ping","err":"sql: database is closed"`); n != 1 {
		t.Fatalf("the log says %d times that the store does not answer, with the driver's error; want once:\n%s", n, logs.String())
	}
}
