package session

import (
	"bufio"
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport"
)

// pipeSession is an agent session whose control stream is one end of a
// net.Pipe; it has no other streams.
type pipeSession struct {
	ctl  net.Conn
	done chan struct{}
	once sync.Once
}

func (s *pipeSession) OpenStream(context.Context) (transport.Stream, error) {
	return nil, errors.New("no streams")
}

func (s *pipeSession) AcceptStream(ctx context.Context) (transport.Stream, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (s *pipeSession) Close() error {
	s.once.Do(func() { close(s.done); s.ctl.Close() })
	return nil
}

func (s *pipeSession) Done() <-chan struct{} { return s.done }

// pipeStream is a net.Pipe end as a control stream.
type pipeStream struct{ net.Conn }

func (s pipeStream) CloseWrite() error { return s.Close() }

// TestRenewalDoesNotHoldTheReader: a renewal is answered on a goroutine of
// its own, so that while the store holds it the control-stream reader
// still answers the agent's pings; a second renewal meanwhile is refused
// at once as unavailable; once the first is answered the agent may ask
// again; and run, when the session ends, waits for a renewal in flight.
func TestRenewalDoesNotHoldTheReader(t *testing.T) {
	relayEnd, agentEnd := net.Pipe()
	defer agentEnd.Close()
	sess := &pipeSession{ctl: relayEnd, done: make(chan struct{})}
	c := &Conn{srv: testServer(), id: identity.Agent{Tenant: "acme", ID: "a1"}, sess: sess, ctl: pipeStream{relayEnd}, log: discardLog}
	c.lastHeard.Store(time.Now().UnixNano())

	var (
		started  = make(chan struct{}, 1)
		release  = make(chan struct{}, 1)
		returned atomic.Int32
	)
	renew := func(*protocol.RenewRequest) *protocol.RenewResponse {
		started <- struct{}{}
		<-release // the store does not answer until then
		returned.Add(1)
		return &protocol.RenewResponse{Certificate: "new"}
	}
	runDone := make(chan error, 1)
	go func() { runDone <- c.run(context.Background(), bufio.NewReader(c.ctl), testHeartbeat, renew) }()

	br := bufio.NewReader(agentEnd)
	send := func(m protocol.Message) {
		t.Helper()
		agentEnd.SetWriteDeadline(time.Now().Add(5 * time.Second)) // a reader held by the renewal reads nothing
		if err := protocol.WriteMessage(agentEnd, m); err != nil {
			t.Fatal(err)
		}
	}
	read := func() protocol.Message {
		t.Helper()
		agentEnd.SetReadDeadline(time.Now().Add(5 * time.Second))
		m, err := protocol.ReadMessage(br)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}

	send(&protocol.RenewRequest{CSR: []byte("csr")})
	<-started
	send(&protocol.Ping{Seq: 7})
	if m, ok := read().(*protocol.Pong); !ok || m.Seq != 7 {
		t.Fatalf("answer to a ping during a renewal: %#v, want pong 7", m)
	}
	send(&protocol.RenewRequest{CSR: []byte("csr")})
	m, ok := read().(*protocol.RenewResponse)
	if !ok || !errors.Is(m.Err(), protocol.ErrUnavailable) {
		t.Fatalf("answer to a second renewal in flight: %#v, want an unavailable refusal", m)
	}
	release <- struct{}{}
	if m, ok := read().(*protocol.RenewResponse); !ok || m.Certificate != "new" {
		t.Fatalf("answer to the renewal: %#v, want the certificate", m)
	}

	// Answered: the next request is served. The session ends while it is
	// in flight: run returns once it is answered.
	send(&protocol.RenewRequest{CSR: []byte("csr")})
	<-started
	agentEnd.Close()
	select {
	case err := <-runDone:
		t.Fatalf("run returned (%v) while a renewal was in flight", err)
	case <-sess.Done():
	}
	release <- struct{}{}
	err := <-runDone
	if got := returned.Load(); got != 2 {
		t.Fatalf("run returned (%v) with %d renewals answered, want 2", err, got)
	}
	if reason := disconnectReason(err); reason != reasonAgentClosed {
		t.Errorf("session ended as %q (%v), want %q", reason, err, reasonAgentClosed)
	}
}
