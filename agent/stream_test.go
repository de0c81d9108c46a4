package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent/accesslog"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
)

// openStreamEarly opens a stream as a relay-side forward does: the header
// and the client's first bytes in one write, then the agent's reply.
func openStreamEarly(t *testing.T, s *session, rs transport.Session, h protocol.StreamHeader, early string) transport.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := rs.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write(append(b, early...)); err != nil {
		t.Fatal(err)
	}
	ast, err := s.t.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.wg.Go(func() { s.a.handleStream(s, ast) })
	st.SetDeadline(time.Now().Add(10 * time.Second))
	rep, err := protocol.ReadReply(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Fatalf("stream %s refused: %v", h.RequestID, err)
	}
	return st
}

// TestFirstBytesAnswered: the client's first bytes, sent with the stream's
// opening, reach the service before the agent answers, and the service's
// answer comes with the OK (it is there as soon as the OK has been read);
// a service that waits for more than the first bytes still gets it and
// answers; a service that resets the connection on the first bytes is
// logged as reset; every byte is in the access log.
func TestFirstBytesAnswered(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	echoAddr := listen(t, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
	twoLines := listen(t, func(c net.Conn) { // answers once it has two lines
		r := bufio.NewReader(c)
		l1, _ := r.ReadString('\n')
		l2, _ := r.ReadString('\n')
		fmt.Fprintf(c, "%d %d\n", len(l1), len(l2))
	})
	resetAddr := listen(t, func(c net.Conn) { // reads a byte, then resets
		c.Read(make([]byte, 1))
		c.(*net.TCPConn).SetLinger(0)
	})
	svcs := map[string]Service{"echo": {Address: echoAddr}, "two": {Address: twoLines}, "reset": {Address: resetAddr}}
	a.services.Store(&svcs)
	stopLog := runAccessLog(t, a)
	s, rs := relayPair(t, a)

	st := openStreamEarly(t, s, rs, protocol.StreamHeader{Service: "echo", Backend: "backend:billing", RequestID: "r-echo"}, "hello")
	st.SetDeadline(time.Unix(1, 0)) // only what has already arrived
	buf := make([]byte, 16)
	if n, err := st.Read(buf); string(buf[:n]) != "hello" {
		t.Errorf("right after the OK, read %q, %v; want the service's answer %q, sent with it", buf[:n], err, "hello")
	}
	st.SetDeadline(time.Now().Add(10 * time.Second))
	st.CloseWrite()
	if rest, err := io.ReadAll(st); err != nil || len(rest) != 0 {
		t.Errorf("after the answer: %q, %v; want the end", rest, err)
	}
	st.Close()

	st = openStreamEarly(t, s, rs, protocol.StreamHeader{Service: "two", Backend: "backend:billing", RequestID: "r-two"}, "first\n")
	io.WriteString(st, "second line\n")
	if got, err := bufio.NewReader(st).ReadString('\n'); err != nil || got != "6 12\n" {
		t.Errorf("service waiting for two lines answered %q, %v; want %q", got, err, "6 12\n")
	}
	st.Close()

	st = openStreamEarly(t, s, rs, protocol.StreamHeader{Service: "reset", Backend: "backend:billing", RequestID: "r-reset"}, "x")
	io.Copy(io.Discard, st) // ends when the agent passes the reset on
	st.Close()
	s.close() // waits for the stream handlers
	stopLog()

	got := map[string]accesslog.Entry{}
	err := accesslog.Read(a.cfg.AccessLogPath(), func(file string, n int, e accesslog.Entry, _ []byte, err error) error {
		if err != nil {
			return fmt.Errorf("%s:%d: %w", file, n, err)
		}
		if e.Type == accesslog.TypeStream {
			got[e.Request] = e
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		req, end string
		to, from int64
	}{
		{"r-echo", accesslog.EndClosed, 5, 5},
		{"r-two", accesslog.EndClosed, 18, 5},
		{"r-reset", accesslog.EndReset, 1, 0},
	} {
		e := got[w.req]
		if e.Code != "ok" || e.End != w.end || e.BytesToService != w.to || e.BytesFromService != w.from {
			t.Errorf("line for %s: %+v; want ok, end %s, bytes %d/%d", w.req, e, w.end, w.to, w.from)
		}
	}
}
