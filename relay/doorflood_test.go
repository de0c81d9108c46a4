package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport/tcp"
	"github.com/tetherhq/tether/relay/admin"
)

// logBuffer collects a relay's JSON log lines.
type logBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the log lines whose every field named in match has that
// value, by level.
func (b *logBuffer) lines(match map[string]string) map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]int{}
	for _, l := range strings.Split(b.buf.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil {
			continue
		}
		ok := true
		for k, v := range match {
			if fmt.Sprint(m[k]) != v {
				ok = false
			}
		}
		if ok {
			out[fmt.Sprint(m["level"])]++
		}
	}
	return out
}

// counterValue is c's value.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	c.Write(&m)
	return m.GetCounter().GetValue()
}

func debugLogger(b *logBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// A relay-side forward asks nothing of its client: a flood of
// connections from one address, each refused (the tenant's agent is not
// connected), writes a bounded number of audit records and info log
// lines. A source's first refusals are audited one by one in the
// tenant's trail and logged at info level; the rest are summed per
// source and refusal in stream records of the door forward, which with
// the first count every refusal, and logged at debug level.
func TestForwardRefusalsBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	var logs logBuffer
	r, stop := startRelay(t, Config{DataDir: dir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: Off,
		Logger: debugLogger(&logs)})
	a := openAdmin(t, dir, "acme")
	if _, err := a.AddBackend(ctx, "billing", []string{"acme/echo"}); err != nil {
		t.Fatal(err)
	}
	if err := r.SetForwards(ctx, []Forward{{Listen: "127.0.0.1:0", Target: "echo.acme", Backend: "billing"}}); err != nil {
		t.Fatal(err)
	}
	fwd := r.doors.ForwardAddrs()["127.0.0.1:0"].String()
	const n = 80
	start := time.Now()
	for range n {
		c, err := net.Dial("tcp", fwd)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil { // the relay closes it once refused
			t.Fatal(err)
		}
		c.Close()
	}
	limit := 10 + int(time.Since(start)/(5*time.Second))
	got := logs.lines(map[string]string{"msg": "refused", "code": "no_agent", "door": "forward"})
	if got["INFO"] > limit || got["INFO"]+got["DEBUG"] != n {
		t.Errorf("%d refused forward connections from one address logged %d times at info level and %d at debug; want at most %d at info, the rest at debug", n, got["INFO"], got["DEBUG"], limit)
	}
	if v := counterValue(r.metrics.Streams.WithLabelValues("acme", "", "billing", "no_agent")); v != n {
		t.Errorf("tether_streams_opened_total{tenant=acme,backend=billing,outcome=no_agent} = %v, want %d", v, n)
	}
	stop() // the sums of the interval are written as the relay stops

	recs, err := a.Audit(ctx, admin.AuditFilter{Kind: "stream", Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	var single, summed, counted, acme int
	for _, rec := range recs {
		if rec.Detail["door"] != "forward" {
			continue
		}
		if rec.Outcome != "no_agent" {
			t.Errorf("forward record with outcome %q: %+v", rec.Outcome, rec)
		}
		if rec.Tenant == "acme" {
			acme++
		}
		if c, ok := rec.Detail["count"]; ok {
			summed++
			f, _ := c.(float64)
			counted += int(f)
			continue
		}
		single++
		counted++
		// A forward names no port: its records name none either.
		if got := rec.Detail["target"]; got != "echo.acme.tether" {
			t.Errorf("refused forward connection recorded with target %v, want echo.acme.tether", got)
		}
	}
	t.Logf("%d refused forward connections: %d audit records one by one, %d summed; %d in acme's trail", n, single, summed, acme)
	if single > limit || summed > 2 || counted != n {
		t.Errorf("%d refused forward connections from one address: %d records one by one, %d summed, counting %d; want at most %d one by one, at most 2 summed, counting all", n, single, summed, counted, limit)
	}
	if acme != single+summed {
		t.Errorf("%d of the forward's %d records are in acme's trail, want all (billing has a grant for acme)", acme, single+summed)
	}
}

// fakeAgent connects to r as agent a1 of tenant acme over TLS+yamux and
// says hello; the streams r opens on it are sent to streams, never
// answered (each stays opening until the stream-open timeout). It is
// closed at the test's end.
func fakeAgent(t *testing.T, ctx context.Context, r *Relay) <-chan net.Conn {
	t.Helper()
	authority := r.auth.CA()
	id := identity.Agent{TrustDomain: r.TrustDomain(), Tenant: "acme", ID: "a1"}
	cert := recordedAgent(t, r, id, authority.Signer())
	roots := x509.NewCertPool()
	for _, rt := range authority.Roots() {
		roots.AddCert(rt.Cert)
	}
	conf := identity.AgentClientConfig(roots, r.TrustDomain(), func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil })
	conn, err := (&tls.Dialer{Config: conf}).DialContext(ctx, "tcp", r.AgentAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	mux, err := yamux.Client(conn, tcp.Config(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := mux.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if err := protocol.WriteMessage(ctl, &protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "test", OS: "linux", Arch: "amd64", BootID: "b1"}); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(ctl)
	if m, err := protocol.ReadMessage(br); err != nil || m.Type() != protocol.TypeWelcome {
		t.Fatalf("fake agent's hello: %#v, %v; want a welcome", m, err)
	}
	streams := make(chan net.Conn, 16)
	var wg sync.WaitGroup
	// It answers the relay's pings, as an agent does: a session whose
	// pings go unanswered for 2 s while a stream is open stalls, and
	// takes no new stream (the test's next one then waited, on a loaded
	// machine, for the stream-open timeout).
	wg.Go(func() {
		for {
			m, err := protocol.ReadMessage(br)
			if err != nil {
				return
			}
			if p, ok := m.(*protocol.Ping); ok {
				if protocol.WriteMessage(ctl, &protocol.Pong{Seq: p.Seq}) != nil {
					return
				}
			}
		}
	})
	wg.Go(func() {
		for {
			s, err := mux.AcceptStream()
			if err != nil {
				return
			}
			streams <- s
		}
	})
	t.Cleanup(func() {
		mux.Close()
		wg.Wait()
	})
	for deadline := time.Now().Add(10 * time.Second); r.routes.Connected("acme") == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the fake agent's session never joined the routes")
		}
	}
	return streams
}

// A forward's connections count against their source's bound on
// connections in progress until their stream opens, as the other doors'
// unauthenticated connections do: with the bound per address at 2 and
// two connections from one address waiting for their streams, a third
// from that address is closed at once, while one from another address
// is served.
func TestForwardPendingBoundPerSource(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	r := runRelay(t, Config{DataDir: dir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: Off,
		MaxFrontPendingPerAddress: 2, MaxFrontPendingPerNetwork: 100, StreamOpenTimeout: time.Minute, DrainTimeout: time.Millisecond})
	a := openAdmin(t, dir, "acme")
	if _, err := a.AddBackend(ctx, "billing", []string{"acme/echo"}); err != nil {
		t.Fatal(err)
	}
	if err := r.SetForwards(ctx, []Forward{{Listen: "127.0.0.1:0", Target: "echo.acme", Backend: "billing"}}); err != nil {
		t.Fatal(err)
	}
	fwd := r.doors.ForwardAddrs()["127.0.0.1:0"].String()
	streams := fakeAgent(t, ctx, r)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	dial := func(src string) net.Conn {
		t.Helper()
		c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}).DialContext(ctx, "tcp", fwd)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		return c
	}
	// opening waits for c's stream to reach the agent, or for the relay
	// to close c, and reports which.
	opening := func(c net.Conn) bool {
		t.Helper()
		closed := make(chan struct{})
		go func() {
			defer close(closed)
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			var b [1]byte
			c.Read(b[:])
		}()
		select {
		case <-streams:
			c.SetReadDeadline(time.Now()) // ends the read above
			<-closed
			return true
		case <-closed:
			return false
		}
	}
	for i := range 2 {
		if !opening(dial("127.0.0.1")) {
			t.Fatalf("forward connection %d from 127.0.0.1 was closed, want its stream opening", i+1)
		}
	}
	if opening(dial("127.0.0.1")) {
		t.Fatalf("a third forward connection from 127.0.0.1 while two wait for their streams reached the agent; want it closed at once (bound per address 2)")
	}
	if n := r.doors.SourceLimited.Load(); n != 1 {
		t.Errorf("SourceLimited = %d, want 1", n)
	}
	if !opening(dial("127.0.0.2")) {
		t.Fatal("a forward connection from another address was closed, want its stream opening")
	}
}
