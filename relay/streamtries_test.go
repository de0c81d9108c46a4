package relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/store"
)

// freezableConn is a test agent's connection that can be frozen, as a
// stopped process is: while frozen, nothing is read from or written to
// it (a read or write under way when it froze ends first).
type freezableConn struct {
	net.Conn
	mu     sync.Mutex    // guards thawed
	thawed chan struct{} // nil unless frozen; closed at the thaw
}

func (c *freezableConn) wait() {
	c.mu.Lock()
	ch := c.thawed
	c.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

func (c *freezableConn) Read(b []byte) (int, error) {
	c.wait()
	return c.Conn.Read(b)
}

func (c *freezableConn) Write(b []byte) (int, error) {
	c.wait()
	return c.Conn.Write(b)
}

// freeze stops the connection's reads and writes until thaw.
func (c *freezableConn) freeze() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.thawed == nil {
		c.thawed = make(chan struct{})
	}
}

// thaw lets reads and writes go on.
func (c *freezableConn) thaw() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.thawed != nil {
		close(c.thawed)
		c.thawed = nil
	}
}

// streamRecord waits for the stream record of request id and returns it.
func streamRecord(t *testing.T, r *Relay, id string) audit.Record {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		recs, err := r.dir.Store.ListAudit(context.Background(), store.AuditFilter{Kind: audit.Stream, Request: id})
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 1 {
			return recs[0]
		}
		if len(recs) > 1 || time.Now().After(deadline) {
			t.Fatalf("%d stream records of request %s, want 1", len(recs), id)
		}
	}
}

// triesOf is the detail "tried" of a stream record read from the store:
// one object per failed attempt.
func triesOf(t *testing.T, rec audit.Record) []map[string]any {
	t.Helper()
	v, ok := rec.Detail["tried"]
	if !ok {
		return nil
	}
	list, ok := v.([]any)
	if !ok {
		t.Fatalf("detail tried = %#v, want a list", v)
	}
	out := make([]map[string]any, len(list))
	for i, x := range list {
		if out[i], ok = x.(map[string]any); !ok {
			t.Fatalf("detail tried[%d] = %#v, want an object", i, x)
		}
	}
	return out
}

// TestStreamRecordNamesTries: a tenant with two agent sessions, one of
// which freezes (reads and answers nothing, as a stopped process). The
// record of a stream opened at its first attempt names the session that
// carried it and has no "tried"; that of a stream first tried on the
// frozen session, then opened on the other, names the frozen session, how
// long the attempt took and why it failed; that of a stream refused once
// every session froze names the attempts that failed.
func TestStreamRecordNamesTries(t *testing.T) {
	r := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: "127.0.0.1:0",
		StreamOpenTimeout: 6 * time.Second})
	ctx := context.Background()
	if err := r.adm.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	key, err := r.adm.AddBackend(ctx, "billing", []string{"acme"})
	if err != nil {
		t.Fatal(err)
	}
	d := &client.Dialer{Relay: r.ConnectAddr().String(), Backend: "billing", APIKey: key, Timeout: 20 * time.Second}
	dial := func() (*client.Conn, error) {
		c, err := d.DialContext(ctx, "tcp", "echo.acme.tether:7")
		if err != nil {
			return nil, err
		}
		cc, ok := c.(*client.Conn)
		if !ok {
			c.Close()
			return nil, fmt.Errorf("dial returned a %T, want a *client.Conn", c)
		}
		cc.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(cc, "ping\n"); err != nil {
			cc.Close()
			return nil, err
		}
		if line, err := bufio.NewReader(cc).ReadString('\n'); err != nil || line != "ping\n" {
			cc.Close()
			return nil, fmt.Errorf("echo: %q, %v", line, err)
		}
		return cc, nil
	}

	healthy, err := newTestAgent(t, r, "a1").connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A stream held open on a1's session: a new stream goes first to
	// the session with fewer streams, a2's.
	held, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	silent, err := newTestAgent(t, r, "a2").connect(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Opened at the first attempt, on a2's session.
	c, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	rec := streamRecord(t, r, c.RequestID)
	if rec.Outcome != audit.OutcomeOK || rec.Agent != "a2" || rec.Detail["session"] != silent.id {
		t.Errorf("record of a stream opened at the first attempt: outcome %s, agent %q, session %v; want ok, a2, %s", rec.Outcome, rec.Agent, rec.Detail["session"], silent.id)
	}
	if v, ok := rec.Detail["tried"]; ok {
		t.Errorf("record of a stream opened at the first attempt has tried = %v, want none", v)
	}

	// a2 freezes: the next stream is tried on its session first (still
	// counted healthy: its heartbeat is not due), which answers nothing;
	// once its ping goes unanswered the relay tries a1's.
	silent.conn.freeze()
	begin := time.Now()
	c, err = dial()
	if err != nil {
		t.Fatalf("stream after a2 froze: %v", err)
	}
	took := time.Since(begin)
	c.Close()
	rec = streamRecord(t, r, c.RequestID)
	if rec.Outcome != audit.OutcomeOK || rec.Agent != "a1" || rec.Detail["session"] != healthy.id {
		t.Errorf("record of a stream opened after a failed attempt: outcome %s, agent %q, session %v; want ok, a1, %s", rec.Outcome, rec.Agent, rec.Detail["session"], healthy.id)
	}
	if tries := triesOf(t, rec); len(tries) != 1 {
		t.Errorf("record of a stream opened after an attempt on the frozen session: tried = %v, want one attempt", rec.Detail["tried"])
	} else {
		try := tries[0]
		ms, _ := try["duration_ms"].(float64)
		if try["agent"] != "a2" || try["session"] != silent.id || try["relay"] != nil || ms <= 0 || time.Duration(ms)*time.Millisecond > took ||
			!strings.Contains(fmt.Sprint(try["error"]), "stopped answering") {
			t.Errorf("the failed attempt: %v; want agent a2, session %s, no relay, a duration within the %v the dial took, and an error saying it stopped answering", try, silent.id, took.Round(time.Millisecond))
		}
	}

	// a1 freezes too: the next stream is tried on its session (a2's no
	// longer counts as healthy), which answers nothing, and is refused.
	held.Close()
	healthy.conn.freeze()
	_, err = dial()
	var ref *client.Refusal
	if !errors.As(err, &ref) {
		t.Fatalf("stream with every session frozen: %v, want a refusal", err)
	}
	rec = streamRecord(t, r, ref.RequestID)
	if rec.Outcome == audit.OutcomeOK || rec.Outcome != ref.Err.Code.String() {
		t.Errorf("record of the refused stream: outcome %s, want the refusal's %s", rec.Outcome, ref.Err.Code)
	}
	tries := triesOf(t, rec)
	if len(tries) == 0 {
		t.Fatalf("record of a stream refused after attempts on a frozen session: no tried (detail %v)", rec.Detail)
	}
	for _, try := range tries {
		if try["agent"] != "a1" || try["session"] != healthy.id || fmt.Sprint(try["error"]) == "" {
			t.Errorf("a failed attempt of the refused stream: %v; want agent a1, session %s and an error", try, healthy.id)
		}
	}
}
