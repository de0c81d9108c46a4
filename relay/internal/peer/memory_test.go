package peer

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/streammem"
)

// refusals records what a budget was told it refused.
type refusals struct {
	mu   sync.Mutex
	seen []string
}

func (r *refusals) add(tenant, backend, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, tenant+" "+backend+" "+reason)
}

func (r *refusals) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seen)
}

// A holding relay charges the streams other relays forward to it
// against its own stream memory cap: relay-2, capped at 10 MiB, holds one
// forwarded stream (8.5 MiB while its agent's transport is not known)
// and refuses the next with unavailable, before reading past its
// request; the entry relay then opens it, with the client's first bytes,
// through relay-3, which holds an agent of the tenant too. With relay-2
// the only holder, the entry relay answers unavailable, naming relay-2's
// cap, rather than no_agent. The refusals are told to the budget's
// counter, and once the streams end relay-2 holds nothing.
func TestHolderRefusesPastMemoryCap(t *testing.T) {
	tls := relayTLS(t, "relay-1", "relay-2", "relay-3")
	var refused refusals
	mem := streammem.New(10<<20, refused.add)
	r2 := holderCapped(t, tls[1], &fakeAgent{name: "agent-2"}, mem)
	got := &lockedBuffer{}
	r3 := holderOf(t, tls[2], &fakeAgent{name: "agent-3", sink: got})
	var h holdings
	h.set("acme",
		store.Holding{RelayID: "relay-2", Epoch: 1, PeerAddr: r2.Addr().String(), Agents: 2}, // preferred
		store.Holding{RelayID: "relay-3", Epoch: 1, PeerAddr: r3.Addr().String(), Agents: 1})
	r, _ := entry(t, tls[0], &h, 15*time.Second)
	hdr := protocol.StreamHeader{Service: "db", Backend: "backend:billing"}

	hdr.RequestID = "first"
	first, err := r.Dial(context.Background(), "acme", hdr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Abandon()
	if first.Relay != "relay-2" {
		t.Fatalf("first stream opened through %q, want relay-2", first.Relay)
	}
	// The entry relay holds a forwarded stream's link stream, yamux.
	if n := streammem.Of(first.Stream); n != streammem.Yamux {
		t.Errorf("the entry relay charges a forwarded stream %d bytes, want %d (streammem.Yamux: the link's stream)", n, streammem.Yamux)
	}

	hdr.RequestID = "second"
	early := fixedEarly("hello")
	second, err := r.Dial(context.Background(), "acme", hdr, early)
	if err != nil {
		t.Fatalf("second stream, past relay-2's cap, with relay-3 holding acme too: %v; want it opened through relay-3", err)
	}
	defer second.Abandon()
	if second.Relay != "relay-3" {
		t.Fatalf("second stream opened through %q, want relay-3 (relay-2 is at its 10 MiB cap)", second.Relay)
	}
	waitUntil(t, "relay-3's agent gets the client's first bytes", func() bool { return got.String() == string(early) })
	if n := mem.Held(); n != streammem.MaxForwarded {
		t.Fatalf("relay-2 holds %d bytes for its forwarded stream after refusing another, want %d (streammem.MaxForwarded)", n, streammem.MaxForwarded)
	}
	if got, want := refused.get(), []string{"acme billing cap"}; !slices.Equal(got, want) {
		t.Fatalf("refusals counted: %q, want %q", got, want)
	}

	// relay-2 alone: the entry relay tells its client unavailable, with
	// relay-2's reason.
	var only holdings
	only.set("acme", store.Holding{RelayID: "relay-2", Epoch: 1, PeerAddr: r2.Addr().String(), Agents: 1})
	alone, _ := entry(t, tls[0], &only, 15*time.Second)
	hdr.RequestID = "third"
	if tun, err := alone.Dial(context.Background(), "acme", hdr, nil); err == nil {
		tun.Abandon()
		t.Fatal("stream past relay-2's cap, relay-2 the only holder: opened")
	} else if !errors.Is(err, protocol.ErrUnavailable) || !strings.Contains(err.Error(), "max_stream_memory 10 MiB") {
		t.Fatalf("stream past relay-2's cap, relay-2 the only holder: %v; want unavailable naming relay-2's cap", err)
	}

	first.Abandon()
	waitUntil(t, "relay-2 gives back its stream's charge", func() bool { return mem.Held() == 0 })
	// The memory serves again.
	hdr.RequestID = "fourth"
	tun, err := alone.Dial(context.Background(), "acme", hdr, nil)
	if err != nil {
		t.Fatalf("stream through relay-2 once its stream ended: %v", err)
	}
	tun.Abandon()
	waitUntil(t, "relay-2 gives back the last stream's charge", func() bool { return mem.Held() == 0 })
}

// A forwarded stream's charge is held while it opens and while it is
// open, and given back however it ends: its agent's open abandoned
// because the entry relay gave up, its tenant having no agent at the
// holding relay, the entry relay resetting the open stream.
func TestHolderReleasesStreamMemory(t *testing.T) {
	tls := relayTLS(t, "relay-1", "relay-2", "relay-3", "relay-4")
	slowMem, emptyMem, mem := streammem.New(1<<30, nil), streammem.New(1<<30, nil), streammem.New(1<<30, nil)
	slow := &fakeAgent{name: "agent-2", delay: time.Minute, abandoned: make(chan struct{}, 1)}
	r2 := holderCapped(t, tls[1], slow, slowMem)
	r3 := emptyHolderCapped(t, tls[2], emptyMem)
	r4 := holderCapped(t, tls[3], &fakeAgent{name: "agent-4"}, mem)
	hdr := protocol.StreamHeader{Service: "db", Backend: "backend:billing", RequestID: "r"}
	via := func(id string, s *Server) *holdings {
		var h holdings
		h.set("acme", store.Holding{RelayID: id, Epoch: 1, PeerAddr: s.Addr().String(), Agents: 1})
		return &h
	}

	// The entry relay gives up while relay-2's agent opens the stream.
	r, _ := entry(t, tls[0], via("relay-2", r2), 15*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	failed := make(chan error, 1)
	go func() {
		tun, err := r.Dial(ctx, "acme", hdr, nil)
		if err == nil {
			tun.Abandon()
		}
		failed <- err
	}()
	waitUntil(t, "relay-2 charges the stream its agent opens", func() bool { return slowMem.Held() == streammem.MaxForwarded })
	cancel()
	if err := <-failed; err == nil {
		t.Fatal("stream opened, want the entry relay to give up")
	}
	<-slow.abandoned
	waitUntil(t, "relay-2 gives back the charge of a stream whose open was abandoned", func() bool { return slowMem.Held() == 0 })

	// relay-3 has no agent of acme: refused, and nothing held.
	r, _ = entry(t, tls[0], via("relay-3", r3), 15*time.Second)
	if tun, err := r.Dial(context.Background(), "acme", hdr, nil); err == nil {
		tun.Abandon()
		t.Fatal("stream through a relay with no agent of acme opened")
	}
	waitUntil(t, "relay-3 gives back the charge of a stream it refused", func() bool { return emptyMem.Held() == 0 })

	// An open stream holds its charge until the entry relay resets it.
	r, _ = entry(t, tls[0], via("relay-4", r4), 15*time.Second)
	tun, err := r.Dial(context.Background(), "acme", hdr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tun.Stream.Write([]byte("query")); err != nil {
		t.Fatal(err)
	}
	if n := mem.Held(); n != streammem.MaxForwarded {
		t.Fatalf("relay-4 holds %d bytes for an open stream, want %d", n, streammem.MaxForwarded)
	}
	transport.Abort(tun.Stream)
	tun.End()
	waitUntil(t, "relay-4 gives back the charge of a stream reset by the entry relay", func() bool { return mem.Held() == 0 })
}
