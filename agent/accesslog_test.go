package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	quicgo "github.com/quic-go/quic-go"

	"github.com/tetherhq/tether/agent/accesslog"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/tcp"
)

// relayPair is an agent session over a yamux pair on an in-memory pipe
// and the relay's end of it, on which the test opens streams as a relay.
func relayPair(t *testing.T, a *Agent) (*session, transport.Session) {
	t.Helper()
	ac, rc := net.Pipe()
	as, err := tcp.Client(ac, nil)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := tcp.Server(rc, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	s := a.newSession(as, "relay:7443", TransportTCP, "configured", a.log)
	s.welcome.SessionID = "sess-1"
	t.Cleanup(s.close)
	return s, rs
}

// openStream opens a stream as the relay does: header, then the agent's
// reply. The agent serves it on s. The stream is returned open when the
// agent accepted it.
func openStream(t *testing.T, s *session, rs transport.Session, h protocol.StreamHeader) (transport.Stream, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := rs.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := protocol.WriteStreamHeader(st, h); err != nil {
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
		st.Close()
		return nil, err
	}
	return st, nil
}

// listen runs a TCP service on loopback until the test ends.
func listen(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// runAccessLog runs the agent's access-log writer as Run does; the
// returned function stops it (it drains first).
func runAccessLog(t *testing.T, a *Agent) func() {
	t.Helper()
	a.alog.Open()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { a.alog.Run(ctx) })
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// Every stream the agent serves or refuses gets a line in its access
// log, with the relay's request id, the backend the relay asserted, the
// service, the code, how it ended and the bytes; the log verifies against
// the agent's own CA roots and identity.
func TestAccessLogRecordsStreams(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	echoAddr := listen(t, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
	resetAddr := listen(t, func(c net.Conn) { // reads a byte, then resets
		c.Read(make([]byte, 1))
		c.(*net.TCPConn).SetLinger(0)
	})
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := closed.Addr().String()
	closed.Close()
	svcs := map[string]Service{
		"web":   {Address: echoAddr, Backends: []string{"billing"}},
		"reset": {Address: resetAddr},
		"dead":  {Address: deadAddr},
	}
	a.services.Store(&svcs)
	stopLog := runAccessLog(t, a)
	s, rs := relayPair(t, a)

	st, err := openStream(t, s, rs, protocol.StreamHeader{Service: "web", Backend: "backend:billing", RequestID: "r-ok"})
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("hello"))
	st.CloseWrite()
	if b, err := io.ReadAll(st); err != nil || string(b) != "hello" {
		t.Fatalf("echo: %q, %v", b, err)
	}
	st.Close()
	st, err = openStream(t, s, rs, protocol.StreamHeader{Service: "reset", Backend: "backend:billing", RequestID: "r-reset"})
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("x"))
	io.Copy(io.Discard, st) // ends when the agent passes the reset on
	st.Close()
	for _, h := range []protocol.StreamHeader{
		{Service: "nosuch", Backend: "backend:billing", RequestID: "r-unknown"},
		{Service: "web", Backend: "backend:other", RequestID: "r-not-allowed"},
		{Service: "dead", Backend: "backend:billing", RequestID: "r-dead"},
	} {
		if _, err := openStream(t, s, rs, h); err == nil {
			t.Fatalf("stream %s: accepted, want refused", h.RequestID)
		}
	}
	s.close() // waits for the stream handlers
	stopLog()

	got := map[string]accesslog.Entry{}
	err = accesslog.Read(a.cfg.AccessLogPath(), func(file string, n int, e accesslog.Entry, _ []byte, err error) error {
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
		req, service, backend, code, end string
		to, from                         int64
	}{
		{"r-ok", "web", "backend:billing", "ok", accesslog.EndClosed, 5, 5},
		{"r-reset", "reset", "backend:billing", "ok", accesslog.EndReset, 1, 0},
		{"r-unknown", "nosuch", "backend:billing", "unknown_service", accesslog.EndRefused, 0, 0},
		{"r-not-allowed", "web", "backend:other", "not_allowed", accesslog.EndRefused, 0, 0},
		{"r-dead", "dead", "backend:billing", "target_unreachable", accesslog.EndRefused, 0, 0},
	} {
		e, ok := got[w.req]
		if !ok {
			t.Errorf("no line for request %s; lines: %v", w.req, got)
			continue
		}
		if e.Service != w.service || e.Backend != w.backend || e.Code != w.code || e.End != w.end || e.BytesToService != w.to || e.BytesFromService != w.from ||
			e.Relay != "relay:7443" || e.Session != "sess-1" {
			t.Errorf("line for %s: %+v; want service %s, backend %s, code %s, end %s, bytes %d/%d, relay:7443, sess-1", w.req, e, w.service, w.backend, w.code, w.end, w.to, w.from)
		}
		if (w.end == accesslog.EndRefused) != (e.Message != "") {
			t.Errorf("line for %s: message %q", w.req, e.Message)
		}
	}
	if len(got) != 5 {
		t.Errorf("%d stream lines, want 5", len(got))
	}
	o, err := AccessLogVerifyOptions(a.cfg, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if o.Roots == nil || o.Agent != "spiffe://tether.internal/tenant/acme/agent/a1" {
		t.Fatalf("verify options: %+v, want the state directory's roots and identity", o)
	}
	res, err := accesslog.Verify(o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Intact || res.Checkpoints != 1 || res.Verified != 1 || !res.CleanStop {
		t.Fatalf("verify: %+v, want intact, its one checkpoint verified", res)
	}
}

// blockedPath is an access-log path no one, root included, can create: its
// directory would be under a regular file.
func blockedPath(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "not-a-directory")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(f, "access-log", "access.log")
}

// With access_log.required, an agent whose log cannot be written refuses
// new streams with unavailable, saying why; without it, it serves them.
// Either way the status and the report say that the log cannot be
// written.
func TestAccessLogUnwritable(t *testing.T) {
	echoAddr := listen(t, func(c net.Conn) { io.Copy(c, c) })
	for _, required := range []bool{true, false} {
		t.Run(fmt.Sprintf("required=%v", required), func(t *testing.T) {
			root := newTestRoot(t, "tether.internal", "root")
			a := enrolled(t, root, root)
			svcs := map[string]Service{"web": {Address: echoAddr}}
			a.services.Store(&svcs)
			a.cfg.AccessLog = AccessLogConfig{Path: blockedPath(t), Required: required}
			a.alog = a.newAccessLog()
			runAccessLog(t, a)

			st := a.Status()
			if st.AccessLog != a.cfg.AccessLog.Path || st.AccessLogError == "" || a.Report().AccessLogError == "" {
				t.Fatalf("status: access_log %q, access_log_error %q; report: %q; want the path and the error in both", st.AccessLog, st.AccessLogError, a.Report().AccessLogError)
			}
			s, rs := relayPair(t, a)
			c, err := openStream(t, s, rs, protocol.StreamHeader{Service: "web", Backend: "backend:billing", RequestID: "r1"})
			if required {
				if !errors.Is(err, protocol.ErrUnavailable) {
					t.Fatalf("stream: %v, want refused as unavailable", err)
				}
				var pe *protocol.Error
				if errors.As(err, &pe); !strings.Contains(pe.Message, "access log") {
					t.Fatalf("refusal message %q does not name the access log", pe.Message)
				}
				return
			}
			if err != nil {
				t.Fatalf("stream: %v, want served (access_log.required is off)", err)
			}
			c.Close()
		})
	}
}

// Records of streams the agent could not write to its access log when it
// stopped are not lost unsaid: the stop records them in the state
// directory, and the next start that can write the log writes a lost line
// counting them, says so in its start line, and removes the record;
// verify counts them, and before that start reports them as lost at the
// stop.
func TestAccessLogLossAtStopRecorded(t *testing.T) {
	echoAddr := listen(t, func(c net.Conn) { io.Copy(c, c) })
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	svcs := map[string]Service{"web": {Address: echoAddr}}
	a.services.Store(&svcs)
	logDir := filepath.Join(t.TempDir(), "logs")
	a.cfg.AccessLog = AccessLogConfig{Path: filepath.Join(logDir, "access.log")}
	serve := func(req string) {
		t.Helper()
		s, rs := relayPair(t, a)
		st, err := openStream(t, s, rs, protocol.StreamHeader{Service: "web", Backend: "backend:billing", RequestID: req})
		if err != nil {
			t.Fatal(err)
		}
		st.Close()
		s.close() // waits for the stream's handler: both its records are queued
	}
	a.alog = a.newAccessLog()
	stop := runAccessLog(t, a)
	serve("r-1")
	stop()

	// The log's directory replaced by a file: nothing can be written
	// (root included) while the next run serves a stream.
	if err := os.Rename(logDir, logDir+".aside"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(logDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a.alog = a.newAccessLog()
	stop = runAccessLog(t, a)
	serve("r-2") // an open and an end record, neither written
	if a.alog.Err() == nil {
		t.Fatal("the access log under a file reports no error")
	}
	stop()
	if err := os.Remove(logDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(logDir+".aside", logDir); err != nil {
		t.Fatal(err)
	}
	o, err := AccessLogVerifyOptions(a.cfg, "", "")
	if err != nil {
		t.Fatal(err)
	}
	res, err := accesslog.Verify(o)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.LostAtStop) != 1 || res.LostAtStop[0].Lost != 2 {
		t.Errorf("verify before the next start: lost at stop %+v, want the stop's 2 records", res.LostAtStop)
	}

	a.alog = a.newAccessLog()
	stop = runAccessLog(t, a)
	stop()
	var lost uint64
	var note string
	err = accesslog.Read(a.cfg.AccessLogPath(), func(file string, n int, e accesslog.Entry, _ []byte, err error) error {
		if err != nil {
			return fmt.Errorf("%s:%d: %w", file, n, err)
		}
		switch e.Type {
		case accesslog.TypeLost:
			lost += e.Lost
		case accesslog.TypeStart:
			note = e.Note
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if lost != 2 {
		t.Errorf("lost lines count %d records, want the 2 the stop could not write", lost)
	}
	if !strings.Contains(note, "could not write 2 records") || strings.Contains(note, "killed or crashed") {
		t.Errorf("the last start line's note: %q; want the 2 records lost at the last stop, and no crash", note)
	}
	if _, err := os.Stat(filepath.Join(a.cfg.StateDir, "access-log.lost")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the record of the stop after the next start: %v, want it removed", err)
	}
	if res, err = accesslog.Verify(o); err != nil || !res.Intact || res.Lost != 2 || len(res.LostAtStop) != 0 {
		t.Errorf("verify: %v, intact %v, lost %d, lost at stop %+v; want intact, 2 lost, none pending", err, res.Intact, res.Lost, res.LostAtStop)
	}
}

// Run starts the writer, logs its start and, when stopped, ends the log
// with the checkpoint of a clean stop; the writer is gone when Run
// returns (goleak checks the package).
func TestRunWritesTheAccessLog(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	a.cfg.Relays, a.cfg.Transport, a.cfg.NoFileWatch = []string{closed.Addr().String()}, TransportTCP, true
	closed.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	path := a.cfg.AccessLogPath()
	deadline := time.Now().Add(10 * time.Second)
	for { // no event says the start line is on disk: poll the file
		if b, _ := os.ReadFile(path); strings.Contains(string(b), `"type":"start"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no start line in the access log within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	o, err := AccessLogVerifyOptions(a.cfg, "", "")
	if err != nil {
		t.Fatal(err)
	}
	res, err := accesslog.Verify(o)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := LogKeyFingerprint(a.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Intact || !res.CleanStop || res.Lines != 3 || res.KeyLines != 1 || res.Pinned != fp || res.FirstKey != fp {
		t.Fatalf("verify: %+v, want the start line, its key line and a stop checkpoint, from the state directory's key %s", res, fp)
	}
}

func TestStreamEnd(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, accesslog.EndClosed},
		{transport.ErrIdle, accesslog.EndIdle},
		{fmt.Errorf("read: %w", syscall.ECONNRESET), accesslog.EndReset},
		{yamux.ErrConnectionReset, accesslog.EndReset},
		{&quicgo.StreamError{StreamID: 4, ErrorCode: 1, Remote: true}, accesslog.EndReset},
		{fmt.Errorf("read: %w: %w", transport.ErrClosed, yamux.ErrSessionShutdown), accesslog.EndCut},
		{net.ErrClosed, accesslog.EndCut},
		{&quicgo.ApplicationError{Remote: true}, accesslog.EndCut},
		{errors.New("something else"), accesslog.EndError},
	} {
		if got := streamEnd(tc.err); got != tc.want {
			t.Errorf("streamEnd(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

func TestAccessLogConfig(t *testing.T) {
	c, err := ParseConfig([]byte("state_dir: /x\naccess_log: {path: /logs/a.log, max_size: 2KiB, max_files: 3, checkpoint_interval: 5s, required: true}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.AccessLog; got != (AccessLogConfig{Path: "/logs/a.log", MaxSize: 2048, MaxFiles: 3, CheckpointInterval: 5 * time.Second, Required: true}) {
		t.Errorf("access_log: got %+v", got)
	}
	if c, _ := ParseConfig([]byte("state_dir: /x\n")); c.AccessLogPath() != filepath.Join("/x", "access-log", "access.log") {
		t.Errorf("default path %s", c.AccessLogPath())
	}
	for _, tc := range []struct{ yaml, want string }{
		{"access_log: {rotate: 1}", "field rotate not found"},
		{"access_log: {max_size: 10}", "access_log.max_size 10: want 1KiB to 1TiB"},
		{"access_log: {max_size: 10 parsecs}", `unknown unit "parsecs"`},
		{"access_log: {max_size: [1]}", "a size is a number of bytes"},
		{"access_log: {max_files: 1}", "access_log.max_files 1: want 2"},
		{"access_log: {checkpoint_interval: 10ms}", "access_log.checkpoint_interval 10ms: want at least 1s"},
		{"access_log: {disabled: true, required: true}", "required and disabled contradict"},
	} {
		_, err := ParseConfig([]byte("state_dir: /x\n" + tc.yaml + "\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.yaml, err, tc.want)
		}
	}
	for in, want := range map[string]ByteSize{"1024": 1024, "10MiB": 10 << 20, "10 MiB": 10 << 20, "1GB": 1e9, "4KB": 4000} {
		if got, err := ParseByteSize(in); err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5MiB", "99999999999999999999", "9999999999999GiB"} {
		if _, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) accepted", in)
		}
	}
}
