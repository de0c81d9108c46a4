package relay

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	dto "github.com/prometheus/client_model/go"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport/tcp"
	"github.com/tetherhq/tether/relay/client"
)

// outageRelay is a relay on PostgreSQL reached through a proxy that the
// test can pause (the store down for it), with short cluster timings: a
// relay alone on its store has no other to ask, and finds the store down
// for every relay as soon as it has lost it past DeadAfter.
type outageRelay struct {
	*Relay
	proxy *pgtest.Proxy
	logs  *logBuffer
	key   string // backend billing's API key (a grant for acme)
}

func startOutageRelay(t *testing.T, grace time.Duration) *outageRelay {
	t.Helper()
	pg := pgtest.Start(t)
	kek := make([]byte, 32)
	rand.Read(kek)
	r := startOutageRelayOn(t, pg, kek, "relay-1", grace)
	ctx := context.Background()
	if err := r.adm.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	key, err := r.adm.AddBackend(ctx, "billing", []string{"acme"})
	if err != nil {
		t.Fatal(err)
	}
	r.key = key
	// The change feed tells the relay of the backend just added, and the
	// relay then forgets what it cached of it (a change may be a new key
	// or a revocation). A stream before that would cache the backend only
	// to have it forgotten, and a store cut after it would leave no
	// credential to serve from within the grace: wait for the feed first.
	r.waitFeedPast(t, time.Now())
	return r
}

// waitFeedPast waits until the relay has read the change feed, and
// applied what it read, from a read that began after at.
func (r *outageRelay) waitFeedPast(t *testing.T, at time.Time) {
	t.Helper()
	for range 2 { // the second read began after the first was applied
		deadline := time.Now().Add(10 * time.Second)
		for !r.feedReadAt.Load().After(at) {
			if time.Now().After(deadline) {
				t.Fatal("the relay read no change feed within 10 s")
			}
			time.Sleep(10 * time.Millisecond)
		}
		at = time.Now()
	}
}

// startOutageRelayOn starts relay id of a cluster on pg (kek its CA's
// key-encryption key), with a peer listener.
// startOutagePair starts relays 1 and 2 of a cluster on one PostgreSQL,
// each through a proxy of its own, with the grace a minute, tenant acme
// and backend billing (its key in both), and waits until each lists the
// other as live.
func startOutagePair(t *testing.T) (r1, r2 *outageRelay) {
	t.Helper()
	pg := pgtest.Start(t)
	kek := make([]byte, 32)
	rand.Read(kek)
	r1 = startOutageRelayOn(t, pg, kek, "relay-1", time.Minute)
	ctx := context.Background()
	if err := r1.adm.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	key, err := r1.adm.AddBackend(ctx, "billing", []string{"acme"})
	if err != nil {
		t.Fatal(err)
	}
	r1.key = key
	r2 = startOutageRelayOn(t, pg, kek, "relay-2", time.Minute)
	r2.key = key
	for deadline := time.Now().Add(20 * time.Second); len(r2.member.Live()) < 2 || len(r1.member.Live()) < 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("relays 1 and 2 do not list each other as live")
		}
	}
	return r1, r2
}

func startOutageRelayOn(t *testing.T, pg *pgtest.Server, kek []byte, id string, grace time.Duration) *outageRelay {
	t.Helper()
	proxy := pgtest.NewProxy(t, pg.Addr())
	logs := &logBuffer{}
	r := runRelay(t, Config{DataDir: t.TempDir(), Store: pg.DSNFor(proxy.Addr), CAKEK: kek, RelayID: id, PeerListen: "127.0.0.1:0",
		AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: "127.0.0.1:0",
		ClusterHeartbeat: 100 * time.Millisecond, ClusterDeadAfter: 600 * time.Millisecond, StaleAfter: time.Second,
		StoreOutageGrace: grace, backendCacheTTL: 500 * time.Millisecond, ChangePoll: 100 * time.Millisecond,
		HandshakeTimeout: 8 * time.Second, StreamOpenTimeout: 5 * time.Second, DrainTimeout: 100 * time.Millisecond,
		Logger: debugLogger(logs)})
	t.Cleanup(proxy.Resume) // the relay stops (cleanups run last first) with its store back
	return &outageRelay{Relay: r, proxy: proxy, logs: logs}
}

