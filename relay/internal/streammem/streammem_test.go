package streammem

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
	b := New(40*mib, nil)
	take := func(tenant string, n int64) error {
		t.Helper()
		if r := b.reserve(tenant, n); r != nil {
			return r
		}
		return nil
	}
	reason := func(err error) string {
		var mr *Refusal
		if errors.As(err, &mr) {
			return mr.Reason
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
	if !errors.Is(err, protocol.ErrUnavailable) || reason(err) != ReasonShare || !strings.Contains(err.Error(), `tenant "acme"`) || !strings.Contains(err.Error(), "max_stream_memory 40 MiB") {
		t.Fatalf("acme past three quarters of the cap: %v (reason %q); want unavailable for its share, naming the tenant and the cap", err, reason(err))
	}
	// globex gets its share, up to the cap.
	for i := range 2 {
		if err := take("globex", 5*mib); err != nil {
			t.Fatalf("globex's stream %d while acme holds three quarters of the cap: %v; want it charged", i+1, err)
		}
	}
	// The cap is full: another tenant is refused by the cap.
	if err := take("initech", mib); !errors.Is(err, protocol.ErrUnavailable) || reason(err) != ReasonCap || !strings.Contains(err.Error(), "at its stream memory cap") {
		t.Fatalf("a third tenant at the full cap: %v (reason %q); want unavailable for the cap", err, reason(err))
	}
	// acme gives back 10 MiB: globex, at its share, is refused past it
	// with room left under the cap; initech, holding nothing, is not.
	b.release("acme", 10*mib)
	if err := take("globex", mib); reason(err) != ReasonShare {
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
	none := New(0, nil)
	if err := none.reserve("acme", 1<<40); err != nil || none.used != 0 {
		t.Fatalf("no cap: %v, used %d", err, none.used)
	}
}

// With a cap under four streams' worst case (the settings allow one down
// to one stream's), a tenant holding nothing still gets a stream while
// there is room under the cap: its share is at least one stream.
func TestMemoryShareAtLeastOneStream(t *testing.T) {
	b := New(24<<20, nil)
	a, err := b.Charge("acme", "billing")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Release()
	c, err := b.Charge("globex", "payroll")
	if err != nil {
		t.Fatalf("globex, holding nothing, refused with %d MiB of %d MiB free: %v", (b.cap-b.used)>>20, b.cap>>20, err)
	}
	defer c.Release()
	// acme, past half the cap and holding its one stream's share, waits.
	if d, err := b.Charge("acme", "billing"); err == nil {
		d.Release()
		t.Fatal("acme's second stream past half of a small cap was not refused")
	}
}

// A stream forwarded by another relay is charged, while its agent's
// stream opens, the worst case of both its receive windows (the link's
// yamux stream and a QUIC agent stream) and two copy buffers, and then
// the link's and its agent's transport's: it shares the cap, and a
// tenant's share, with the front doors' streams.
func TestForwardedCharge(t *testing.T) {
	const mib = 1 << 20
	if MaxForwarded != 8*mib+512<<10 || ForwardedYamux != 4*mib+512<<10 || ForwardedQUIC != MaxForwarded {
		t.Fatalf("forwarded charges %d (agent over TCP), %d (QUIC), %d (unknown); want 4.5, 8.5 and 8.5 MiB", ForwardedYamux, ForwardedQUIC, MaxForwarded)
	}
	var refusals []string
	b := New(20*mib, func(tenant, backend, reason string) { refusals = append(refusals, tenant+" "+backend+" "+reason) })
	front, err := b.Charge("acme", "billing")
	if err != nil {
		t.Fatal(err)
	}
	fwd, err := b.ChargeForwarded("acme", "billing")
	if err != nil {
		t.Fatalf("acme's forwarded stream with %d MiB of 20 MiB held: %v", b.Held()>>20, err)
	}
	if got := b.HeldBy("acme"); got != Max+MaxForwarded {
		t.Fatalf("acme holds %d, want %d (a front door's stream and a forwarded one, both opening)", got, Max+MaxForwarded)
	}
	// 15 MiB held of 20: a third at its largest passes the cap.
	if _, err := b.ChargeForwarded("globex", "payroll"); !errors.Is(err, protocol.ErrUnavailable) {
		t.Fatalf("globex's forwarded stream past the cap: %v; want unavailable", err)
	}
	if len(refusals) != 1 || refusals[0] != "globex payroll cap" {
		t.Fatalf("refusals told: %q, want one for globex, payroll, cap", refusals)
	}
	fwd.Settle(nil) // an agent stream of no known transport: the largest
	if got := b.Held(); got != Max+MaxForwarded {
		t.Fatalf("held %d after settling on an unknown transport, want %d", got, Max+MaxForwarded)
	}
	fwd.Release()
	fwd.Release()
	front.Release()
	if b.Held() != 0 || len(b.held) != 0 {
		t.Fatalf("all given back: used %d, held %v; want nothing", b.Held(), b.held)
	}
	// No budget: nothing is counted or refused.
	var none *Budget
	c, err := none.ChargeForwarded("acme", "billing")
	if err != nil {
		t.Fatal(err)
	}
	c.Settle(nil)
	c.Release()
	if none.Held() != 0 {
		t.Fatal("a nil budget holds something")
	}
}
