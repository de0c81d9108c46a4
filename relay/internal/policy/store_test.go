package policy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// StoreStalled refuses as unavailable, naming the store and the bound, a
// store call whose own deadline passed, and leaves any other failure to
// the caller.
func TestStoreStalled(t *testing.T) {
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	late := fmt.Errorf("query: %w", context.DeadlineExceeded)

	err := StoreStalled(expired, "look up agent", 10*time.Second, late)
	if !errors.Is(err, protocol.ErrUnavailable) || !strings.Contains(err.Error(), "look up agent: this relay's store did not answer within the handshake's 10s") {
		t.Fatalf("a store call past its deadline: %v, want unavailable naming the store", err)
	}
	if err := StoreStalled(expired, "look up agent", 10*time.Second, errors.New("connection refused")); err != nil {
		t.Errorf("another failure past the deadline: %v, want nil", err)
	}
	if err := StoreStalled(context.Background(), "look up agent", 10*time.Second, late); err != nil {
		t.Errorf("a deadline that is not the caller's: %v, want nil", err)
	}
}