// dial opens a stream to acme's echo service as billing and checks that
// it echoes.
func (r *outageRelay) dial(t *testing.T) error {
	t.Helper()
	d := &client.Dialer{Relay: r.ConnectAddr().String(), Backend: "billing", APIKey: r.key, Timeout: 15 * time.Second}
	c, err := d.DialContext(context.Background(), "tcp", "echo.acme.tether:7")
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "ping\n" {
		return fmt.Errorf("echo: %q, %v", line, err)
	}
	return nil
}

// cut pauses the store's proxy and waits until the relay has gone
// StaleAfter without confirming it is current, and has found that no
// other relay reaches the store (there is none).
func (r *outageRelay) cut(t *testing.T) time.Time {
	t.Helper()
	// A relay that has not written its first heartbeat has not joined
	// the cluster: nobody counts its agents, and watchStore waits for
	// the join, so the store cut before it is never found down for every
	// relay. The cut comes after it.
	for deadline := time.Now().Add(20 * time.Second); r.member.LastHeartbeat().IsZero(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the relay wrote no heartbeat within 20 s of its start")
		}
	}
	r.proxy.Pause()
	cut := time.Now()
	for deadline := time.Now().Add(30 * time.Second); !r.downForAll.Load() || r.staleFor() <= r.cfg.StaleAfter; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			var stacks strings.Builder
			pprof.Lookup("goroutine").WriteTo(&stacks, 2)
			t.Fatalf("30 s after the store was cut: stale for %v, down for all %v (last heartbeat %v ago, isolated %v, live %d relays); the goroutines:\n%s",
				r.staleFor(), r.downForAll.Load(), time.Since(r.member.LastHeartbeat()).Round(time.Millisecond), r.isolated.Load(), len(r.member.Live()), stacks.String())
		}
	}
	return cut
}

// TestStoreOutageGrace: the store goes down for every relay (a relay
// alone on it: nobody else to ask). Past StaleAfter, and past the
// backend cache's TTL, a backend opens a new stream through the relay
// (it used to be refused with unavailable, "this relay has not reached
// its store … and cannot confirm it is current"); an agent whose
// connection is cut is admitted again, with the certificate it renewed
// over its session before the outage, from the record read at its
// earlier admission and again at the renewal (it used to be refused:
// its record is read at every admission); an agent revoked before the
// outage is still refused. The
// grace is logged once as it begins and once as it ends, shown by the
// gauge and /debug/tether, and ends when the store is back.
func TestStoreOutageGrace(t *testing.T) {
	r := startOutageRelay(t, time.Minute)
	ctx := context.Background()
	a1 := newTestAgent(t, r.Relay, "a1")
	a2 := newTestAgent(t, r.Relay, "a2")
	s1, err := a1.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := a2.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.dial(t); err != nil {
		t.Fatalf("a stream before the outage: %v", err)
	}
	// a1 renews its certificate over its session (renewals are not in
	// the change feed): it comes back with the new one.
	a1.renew(t, s1)
	// Revoked before the outage: its session closes, and its record
	// kept from its admission is dropped.
	if _, err := r.adm.RevokeAgent(ctx, "a2", "lost laptop"); err != nil {
		t.Fatal(err)
	}
	s2.waitClosed(t)

	cut := r.cut(t)
	t.Logf("stale, the store down for every relay, %v after the cut", time.Since(cut).Round(time.Millisecond))
	// The backend's credential was last read from the store before the
	// cut, longer ago than the cache's TTL.
	if age := time.Since(cut); age <= r.cfg.backendCacheTTL {
		t.Fatalf("only %v since the cut, want more than the backend cache's TTL", age)
	}
	if err := r.dial(t); err != nil {
		t.Fatalf("a new stream %v after the store went down for every relay: %v, want it served from what the relay last read", time.Since(cut).Round(time.Millisecond), err)
	}
	if !r.Stats().StoreOutageGrace {
		t.Error("/debug/tether's store_outage_grace is false while the relay serves from what it last read")
	}
	if g := gaugeValue(t, r.Relay, "tether_store_outage_grace"); g != 1 {
		t.Errorf("tether_store_outage_grace %v while the relay serves from what it last read, want 1", g)
	}
	if err := r.ready(ctx); err != nil {
		t.Errorf("not ready while it serves from what it last read: %v", err)
	}
	if n := counterOf(t, r.Relay, "tether_store_outage_stale_credentials_total"); n < 1 {
		t.Errorf("tether_store_outage_stale_credentials_total %v after a backend was authenticated from its credential past the TTL, want at least 1", n)
	}

	// a1's connection is cut; it connects again, and is admitted from
	// the record kept.
	s1.close()
	s1.waitClosed(t)
	s1, err = a1.connect(ctx)
	if err != nil {
		t.Fatalf("agent a1, admitted before the outage, connecting again during it: %v, want it admitted from the record read then", err)
	}
	if n := r.logs.count("admitted an agent from the record read at its last admission here"); n != 1 {
		t.Errorf("%d lines of an agent admitted from its record kept, want 1", n)
	}
	if err := r.dial(t); err != nil {
		t.Fatalf("a new stream through a1's new session: %v", err)
	}
	// a2, revoked before the outage, is refused.
	if _, err := a2.connect(ctx); err == nil {
		t.Fatal("agent a2, revoked before the outage, was admitted during it")
	} else {
		t.Logf("revoked agent a2 during the outage: %v", err)
	}

	r.proxy.Resume()
	for deadline := time.Now().Add(30 * time.Second); r.storeOutage() || r.staleFor() > r.cfg.StaleAfter; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the relay does not reach its store again 30 s after it came back")
		}
	}
	r.logs.wait(t, "the store outage grace ends: this relay reaches its store again")
	if err := r.dial(t); err != nil {
		t.Fatalf("a new stream once the store is back: %v", err)
	}
	if n := r.logs.count("the store is down for every relay this relay can ask"); n != 1 {
		t.Errorf("the grace's beginning logged %d times, want once", n)
	}
	if n := r.logs.count("the store outage grace "); n != 1 {
		t.Errorf("the grace's end logged %d times, want once", n)
	}
	if g := gaugeValue(t, r.Relay, "tether_store_outage_grace"); g != 0 {
		t.Errorf("tether_store_outage_grace %v once the store is back, want 0", g)
	}
	s1.close()
}

