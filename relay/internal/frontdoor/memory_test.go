package frontdoor

import (
	"errors"
	"strings"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

// The stream memory cap is shared: while at most three quarters of it
// are held, a tenant is charged up to that; past it, a tenant may hold at
// most a quarter of it, so one tenant holding streams open leaves room
// for the others; the cap itself still holds for all of them together.
func TestMemoryBudgetShareWhenBusy(t *testing.T) {
	const mib = 1 << 20
	b := &memoryBudget{cap: 40 * mib}
	take := func(tenant string, n int64) error {
		t.Helper()
		return b.reserve(tenant, n)
	}
	reason := func(err error) string {
		var mr *memoryRefusal
		if errors.As(err, &mr) {
			return mr.reason
		}
		return ""
	}
	// acme alone: anything up to three quarters of the cap.
	for i := range 6 {
		if err := take("acme", 5*mib); err != nil {
			t.Fatalf("acme's stream %d (%d MiB held in all): %v; want it charged", i+1, i*5, err)
		}
	}
	// Past three quarters, acme (30 MiB, over its 10 MiB share) is
	// refused with room left under the cap, and told why.
	err := take("acme", 5*mib)
	if !errors.Is(err, protocol.ErrUnavailable) || reason(err) != memoryReasonShare || !strings.Contains(err.Error(), `tenant "acme"`) || !strings.Contains(err.Error(), "max_stream_memory 40 MiB") {
		t.Fatalf("acme past three quarters of the cap: %v (reason %q); want unavailable for its share, naming the tenant and the cap", err, reason(err))
	}
	// globex gets its share, up to the cap.
	for i := range 2 {
		if err := take("globex", 5*mib); err != nil {
			t.Fatalf("globex's stream %d while acme holds three quarters of the cap: %v; want it charged", i+1, err)
		}
	}
	// The cap is full: another tenant is refused by the cap.
	if err := take("initech", mib); !errors.Is(err, protocol.ErrUnavailable) || reason(err) != memoryReasonCap || !strings.Contains(err.Error(), "at its stream memory cap") {
		t.Fatalf("a third tenant at the full cap: %v (reason %q); want unavailable for the cap", err, reason(err))
	}
	// acme gives back 10 MiB: globex, at its share, is refused past it
	// with room left under the cap; initech, holding nothing, is not.
	b.release("acme", 10*mib)
	if err := take("globex", mib); reason(err) != memoryReasonShare {
		t.Fatalf("globex past its share with 10 MiB free: %v; want refused for its share", err)
	}
	if err := take("initech", 5*mib); err != nil {
		t.Fatalf("initech, holding nothing, with 10 MiB free: %v", err)
	}
	// Given back, the memory serves again; a tenant with nothing held is
	// forgotten.
	b.release("globex", 10*mib)
	b.release("initech", 5*mib)
	if _, ok := b.held["globex"]; ok || b.used != 20*mib {
		t.Fatalf("after globex and initech closed: used %d, held %v; want 20 MiB, globex forgotten", b.used, b.held)
	}
	b.release("acme", 20*mib)
	if b.used != 0 || len(b.held) != 0 {
		t.Fatalf("all given back: used %d, held %v; want nothing", b.used, b.held)
	}
	// No cap: nothing is counted or refused.
	none := &memoryBudget{}
	if err := none.reserve("acme", 1<<40); err != nil || none.used != 0 {
		t.Fatalf("no cap: %v, used %d", err, none.used)
	}
}

// With a cap under four streams' worst case (the settings allow one down
// to one stream's), a tenant holding nothing still gets a stream while
// there is room under the cap: its share is at least one stream.
func TestMemoryShareAtLeastOneStream(t *testing.T) {
	b := &memoryBudget{cap: 24 << 20}
	a, err := b.charge("acme")
	if err != nil {
		t.Fatal(err)
	}
	defer a.release()
	c, err := b.charge("globex")
	if err != nil {
		t.Fatalf("globex, holding nothing, refused with %d MiB of %d MiB free: %v", (b.cap-b.used)>>20, b.cap>>20, err)
	}
	defer c.release()
	// acme, past half the cap and holding its one stream's share, waits.
	if d, err := b.charge("acme"); err == nil {
		d.release()
		t.Fatal("acme's second stream past half of a small cap was not refused")
	}
}
