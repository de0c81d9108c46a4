package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent/accesslog"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport/tcp"
)

// helloAgainst runs the agent's hello over a yamux pair on a pipe against
// a relay that answers with w, and returns the session and hello's error.
func helloAgainst(t *testing.T, a *Agent, w *protocol.Welcome) (*session, error) {
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
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ctl, err := rs.AcceptStream(ctx)
		if err != nil {
			done <- err
			return
		}
		if _, err := protocol.ReadMessage(bufio.NewReader(ctl)); err != nil {
			done <- err
			return
		}
		done <- protocol.WriteMessage(ctl, w)
	}()
	s := a.newSession(as, "relay:7443", TransportTCP, "configured", a.log)
	t.Cleanup(s.close)
	herr := s.hello(context.Background())
	if err := <-done; err != nil {
		t.Fatalf("relay side: %v", err)
	}
	return s, herr
}

// A relay's Welcome whose session id is not 1 to 64 letters, digits,
// '.', '_', '-' or ':' is refused, with an error that says why: the id
// goes into every line of the access log, whose reader takes no field
// over 1 KiB, and into the status and logs, where a newline forges rows.
// The ids relays send (16 hex digits, as relay/internal/credential's
// NewRequestID makes them) pass.
func TestWelcomeSessionIDChecked(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	for _, c := range []struct {
		id string
		ok bool
	}{
		{"0123456789abcdef", true},
		{"r1-7", true},
		{strings.Repeat("s", 64), true},
		{strings.Repeat("s", 65), false},
		{strings.Repeat("<", 10000), false}, // 60 KB of JSON: within a control message
		{"", false},
		{"s\nbackend:billing", false},
		{"s\x1b[8m", false},
		{"s p", false},
	} {
		s, err := helloAgainst(t, a, &protocol.Welcome{ProtocolVersion: protocol.Version, SessionID: c.id, HeartbeatMillis: 1000})
		switch {
		case c.ok && err != nil:
			t.Errorf("session id %q: hello failed: %v", c.id, err)
		case c.ok && s.welcome.SessionID != c.id:
			t.Errorf("session id %q: the session has %q", c.id, s.welcome.SessionID)
		case !c.ok && err == nil:
			t.Errorf("session id of %d bytes %.40q: welcome accepted, want refused", len(c.id), c.id)
		case !c.ok && (!strings.Contains(err.Error(), "welcome refused: session id") || len(err.Error()) > 200):
			t.Errorf("session id of %d bytes: error %.300q, want a short one saying the welcome's session id was refused", len(c.id), err)
		case !c.ok && s.welcome.SessionID != "":
			t.Errorf("session id of %d bytes: kept by the session although refused", len(c.id))
		}
	}
}