// TestStoreOutageGraceSpent: past the grace, counted from when the relay
// was last current, new streams and agents are refused again, as without
// it.
func TestStoreOutageGraceSpent(t *testing.T) {
	// The stream within the grace may wait up to 2 s for the store
	// (outageLookup) before its credential is taken from what the relay
	// last read, and then must still be within the grace: 4 s left too
	// little under load ("store did not answer within 2s", the grace
	// spent meanwhile).
	const grace = 8 * time.Second
	r := startOutageRelay(t, grace)
	ctx := context.Background()
	a1 := newTestAgent(t, r.Relay, "a1")
	s1, err := a1.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.dial(t); err != nil {
		t.Fatal(err)
	}
	cut := r.cut(t)
	if err := r.dial(t); err != nil {
		t.Fatalf("a new stream within the grace: %v", err)
	}
	r.logs.wait(t, "the store outage grace is spent")
	t.Logf("grace spent %v after the cut", time.Since(cut).Round(time.Millisecond))
	if r.storeOutage() || r.Stats().StoreOutageGrace {
		t.Fatal("still serving from what it last read once the grace is spent")
	}
	// Refused at the backend's store read (its credential is older than
	// the cache's TTL), or by admit.
	if err := r.dial(t); !errors.Is(err, client.ErrUnavailable) {
		t.Errorf("a new stream past the grace: %v, want unavailable", err)
	}
	s1.close()
	s1.waitClosed(t)
	if _, err := a1.connect(ctx); !errors.Is(err, protocol.ErrUnavailable) {
		t.Errorf("agent a1 connecting again past the grace: %v, want unavailable", err)
	}
}

// TestStoreOutageGraceOff: with the grace off, a relay that has lost its
// store refuses new streams past StaleAfter and agents whose record it
// cannot read, although no relay reaches the store.
func TestStoreOutageGraceOff(t *testing.T) {
	r := startOutageRelay(t, -1)
	ctx := context.Background()
	a1 := newTestAgent(t, r.Relay, "a1")
	s1, err := a1.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.dial(t); err != nil {
		t.Fatal(err)
	}
	r.cut(t)
	if r.storeOutage() {
		t.Fatal("serving from what it last read with the grace off")
	}
	if err := r.ready(ctx); err == nil {
		t.Error("ready with its store gone and the grace off")
	}
	if err := r.dial(t); !errors.Is(err, client.ErrUnavailable) {
		t.Errorf("a new stream with the grace off: %v, want unavailable", err)
	}
	s1.close()
	s1.waitClosed(t)
	if _, err := a1.connect(ctx); err == nil {
		t.Error("agent a1 connecting again with the grace off was admitted, want refused (its record cannot be read)")
	}
	if n := r.logs.count("the store is down for every relay this relay can ask"); n != 0 {
		t.Errorf("the grace's beginning logged %d times with the grace off", n)
	}
}

