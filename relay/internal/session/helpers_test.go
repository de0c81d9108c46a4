package session

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/relay/internal/route"
)

var discardLog = slog.New(slog.DiscardHandler)

// testHeartbeat is the heartbeat of testServer's sessions.
const testHeartbeat = 10 * time.Second

// testServer is a server without listeners: enough for its sessions' own
// bookkeeping.
func testServer() *Server {
	return &Server{cfg: Config{Heartbeat: testHeartbeat, Logger: discardLog, Now: time.Now}, log: discardLog, set: newSet(route.NewTable(), nil)}
}

// benchSession is an agent session that is always up and whose streams
// answer every stream header with an OK reply at once, so that only the
// relay's own work is measured.
type benchSession struct{ done chan struct{} }

func newBenchSession() *benchSession { return &benchSession{done: make(chan struct{})} }

func (s *benchSession) OpenStream(context.Context) (transport.Stream, error) {
	return &okStream{}, nil
}

func (s *benchSession) AcceptStream(ctx context.Context) (transport.Stream, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (s *benchSession) Close() error          { return nil }
func (s *benchSession) Done() <-chan struct{} { return s.done }

// okStream reads as the agent's OK reply to a stream header; writes are
// discarded.
type okStream struct{ off int }

var okReply = []byte{1, byte(protocol.CodeOK), 0, 0} // version, code, empty message

func (s *okStream) Read(p []byte) (int, error) {
	if s.off == len(okReply) {
		return 0, io.EOF
	}
	n := copy(p, okReply[s.off:])
	s.off += n
	return n, nil
}

func (s *okStream) Write(p []byte) (int, error)     { return len(p), nil }
func (s *okStream) CloseWrite() error               { return nil }
func (s *okStream) Close() error                    { return nil }
func (s *okStream) SetDeadline(time.Time) error     { return nil }
func (s *okStream) SetReadDeadline(time.Time) error { return nil }

// benchConn is a connected, healthy session of srv, of an agent of tenant.
func benchConn(srv *Server, tenant, id string) *Conn {
	c := &Conn{srv: srv, id: identity.Agent{TrustDomain: "bench.test", Tenant: tenant, ID: id}, sess: newBenchSession(), transport: "quic", log: discardLog}
	c.lastHeard.Store(time.Now().UnixNano())
	return c
}
