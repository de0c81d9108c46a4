package frontdoor

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/throttle"
)

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// A source's refused credentials are answered as they are for its burst,
// then rate_limited with a wait, until it has an attempt again; refusals
// the caller did not cause (no credential, the relay's own failure) are
// not counted; an identity claimed from many sources has a burst of its
// own; a valid credential is never turned into a refusal.
func TestAuthGuard(t *testing.T) {
	c := &testClock{t: time.Unix(1_800_000_000, 0)}
	g := newAuthGuard(Config{Throttle: throttle.Config{Burst: 3, Every: 10 * time.Second}, Now: c.now})
	wrong := protocol.Errorf(protocol.CodeUnauthenticated, "wrong backend name or API key")
	code := func(err error) protocol.Code { return protocol.CodeOf(err) }

	if err := g.refused("192.0.2.1:1000", reasonBadKey, "billing", nil); err != nil {
		t.Fatalf("a valid credential: %v", err)
	}
	for i := range 3 {
		if err := g.refused("192.0.2.1:1000", reasonBadKey, "", wrong); code(err) != protocol.CodeUnauthenticated {
			t.Fatalf("failure %d within the burst: %v", i+1, err)
		}
	}
	err := g.refused("192.0.2.1:2000", reasonBadKey, "", wrong) // another port: the same source
	var ar *authRefusal
	if !errors.Is(err, protocol.ErrRateLimited) || !errors.As(err, &ar) || ar.reason != throttle.ReasonThrottled || retryAfter(err) != 10 {
		t.Fatalf("the failure past the burst: %v (retry after %d s); want rate_limited, reason throttled, retry after 10 s", err, retryAfter(err))
	}
	// Not counted: no credential, the relay's failure. Another source is
	// not affected.
	if err := g.refused("192.0.2.1:1000", reasonNoCredentials, "", wrong); code(err) != protocol.CodeUnauthenticated {
		t.Fatalf("no credential from the throttled source: %v; want unauthenticated", err)
	}
	if err := g.refused("192.0.2.1:1000", reasonBadKey, "", protocol.Errorf(protocol.CodeInternal, "store down")); code(err) != protocol.CodeInternal {
		t.Fatalf("the relay's failure: %v; want internal", err)
	}
	if err := g.refused("198.51.100.1:1000", reasonBadKey, "", wrong); code(err) != protocol.CodeUnauthenticated {
		t.Fatalf("another source: %v; want unauthenticated", err)
	}
	c.add(10 * time.Second)
	if err := g.refused("192.0.2.1:1000", reasonBadKey, "", wrong); code(err) != protocol.CodeUnauthenticated {
		t.Fatalf("after 10 s: %v; want one more attempt", err)
	}

	// One name from many sources.
	for i := range 3 {
		if err := g.refused("203.0.113."+string(rune('1'+i))+":1", reasonBadKey, "payroll", wrong); code(err) != protocol.CodeUnauthenticated {
			t.Fatalf("failure %d for payroll: %v", i+1, err)
		}
	}
	if err := g.refused("203.0.113.9:1", reasonBadKey, "payroll", wrong); code(err) != protocol.CodeRateLimited {
		t.Fatalf("a fourth failure for payroll from a fresh source: %v; want rate_limited", err)
	}
}