// TestStoreOutageGraceNotWhenIsolated: relay 2 alone loses its store
// while relay 1 reaches it. Relay 2 asks relay 1, isolates itself and
// sends its agent away; past StaleAfter it refuses new streams and
// agents, as without the grace: relay 1 may have taken revocations.
func TestStoreOutageGraceNotWhenIsolated(t *testing.T) {
	_, r2 := startOutagePair(t) // relay 1 reaches the store throughout
	ctx := context.Background()
	a1 := newTestAgent(t, r2.Relay, "a1")
	s1, err := a1.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.dial(t); err != nil {
		t.Fatal(err)
	}

	r2.proxy.Pause()
	r2.logs.wait(t, "this relay has lost its store while another relay reaches it")
	for deadline := time.Now().Add(20 * time.Second); r2.staleFor() <= r2.cfg.StaleAfter; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("relay 2 not stale 20 s after its store was cut")
		}
	}
	if r2.downForAll.Load() || r2.storeOutage() || r2.Stats().StoreOutageGrace {
		t.Fatal("relay 2, isolated while relay 1 reaches the store, serves from what it last read")
	}
	if err := r2.ready(ctx); err == nil {
		t.Error("relay 2, isolated, is ready")
	}
	if err := r2.dial(t); !errors.Is(err, client.ErrUnavailable) {
		t.Errorf("a new stream through relay 2, isolated: %v, want unavailable", err)
	}
	select {
	case g := <-s1.goAway:
		if g.Reason != protocol.GoAwayLeaving {
			t.Errorf("relay 2's GoAway to its agent: %+v, want %q", g, protocol.GoAwayLeaving)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("relay 2, isolated, did not send its agent away within 20 s")
	}
	s1.close() // it moves
	if _, err := a1.connect(ctx); !errors.Is(err, protocol.ErrUnavailable) || !strings.Contains(err.Error(), "other relays of the cluster reach") {
		t.Errorf("agent a1 connecting again to relay 2, isolated: %v, want unavailable (isolated)", err)
	}
	if n := r2.logs.count("the store is down for every relay this relay can ask"); n != 0 {
		t.Errorf("relay 2, isolated, logged the grace's beginning %d times", n)
	}
}

// TestStoreOutageGraceClusterDown: the store goes down for both relays
// of a cluster. Each asks the other, which answers that it has lost the
// store too, and serves new streams from what it last read: relay 2 to
// its agent, relay 1 forwarding to relay 2, which it last read as
// holding the agent.
func TestStoreOutageGraceClusterDown(t *testing.T) {
	r1, r2 := startOutagePair(t)
	ctx := context.Background()
	a1 := newTestAgent(t, r2.Relay, "a1")
	if _, err := a1.connect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r2.dial(t); err != nil {
		t.Fatal(err)
	}
	// Forwarded: relay 1 reads that relay 2 holds a1 once its presence
	// is written.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		err := r1.dial(t)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a stream through relay 1, forwarded to relay 2: %v", err)
		}
	}
	r1.proxy.Pause()
	cut := r2.cut(t)
	r1.cut(t)
	if err := r2.dial(t); err != nil {
		t.Fatalf("a new stream through relay 2 %v after the store went down for both relays: %v", time.Since(cut).Round(time.Millisecond), err)
	}
	if err := r1.dial(t); err != nil {
		t.Fatalf("a new stream through relay 1, forwarded to relay 2, %v after the store went down for both relays: %v", time.Since(cut).Round(time.Millisecond), err)
	}
	r2.logs.wait(t, "the store is down for every relay this relay can ask")
	if line := r2.logs.line("no other relay says it reaches the store"); !strings.Contains(line, "relay-1: last heartbeat") {
		t.Errorf("relay 2's line does not give relay 1's answer: %s", line)
	}
	if r2.isolated.Load() {
		t.Error("relay 2 isolated itself")
	}
}

