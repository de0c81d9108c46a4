package agent

import (
	"fmt"
	"testing"
	"time"
)

// TestBusyWindowDoubles: each "busy" refusal in a row doubles the window
// of the random wait, up to the reconnect backoff's maximum.
func TestBusyWindowDoubles(t *testing.T) {
	for _, tc := range []struct {
		n     int
		limit time.Duration
		want  time.Duration
	}{
		{1, 30 * time.Second, 5 * time.Second},
		{2, 30 * time.Second, 10 * time.Second},
		{3, 30 * time.Second, 20 * time.Second},
		{4, 30 * time.Second, 30 * time.Second},
		{1000, 30 * time.Second, 30 * time.Second},
		{1, 500 * time.Millisecond, 500 * time.Millisecond},
		{3, 500 * time.Millisecond, 500 * time.Millisecond},
	} {
		if got := busyWindow(tc.n, tc.limit); got != tc.want {
			t.Errorf("busyWindow(%d, %v) = %v, want %v", tc.n, tc.limit, got, tc.want)
		}
	}
}

// TestQUICRetryIsJittered: after a fallback, QUIC is tried again after
// quic_retry plus up to half as much, and not at the same moment by every
// agent.
func TestQUICRetryIsJittered(t *testing.T) {
	a := &Agent{cfg: Config{QUICRetry: time.Minute}, fallback: map[string]time.Time{}}
	seen := map[time.Duration]bool{}
	for range 50 {
		before := time.Now()
		until := a.markQUICFailed("relay:7443")
		after := time.Now()
		if until.Before(before.Add(time.Minute)) || until.After(after.Add(90*time.Second)) {
			t.Fatalf("retry at %v after the fallback, want within [1m, 1m30s]", until.Sub(before))
		}
		if got, ok := a.quicFallback("relay:7443"); !ok || !got.Equal(until) {
			t.Fatalf("fallback recorded until %v (%v), want %v", got, ok, until)
		}
		seen[until.Sub(before).Round(time.Second)] = true
	}
	if len(seen) < 10 {
		t.Fatalf("50 fallbacks gave only %d distinct retry times: %v", len(seen), seen)
	}
}

// TestQUICFallbacksForgotten: the fallbacks of relays the agent does not
// dial again are forgotten once they have expired, so an agent that fell
// back for relay after relay of a changing cluster does not keep one entry
// each for as long as it runs.
func TestQUICFallbacksForgotten(t *testing.T) {
	a := &Agent{cfg: Config{QUICRetry: time.Minute}, fallback: map[string]time.Time{}}
	const n = 500
	for i := range n {
		a.markQUICFailed(fmt.Sprintf("relay%d.example:7443", i))
	}
	// Their retry time passes; none of them is dialled again.
	a.fbMu.Lock()
	for r := range a.fallback {
		a.fallback[r] = time.Now().Add(-time.Second)
	}
	a.fbMu.Unlock()
	until := a.markQUICFailed("relay-new.example:7443")
	a.fbMu.Lock()
	kept := len(a.fallback)
	a.fbMu.Unlock()
	if kept != 1 {
		t.Fatalf("%d fallbacks kept after %d expired and one new, want 1", kept, n)
	}
	if got, ok := a.quicFallback("relay-new.example:7443"); !ok || !got.Equal(until) {
		t.Fatalf("the new fallback is %v (%v), want %v", got, ok, until)
	}
}
