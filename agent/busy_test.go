package agent

import (
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