// TestStoreOutageGraceRenewedElsewhere: an agent admitted by relay 1
// renews its certificate through relay 2 (renewals are not in the change
// feed: the record relay 1 keeps from the admission names the old
// certificate). The store then goes down for both relays, and the agent
// connects to relay 1 with its new certificate: it is admitted (it used
// to be refused, unavailable, the record kept not knowing the new
// certificate). A certificate of the agent issued before the one in the
// record kept is still refused.
func TestStoreOutageGraceRenewedElsewhere(t *testing.T) {
	r1, r2 := startOutagePair(t)
	ctx := context.Background()
	id := identity.Agent{TrustDomain: r1.TrustDomain(), Tenant: "acme", ID: "a1"}
	ag := newTestAgent(t, r1.Relay, "other")
	ag.cert = dueAgent(t, r1.Relay, id) // recorded as issued two hours ago
	s1, err := ag.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ag.addr = r2.AgentAddr().String()
	s2, err := ag.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ag.renew(t, s2)
	s1.close()
	s1.waitClosed(t)
	s2.close()
	s2.waitClosed(t)

	r1.proxy.Pause()
	cut := r2.cut(t)
	r1.cut(t)
	ag.addr = r1.AgentAddr().String()
	s, err := ag.connect(ctx)
	if err != nil {
		t.Fatalf("agent a1 with the certificate it renewed through relay 2, connecting to relay 1 %v after the store went down for both: %v, want it admitted",
			time.Since(cut).Round(time.Millisecond), err)
	}
	s.close()
	if n := r1.logs.count("certificate newer than the one in the record kept"); n != 1 {
		t.Errorf("%d lines of an agent admitted with a certificate newer than its record kept, want 1", n)
	}

	// A certificate of a1 issued three hours ago (valid four hours),
	// before the one in the record kept: not the agent's newest.
	old := signedAgent(t, r1.Relay, id, r1.auth.CA().Signer(), time.Now().Add(-3*time.Hour), 4*time.Hour)
	ag.mu.Lock()
	ag.cert = old
	ag.mu.Unlock()
	if s, err := ag.connect(ctx); err == nil {
		s.close()
		t.Fatal("agent a1 with a certificate issued before the one in relay 1's record kept was admitted during the outage")
	} else if !strings.Contains(err.Error(), "unavailable") {
		t.Errorf("a certificate older than the record kept, during the outage: %v, want unavailable", err)
	}
}

// gaugeValue is the value of the relay's gauge name (no labels).
func gaugeValue(t *testing.T, r *Relay, name string) float64 {
	t.Helper()
	return metricOf(t, r, name).GetGauge().GetValue()
}

// counterOf is the value of the relay's counter name (no labels).
func counterOf(t *testing.T, r *Relay, name string) float64 {
	t.Helper()
	return metricOf(t, r, name).GetCounter().GetValue()
}

// metricOf is the relay's metric name (no labels).
func metricOf(t *testing.T, r *Relay, name string) *dto.Metric {
	t.Helper()
	mfs, err := r.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0]
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}

// count is how many lines hold s.
func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), s)
}

// line is the first line that holds s.
func (l *logBuffer) line(s string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for line := range strings.Lines(l.buf.String()) {
		if strings.Contains(line, s) {
			return line
		}
	}
	return ""
}

// wait waits until a line holds s.
func (l *logBuffer) wait(t *testing.T, s string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); l.count(s) == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q after 30 s", s)
		}
	}
}

// testAgent is an agent of tenant acme, recorded as enrolled, that
// connects over TLS+yamux, answers pings and serves the echo service on
// every stream the relay opens.
type testAgent struct {
	t    *testing.T
	addr string
	conf *tls.Config

	mu   sync.Mutex // guards cert
	cert *tls.Certificate
}

func newTestAgent(t *testing.T, r *Relay, id string) *testAgent {
	t.Helper()
	authority := r.auth.CA()
	a := &testAgent{t: t, addr: r.AgentAddr().String(),
		cert: recordedAgent(t, r, identity.Agent{TrustDomain: r.TrustDomain(), Tenant: "acme", ID: id}, authority.Signer())}
	roots := x509.NewCertPool()
	for _, rt := range authority.Roots() {
		roots.AddCert(rt.Cert)
	}
	a.conf = identity.AgentClientConfig(roots, r.TrustDomain(), func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.cert, nil
	})
	return a
}

