package peer

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// TestStoreStatus: a relay asks its peers whether they reach the store.
// One that heartbeat lately says how long ago; one that never did says
// so; a listener that is not there is an error, not an answer.
func TestStoreStatus(t *testing.T) {
	ps := relayTLS(t, "relay-1", "relay-2", "relay-4")
	beat := time.Now().Add(-1500 * time.Millisecond)
	fresh := serveBeating(t, ps[1], func() time.Time { return beat })
	never := serveBeating(t, ps[2], func() time.Time { return time.Time{} })
	gone, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	goneAddr := gone.Addr().String()
	gone.Close()

	l := newLinks(t, ps[0], &holdings{})
	ctx, cancel := context.WithTimeout(context.Background(), watchdog)
	defer cancel()
	got := l.StoreStatus(ctx, []store.Relay{
		{ID: "relay-2", Epoch: 1, PeerAddr: fresh.Addr().String()},
		{ID: "relay-3", Epoch: 1}, // no peer listener: not asked
		{ID: "relay-4", Epoch: 1, PeerAddr: never.Addr().String()},
		{ID: "relay-5", Epoch: 1, PeerAddr: goneAddr},
	})
	if len(got) != 3 {
		t.Fatalf("%d answers, want 3 (relays with a peer address): %+v", len(got), got)
	}
	if a := got[0]; a.Relay != "relay-2" || a.Err != nil || !a.Known || !a.Beat || a.Age < 1500*time.Millisecond || a.Age > watchdog {
		t.Errorf("answer of a relay that heartbeat 1.5 s ago: %+v, want known, beat, age 1.5 s or a little more", a)
	}
	if a := got[1]; a.Relay != "relay-4" || a.Err != nil || !a.Known || a.Beat {
		t.Errorf("answer of a relay that never heartbeat: %+v, want known, not beat", a)
	}
	if a := got[2]; a.Relay != "relay-5" || a.Err == nil || a.Known {
		t.Errorf("answer of a relay whose listener is gone: %+v, want an error, not known", a)
	}
}

// A relay of an earlier version answers a status request as a request
// of a version it does not know: the asker reads "does not say".
func TestStoreStatusEarlierVersion(t *testing.T) {
	var req bytes.Buffer
	if err := writeStatusRequest(&req); err != nil {
		t.Fatal(err)
	}
	// What an earlier relay's readRequest made of it.
	var ans writeBuf
	if err := writeAnswer(&ans, protocol.ReplyFor(protocol.Errorf(protocol.CodeBadRequest, "%v: version %d", errBadRequest, req.Bytes()[0])), ""); err != nil {
		t.Fatal(err)
	}
	age, beat, known, err := readStatusAnswer(bytes.NewReader(ans))
	if err != nil || known || beat || age != 0 {
		t.Fatalf("an earlier relay's refusal read as age %v, beat %v, known %v, err %v; want not known, no error", age, beat, known, err)
	}
}

// A peer whose heartbeat time is ahead of its clock (a time without a
// monotonic reading, and a wall clock that went back since its last
// heartbeat) cannot say how long ago it wrote: it answers that it does
// not say, not "age 0", which would read as reaching the store right
// now however long ago it really last wrote.
func TestStoreStatusClockStepBack(t *testing.T) {
	ps := relayTLS(t, "relay-1", "relay-2")
	beat := time.Now().Add(10 * time.Minute) // the clock went back 10 min after the write
	srv := serveBeating(t, ps[1], func() time.Time { return beat })
	l := newLinks(t, ps[0], &holdings{})
	ctx, cancel := context.WithTimeout(context.Background(), watchdog)
	defer cancel()
	got := l.StoreStatus(ctx, []store.Relay{{ID: "relay-2", Epoch: 1, PeerAddr: srv.Addr().String()}})
	if len(got) != 1 {
		t.Fatalf("%d answers, want 1: %+v", len(got), got)
	}
	if a := got[0]; a.Known || a.Beat || a.Age != 0 || a.Err != nil {
		t.Errorf("answer of a relay whose clock went back: %+v, want not known (it does not say), no error", a)
	}
}

// A negative age is encoded as a refusal, read as "does not say".
func TestStatusAnswerNegativeAge(t *testing.T) {
	var b writeBuf
	if err := writeStatusAnswer(&b, -time.Second, true); err != nil {
		t.Fatal(err)
	}
	age, beat, known, err := readStatusAnswer(bytes.NewReader(b))
	if err != nil || known || beat || age != 0 {
		t.Fatalf("a negative age read as age %v, beat %v, known %v, err %v; want not known, no error", age, beat, known, err)
	}
}

// serveBeating runs a peer listener whose relay last heartbeat at
// last(), until the test ends.
func serveBeating(t *testing.T, tlsPeer *trust.Peer, last func() time.Time) *Server {
	t.Helper()
	srv, err := NewServer(ServerConfig{Listen: "127.0.0.1:0", TLS: tlsPeer, HandshakeTimeout: watchdog, IdleTimeout: time.Minute,
		LastHeartbeat: last, Logger: slog.New(slog.DiscardHandler)})
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
