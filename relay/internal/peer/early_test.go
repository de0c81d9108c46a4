package peer

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/route"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/streammem"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// fixedEarly is a client's first bytes, all arrived (route.Early).
type fixedEarly []byte

func (e fixedEarly) Attach(st io.Writer, opening []byte) error {
	_, err := st.Write(append(opening, e...))
	return err
}

func (e fixedEarly) Sent() bool { return len(e) > 0 }

// lockedBuffer is a bytes.Buffer safe for a writer and a reader at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// emptyHolder runs a relay's peer listener whose router holds no agent:
// every forwarded stream is refused no_agent, as by a relay whose agents
// of the tenant have just left it.
func emptyHolder(t *testing.T, tlsPeer *trust.Peer) *Server {
	t.Helper()
	return emptyHolderCapped(t, tlsPeer, nil)
}

// emptyHolderCapped is emptyHolder with the stream memory budget mem.
func emptyHolderCapped(t *testing.T, tlsPeer *trust.Peer, mem *streammem.Budget) *Server {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	router := route.NewRouter(route.Config{Table: route.NewTable(), StreamOpenTimeout: 15 * time.Second,
		Dir: &datadir.Dir{Path: t.TempDir()}, Logger: log, Now: time.Now})
	srv, err := NewServer(ServerConfig{Listen: "127.0.0.1:0", TLS: tlsPeer, Router: router,
		HandshakeTimeout: watchdog, IdleTimeout: time.Minute, Memory: mem, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Run(ctx)
	}()
	t.Cleanup(func() {
		srv.Close()
		cancel()
		<-done
	})
	return srv
}

// A holding relay answers a forwarded stream before it reads anything
// past the request, and a refusal (no_agent: its agents of the tenant
// just left it) means the client's first bytes that followed the request
// reached no agent. The entry relay then tries another relay holding the
// tenant's agents, with the first bytes, as it does for a stream without
// them. Before, a stream whose first bytes had gone with the refused
// request was not tried elsewhere (as if the agent might have passed them
// on) and failed with no_agent, although relay-3 held an agent of acme.
func TestRefusedForwardWithFirstBytesTriedElsewhere(t *testing.T) {
	tls := relayTLS(t, "relay-1", "relay-2", "relay-3")
	r2 := emptyHolder(t, tls[1])
	got := &lockedBuffer{}
	r3 := holderOf(t, tls[2], &fakeAgent{name: "agent-3", sink: got})
	var h holdings
	h.set("acme",
		store.Holding{RelayID: "relay-2", Epoch: 1, PeerAddr: r2.Addr().String(), Agents: 2}, // preferred
		store.Holding{RelayID: "relay-3", Epoch: 1, PeerAddr: r3.Addr().String(), Agents: 1})
	r, _ := entry(t, tls[0], &h, 15*time.Second)

	early := fixedEarly("\x00\x00\x00\x08\x04\xd2\x16\x2f") // a client that speaks first (psql's SSLRequest)
	tun, err := r.Dial(context.Background(), "acme", protocol.StreamHeader{Service: "db", RequestID: "early"}, early)
	if err != nil {
		t.Fatalf("stream with first bytes refused by relay-2, held by relay-3 too: %v; want it opened through relay-3", err)
	}
	defer tun.Abandon()
	if tun.Relay != "relay-3" {
		t.Fatalf("stream opened through %q, want relay-3", tun.Relay)
	}
	// What the client sends once the stream is open follows its first
	// bytes, in order.
	more := strings.Repeat("after the opening ", 4096) // 72 KiB
	if _, err := tun.Stream.Write([]byte(more)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "relay-3's agent gets the client's first bytes, then the rest", func() bool { return got.String() == string(early)+more })
}

// An entry relay that gives up on a forwarded stream before the holding
// relay's agent answered (its client went away, its budget ran out)
// resets the stream; the holding relay stops opening it on its agent at
// once, rather than going on for its own whole stream-open budget: a
// backend that gives up and retries against a slow service otherwise
// piles up opens on the tenant's agent that nobody waits for, each
// dialing the service, and goroutines on the holding relay.
func TestHolderGivesUpWithEntry(t *testing.T) {
	tls := relayTLS(t, "relay-1", "relay-2")
	agent := &fakeAgent{name: "agent-2", delay: time.Minute, abandoned: make(chan struct{}, 1), opening: make(chan struct{}, 1)}
	r2 := holderOf(t, tls[1], agent)
	var h holdings
	h.set("acme", store.Holding{RelayID: "relay-2", Epoch: 1, PeerAddr: r2.Addr().String(), Agents: 1})
	r, _ := entry(t, tls[0], &h, 15*time.Second)

	// The entry relay gives up once relay-2 is opening the stream on its
	// agent (a fixed time could end before the link was even up).
	ctx, cancel := context.WithTimeout(context.Background(), watchdog)
	defer cancel()
	go func() {
		select {
		case <-agent.opening:
			cancel()
		case <-ctx.Done():
		}
	}()
	if tun, err := r.Dial(ctx, "acme", protocol.StreamHeader{Service: "db", RequestID: "gone"}, nil); err == nil {
		tun.Abandon()
		t.Fatal("stream opened, want the entry relay to give up before relay-2's agent answered")
	}
	gaveUp := time.Now()
	select {
	case <-agent.abandoned:
		t.Logf("relay-2 gave up opening the stream on its agent %v after the entry relay did", time.Since(gaveUp).Round(time.Millisecond))
	case <-time.After(watchdog):
		t.Fatalf("relay-2 still opening the stream on its agent %v after the entry relay gave up on it", watchdog)
	}
}