// renew renews the agent's certificate over s, with a new key, and
// connects with the new one from then on.
func (a *testAgent) renew(t *testing.T, s *agentSession) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "renewal"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.send(&protocol.RenewRequest{CSR: csr}); err != nil {
		t.Fatal(err)
	}
	var resp *protocol.RenewResponse
	select {
	case resp = <-s.renewed:
	case <-time.After(20 * time.Second):
		t.Fatal("no answer to the renewal within 20 s")
	}
	if resp.Code != "" {
		t.Fatalf("renewal refused: %s: %s", resp.Code, resp.Message)
	}
	block, _ := pem.Decode([]byte(resp.Certificate))
	if block == nil {
		t.Fatal("the renewal's answer holds no certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.cert = &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	a.mu.Unlock()
}

// agentSession is a testAgent's admitted session.
type agentSession struct {
	id      string // the session's id, from its welcome
	conn    *freezableConn
	mux     *yamux.Session
	ctl     net.Conn
	wmu     sync.Mutex                   // guards writes to ctl
	goAway  chan *protocol.GoAway        // the relay's GoAways
	renewed chan *protocol.RenewResponse // its answers to renewals
	wg      sync.WaitGroup
}

// send writes m on the session's control stream.
func (s *agentSession) send(m protocol.Message) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return protocol.WriteMessage(s.ctl, m)
}

// connect connects and says hello: the session once welcomed, or the
// relay's refusal.
func (a *testAgent) connect(ctx context.Context) (*agentSession, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	tc, err := (&tls.Dialer{Config: a.conf}).DialContext(ctx, "tcp", a.addr)
	if err != nil {
		return nil, err
	}
	conn := &freezableConn{Conn: tc}
	mux, err := yamux.Client(conn, tcp.Config(slog.New(slog.DiscardHandler)))
	if err != nil {
		conn.Close()
		return nil, err
	}
	ctl, err := mux.OpenStream()
	if err != nil {
		mux.Close()
		return nil, err
	}
	ctl.SetDeadline(time.Now().Add(20 * time.Second))
	if err := protocol.WriteMessage(ctl, &protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "test", OS: "linux", Arch: "amd64", BootID: "b1"}); err != nil {
		mux.Close()
		return nil, err
	}
	br := bufio.NewReader(ctl)
	m, err := protocol.ReadMessage(br)
	if err != nil {
		mux.Close()
		return nil, fmt.Errorf("read the answer to hello: %w", err)
	}
	if rej, ok := m.(*protocol.Reject); ok {
		mux.Close()
		return nil, rej.Err()
	}
	if m.Type() != protocol.TypeWelcome {
		mux.Close()
		return nil, fmt.Errorf("answer to hello: %#v, want a welcome", m)
	}
	ctl.SetDeadline(time.Time{})
	s := &agentSession{id: m.(*protocol.Welcome).SessionID, conn: conn, mux: mux, ctl: ctl, goAway: make(chan *protocol.GoAway, 4), renewed: make(chan *protocol.RenewResponse, 4)}
	s.wg.Go(func() {
		for {
			m, err := protocol.ReadMessage(br)
			if err != nil {
				return
			}
			switch m := m.(type) {
			case *protocol.Ping:
				if s.send(&protocol.Pong{Seq: m.Seq}) != nil {
					return
				}
			case *protocol.GoAway:
				select {
				case s.goAway <- m:
				default:
				}
			case *protocol.RenewResponse:
				select {
				case s.renewed <- m:
				default:
				}
			}
		}
	})
	s.wg.Go(func() {
		for {
			st, err := mux.AcceptStream()
			if err != nil {
				return
			}
			s.wg.Go(func() {
				defer st.Close()
				if _, err := protocol.ReadStreamHeader(st); err != nil {
					return
				}
				if protocol.WriteReply(st, protocol.Reply{}) != nil {
					return
				}
				io.Copy(st, st)
			})
		}
	})
	a.t.Cleanup(s.close)
	return s, nil
}

// close ends the session and waits for its goroutines.
func (s *agentSession) close() {
	s.conn.thaw()
	s.mux.Close()
	s.wg.Wait()
}

// waitClosed waits until the session is closed, by either side.
func (s *agentSession) waitClosed(t *testing.T) {
	t.Helper()
	select {
	case <-s.mux.CloseChan():
	case <-time.After(20 * time.Second):
		t.Fatal("the agent's session is still open after 20 s")
	}
}