// Whatever a relay's header and Welcome hold, the record of a served
// stream reaches the access log in a line its reader takes and --verify
// finds intact: the writer clips every field to the reader's bounds.
func TestAccessLogLineOfHostileFieldsReadable(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	svcs := map[string]Service{"db": {Address: echoService(t)}}
	a.services.Store(&svcs)
	stopLog := runAccessLog(t, a)
	s, rs := relayPair(t, a)
	// A session id as an older agent took it, unchecked: the relay's Welcome.
	s.welcome.SessionID = strings.Repeat("\x01", 20000)
	ctl := strings.Repeat("\x01", protocol.MaxBackendLen)
	st, err := openStream(t, s, rs, protocol.StreamHeader{Service: "db", Backend: ctl, RequestID: "r-exfil"})
	if err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	st.Close()
	s.close()
	stopLog()
	seen := 0
	err = accesslog.Read(a.cfg.AccessLogPath(), func(f string, n int, e accesslog.Entry, _ []byte, err error) error {
		if err != nil {
			t.Errorf("%s:%d: the reader skips a line the agent wrote: %v", f, n, err)
		} else if e.Request == "r-exfil" && e.Type == accesslog.TypeStream {
			seen++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != 1 {
		t.Errorf("%d lines for the served stream r-exfil, want 1", seen)
	}
	o, err := AccessLogVerifyOptions(a.cfg, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if res, err := accesslog.Verify(o); err != nil || !res.Intact {
		t.Errorf("verify: %+v, %v; want intact", res, err)
	}
}

// A relay refusing streams by the thousand (they cost it nothing) cannot
// push the record of a stream the agent served out of the access log:
// beyond a burst, refusals are counted in `refusals` lines, so 3000 of
// them with the longest fields a header carries write a few hundred KB
// rather than megabytes, and rotation keeps the served stream's line. The
// status tells the tenant when rotation deletes young records.
func TestRefusalFloodKeepsServedRecord(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	a.cfg.AccessLog = AccessLogConfig{MaxSize: 1 << 20, MaxFiles: 2}
	a.alog = a.newAccessLog()
	svcs := map[string]Service{"db": {Address: echoService(t)}}
	a.services.Store(&svcs)
	stopLog := runAccessLog(t, a)
	s, rs := relayPair(t, a)
	st, err := openStream(t, s, rs, protocol.StreamHeader{Service: "db", Backend: "backend:exfil", RequestID: "r-exfil"})
	if err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	st.Close()
	service := strings.Repeat("\x01", protocol.MaxServiceLen)
	backend := strings.Repeat("\x01", protocol.MaxBackendLen)
	const flood = 3000
	for i := range flood {
		h := protocol.StreamHeader{Service: service, Backend: backend, RequestID: fmt.Sprintf("%064d", i)}
		if _, err := openStream(t, s, rs, h); err == nil {
			t.Fatal("a stream to a service not in the allowlist was accepted")
		}
	}
	s.close()
	stopLog()
	var served, refused, counted uint64
	err = accesslog.Read(a.cfg.AccessLogPath(), func(f string, n int, e accesslog.Entry, _ []byte, err error) error {
		switch {
		case err != nil:
			return fmt.Errorf("%s:%d: %w", f, n, err)
		case e.Request == "r-exfil" && e.Type == accesslog.TypeStream:
			served++
		case e.Type == accesslog.TypeStream && e.End == accesslog.EndRefused:
			refused++
		case e.Type == accesslog.TypeRefusals:
			counted += e.Count
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if served != 1 {
		t.Errorf("the served stream r-exfil has %d lines after %d refusals, want 1", served, flood)
	}
	if refused > accesslog.DefaultRefusalBurst+1 || refused+counted != flood {
		t.Errorf("%d refusal lines and %d refusals counted; want at most %d lines and %d in all", refused, counted, accesslog.DefaultRefusalBurst+1, flood)
	}
	files, err := accesslog.Files(a.cfg.AccessLogPath())
	if err != nil || len(files) != 1 {
		t.Errorf("files %v (%v): want the one, never rotated", files, err)
	}
	o, err := AccessLogVerifyOptions(a.cfg, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if res, err := accesslog.Verify(o); err != nil || !res.Intact {
		t.Errorf("verify: %+v, %v", res, err)
	}
	if w := a.Status().AccessLogWarning; w != "" {
		t.Errorf("status warns %q without rotation", w)
	}
}

// A stream the agent accepts has an open line in the access log within
// moments, while it runs: if the agent is killed before the stream ends
// (here: the log stops under it), verify lists it as opened and not ended.
func TestAccessLogOpenLineWhileStreamRuns(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	svcs := map[string]Service{"db": {Address: echoService(t)}}
	a.services.Store(&svcs)
	stopLog := runAccessLog(t, a)
	s, rs := relayPair(t, a)
	st, err := openStream(t, s, rs, protocol.StreamHeader{Service: "db", Backend: "backend:exfil", RequestID: "r-long"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := roundTrip(st, "COPY customers TO STDOUT"); err != nil {
		t.Fatal(err)
	}
	// The writer commits within its CommitDelay: poll the file, the only
	// observable.
	var open accesslog.Entry
	waitFor(t, 10*time.Second, "the open line of r-long on disk", func() error {
		err := accesslog.Read(a.cfg.AccessLogPath(), func(_ string, _ int, e accesslog.Entry, _ []byte, _ error) error {
			if e.Request == "r-long" {
				open = e
			}
			return nil
		})
		if err == nil && open.Request == "" {
			err = errNotYet
		}
		return err
	})
	if open.Type != "open" || open.Service != "db" || open.Backend != "backend:exfil" || open.Session != "sess-1" || open.Relay != "relay:7443" {
		t.Errorf("the line of the running stream: %+v; want an open line of db for backend:exfil on sess-1", open)
	}
	stopLog() // the agent is killed: the stream's end is never written
	o, err := AccessLogVerifyOptions(a.cfg, "", "")
	if err != nil {
		t.Fatal(err)
	}
	res, err := accesslog.Verify(o)
	if err != nil || !res.Intact {
		t.Fatalf("verify: %+v, %v", res, err)
	}
	if res.UnclosedCount != 1 || len(res.Unclosed) != 1 || res.Unclosed[0].Request != "r-long" {
		t.Errorf("verify: unclosed %d %+v; want r-long", res.UnclosedCount, res.Unclosed)
	}
}

// The allowlist is looked up by the exact name the header carries: no
// spelling of a listed name other than itself (case, a trailing dot or
// space, a NUL, a zero-width or full-width character, a name at the
// header's bound) reaches its service, nor does the update service's
// name when no release is being fetched. Each is refused as
// unknown_service (the update service: not_allowed) and the agent dials
// nothing.
func TestServiceNameSpellingsRefused(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	var dials atomic.Int32
	a.cfg.DialService = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return nil, fmt.Errorf("dialled %s", addr)
	}
	svcs := map[string]Service{"db": {Address: "127.0.0.1:1"}}
	a.services.Store(&svcs)
	s, rs := relayPair(t, a)
	for _, name := range []string{
		"DB", "Db", "db.", "db ", " db", "db\x00", "db\u200b", "\uff44\uff42", "db:5432", "db/", "d\u0431",
		"db" + strings.Repeat("x", protocol.MaxServiceLen-2), protocol.UpdateService,
	} {
		_, err := openStream(t, s, rs, protocol.StreamHeader{Service: name, Backend: "backend:billing", RequestID: "r-1"})
		var pe *protocol.Error
		if !errors.As(err, &pe) || pe.Code != protocol.CodeUnknownService && pe.Code != protocol.CodeNotAllowed {
			t.Errorf("service %q: %v, want refused as unknown_service or not_allowed", name, err)
		}
	}
	s.close()
	if n := dials.Load(); n != 0 {
		t.Errorf("the agent dialled %d times for names not in its allowlist", n)
	}
}
