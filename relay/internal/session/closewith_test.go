package session

import (
	"bytes"
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport/tcp"
	"github.com/tetherhq/tether/protocol/transport/transporttest"
)

// TestCloseWithEndsABlockedControlWrite: closing a session whose agent
// reads nothing — a control write is blocked on the stream's flow
// control, holding the write lock — returns within about the Reject's
// deadline, rather than waiting behind that write for ever. Revocations
// and root retirements close sessions on the change feed, which every
// stream of the relay waits on.
func TestCloseWithEndsABlockedControlWrite(t *testing.T) {
	ac, rc := transporttest.TCPPair(t)
	agent, err := tcp.Client(ac, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	relay, err := tcp.Server(rc, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	actl, err := agent.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer actl.Close()
	if _, err := actl.Write([]byte{0}); err != nil { // the relay accepts it
		t.Fatal(err)
	}
	rctl, err := relay.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := benchConn(testServer(), "acme", "agent")
	c.sess, c.ctl = relay, rctl

	// The agent never reads its control stream: once the stream's window
	// is used up, a Send blocks holding the write lock. The first n
	// offers fit in it and the next one blocks.
	offer := &protocol.UpdateOffer{ID: "x", Version: "1.0.0", Manifest: make([]byte, 40<<10)}
	var wire bytes.Buffer
	if err := protocol.WriteMessage(&wire, offer); err != nil {
		t.Fatal(err)
	}
	n := int(tcp.Config(nil).MaxStreamWindowSize) / wire.Len()
	completed := make(chan struct{}, n+1)
	sendDone := make(chan error, 1)
	go func() {
		for {
			if err := c.Send(offer); err != nil {
				sendDone <- err
				return
			}
			completed <- struct{}{}
		}
	}()
	for range n {
		select {
		case <-completed:
		case err := <-sendDone:
			t.Fatalf("send: %v", err)
		case <-ctx.Done():
			t.Fatalf("%d offers were not written in 10 s", n)
		}
	}
	for c.ctlMu.TryLock() { // until the next one holds the lock
		c.ctlMu.Unlock()
		runtime.Gosched()
	}

	closed := make(chan struct{})
	start := time.Now()
	go func() {
		c.CloseWith(protocol.Errorf(protocol.CodeUnauthenticated, "revoked"))
		close(closed)
	}()
	select {
	case <-closed:
		t.Logf("closed in %v", time.Since(start).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("CloseWith still waiting behind a blocked control write after 5 s")
	}
	if len(completed) != 0 {
		t.Fatalf("%d offers fitted in the window, want %d", n+len(completed), n)
	}
	if err := <-sendDone; err == nil {
		t.Fatal("the blocked send returned no error")
	}
}
