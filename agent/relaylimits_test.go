package agent

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// TestHeartbeatOf: the heartbeat a relay's Welcome sets is kept within
// 1 s and 5 min.
func TestHeartbeatOf(t *testing.T) {
	for ms, want := range map[int64]time.Duration{
		-5: 10 * time.Second, 0: 10 * time.Second, 1: time.Second, 999: time.Second,
		1500: 1500 * time.Millisecond, 10_000: 10 * time.Second, 1 << 50: 5 * time.Minute,
	} {
		if got := heartbeatOf(protocol.Welcome{HeartbeatMillis: ms}); got != want {
			t.Errorf("heartbeat_ms %d: %v, want %v", ms, got, want)
		}
	}
}

// TestHeartbeatFromRelayClamped: a relay whose Welcome says heartbeat_ms 1
// and that answers no ping neither has the agent ping every millisecond
// nor makes it drop the session after 3 ms of quiet.
func TestHeartbeatFromRelayClamped(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	s, relayCtl := testSession(t, a)
	s.welcome.HeartbeatMillis = 1
	s.lastHeard.Store(time.Now().UnixNano()) // as after the Welcome
	var pings atomic.Int64
	read := make(chan struct{})
	go func() {
		defer close(read)
		br := bufio.NewReader(relayCtl)
		for {
			m, err := protocol.ReadMessage(br)
			if err != nil {
				return
			}
			if _, ok := m.(*protocol.Ping); ok {
				pings.Add(1)
			}
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan endReason, 1)
	start := time.Now()
	go func() { done <- s.serve(ctx) }()
	// No event marks a session that stays: watch it for a while.
	select {
	case why := <-done:
		t.Fatalf("the session ended (%d) after %v: %v", why, time.Since(start).Round(time.Microsecond), s.endErr())
	case <-time.After(500 * time.Millisecond):
	}
	if n := pings.Load(); n > 2 {
		t.Errorf("%d pings in 500 ms, want the first one only (a heartbeat of at least 1 s)", n)
	}
	cancel()
	<-done
	s.close()
	relayCtl.Close()
	<-read
}

// TestRenewNowRateLimited: a relay that sends RenewNow again and again
// makes the agent renew once a minute at most: one request reaches the
// renewal loop, then none until a minute has passed.
func TestRenewNowRateLimited(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	h := &countingHandler{}
	a.log = slog.New(h)
	s, relayCtl := testSession(t, a)
	s.log = a.log
	s.wg.Go(s.readLoop)
	var asked atomic.Int64
	stop := make(chan struct{})
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for {
			select {
			case <-a.renewNow:
				asked.Add(1)
			case <-stop:
				return
			}
		}
	}()
	const n = 50
	for range n {
		if err := protocol.WriteMessage(relayCtl, &protocol.RenewNow{Root: "bogus"}); err != nil {
			t.Fatal(err)
		}
	}
	// The pong to this ping comes after the agent handled every RenewNow.
	if err := protocol.WriteMessage(relayCtl, &protocol.Ping{Seq: 7}); err != nil {
		t.Fatal(err)
	}
	relayCtl.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(relayCtl)
	for {
		m, err := protocol.ReadMessage(br)
		if err != nil {
			t.Fatal(err)
		}
		if p, ok := m.(*protocol.Pong); ok && p.Seq == 7 {
			break
		}
	}
	close(stop)
	<-drained
	if got := asked.Load(); got != 1 {
		t.Errorf("%d of %d RenewNow reached the renewal loop, want 1", got, n)
	}
	if got := h.count("relay asks for an early certificate renewal"); got != 1 {
		t.Errorf("%d info lines for %d RenewNow, want 1", got, n)
	}
	if !a.earlyRenewalAllowed(time.Now().Add(earlyRenewalGap)) {
		t.Error("a RenewNow a minute later is ignored too")
	}
	s.close()
}

// TestRelayListLogRateLimited: a relay that changes its list again and
// again gets one info line about it every 10 s, not one per list.
func TestRelayListLogRateLimited(t *testing.T) {
	h := &countingHandler{}
	v := newRelayView("acme/a1", Backoff{Initial: time.Second, Max: time.Second}, slog.New(h), func() {})
	s := &session{}
	for i := range 40 {
		v.setList(s, []protocol.RelayInfo{{ID: fmt.Sprintf("r%d", i%2), Addr: fmt.Sprintf("198.51.100.%d:7443", i%2+1)}})
	}
	if got := h.count("relays of the cluster"); got != 1 {
		t.Errorf("%d info lines for 40 changed lists, want 1", got)
	}
}

// TestRefusalLogRateLimited: a relay that opens stream after stream for a
// service the agent does not expose gets 10 info lines about it every 10 s,
// not one per stream; the next line at info level says how many were not.
func TestRefusalLogRateLimited(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	a.cfg.AccessLog.Disabled = true
	a.alog = nil
	h := &countingHandler{}
	a.log = slog.New(h)
	s, rs := relayPair(t, a)
	const n = 40
	for i := range n {
		if _, err := openStream(t, s, rs, protocol.StreamHeader{Service: "nosuch", Backend: "backend:x", RequestID: fmt.Sprint("r", i)}); err == nil {
			t.Fatal("accepted")
		}
	}
	const msg = "refused: service not in this agent's allowlist"
	if got := h.count(msg); got != logBurst {
		t.Errorf("%d info lines for %d refused streams, want %d", got, n, logBurst)
	}
	// The window ends: the next line goes at info level and says how many
	// were held back.
	s.refusalLog.mu.Lock()
	s.refusalLog.start = s.refusalLog.start.Add(-logWindow)
	s.refusalLog.mu.Unlock()
	if _, err := openStream(t, s, rs, protocol.StreamHeader{Service: "nosuch", Backend: "backend:x", RequestID: "last"}); err == nil {
		t.Fatal("accepted")
	}
	if got := h.count(msg); got != logBurst+1 {
		t.Errorf("%d info lines after the window, want %d", got, logBurst+1)
	}
	h.mu.Lock()
	last := h.lines[len(h.lines)-1]
	h.mu.Unlock()
	if want := fmt.Sprintf("not_logged=%d", n-logBurst); !strings.Contains(last, want) {
		t.Errorf("the line after the window: %q, want it to say %s", last, want)
	}
}
