package relay

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport"
)

// liveSession is an agent's session with a relay over either transport,
// its control stream read on a goroutine until the session ends: ended
// is closed then, and refusal holds the relay's Reject, if it sent one.
type liveSession struct {
	sess    transport.Session
	refusal *protocol.Reject
	ended   chan struct{}
}

// helloOver connects agent cert to r over transport tr ("tcp" or "quic")
// and says hello. It returns the session once welcomed, or the relay's
// refusal of the hello.
func helloOver(t *testing.T, r *Relay, tr string, cert *tls.Certificate) (*liveSession, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sess, err := dialAgentPort(ctx, r, tr, cert)
	if err != nil {
		t.Fatalf("%s: %v", tr, err)
	}
	ctl, err := sess.OpenStream(ctx)
	if err != nil {
		sess.Close()
		t.Fatalf("%s: open the control stream: %v", tr, err)
	}
	ctl.(interface{ SetDeadline(time.Time) error }).SetDeadline(time.Now().Add(20 * time.Second))
	if err := protocol.WriteMessage(ctl, &protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "test", OS: "linux", Arch: "amd64", BootID: "b1"}); err != nil {
		sess.Close()
		t.Fatalf("%s: hello: %v", tr, err)
	}
	br := bufio.NewReader(ctl)
	m, err := protocol.ReadMessage(br)
	if err != nil {
		sess.Close()
		t.Fatalf("%s: answer to the hello: %v", tr, err)
	}
	if rej, ok := m.(*protocol.Reject); ok {
		sess.Close()
		return nil, rej.Err()
	}
	if m.Type() != protocol.TypeWelcome {
		sess.Close()
		t.Fatalf("%s: answer to the hello: %#v", tr, m)
	}
	ctl.(interface{ SetDeadline(time.Time) error }).SetDeadline(time.Time{})
	s := &liveSession{sess: sess, ended: make(chan struct{})}
	go func() {
		defer close(s.ended)
		defer sess.Close()
		for {
			m, err := protocol.ReadMessage(br)
			if err != nil {
				return
			}
			switch m := m.(type) {
			case *protocol.Ping:
				if protocol.WriteMessage(ctl, &protocol.Pong{Seq: m.Seq}) != nil {
					return
				}
			case *protocol.Reject:
				s.refusal = m
			}
		}
	}()
	t.Cleanup(func() {
		sess.Close()
		<-s.ended
	})
	return s, nil
}

// A revocation made through one relay of a cluster (PostgreSQL) during a
// CA rotation's overlap ends the agent's sessions on every relay, over QUIC
// and over TCP; the agent is then refused on every relay over either
// transport, told why, and renews nothing on either relay.
func TestClusterRevocationEndsSessionsOnEveryTransport(t *testing.T) {
	ctx := context.Background()
	pg := pgtest.Start(t)
	kek := make([]byte, 32)
	rand.Read(kek)
	start := func(id string) *Relay {
		return runRelay(t, Config{DataDir: t.TempDir(), Store: pg.DSN(), CAKEK: kek, RelayID: id,
			AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off,
			ClusterHeartbeat: 100 * time.Millisecond, ClusterDeadAfter: 600 * time.Millisecond,
			ChangePoll: 100 * time.Millisecond, DrainTimeout: 100 * time.Millisecond})
	}
	r1 := start("relay-1")
	r2 := start("relay-2")
	if err := r1.adm.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	id := identity.Agent{TrustDomain: r1.TrustDomain(), Tenant: "acme", ID: "a1"}
	cert := recordedAgent(t, r1, id, r1.auth.CA().Signer())
	// A rotation begins: the agent's certificate is from the old root,
	// which both relays still trust.
	if _, err := r1.adm.RotateCA(ctx, false); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !r1.auth.CA().Rotating() || !r2.auth.CA().Rotating(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the relays did not follow the rotation")
		}
	}

	sessions := map[string]*liveSession{}
	for name, c := range map[string]struct {
		r  *Relay
		tr string
	}{"relay-1/tcp": {r1, "tcp"}, "relay-1/quic": {r1, "quic"}, "relay-2/tcp": {r2, "tcp"}, "relay-2/quic": {r2, "quic"}} {
		s, err := helloOver(t, c.r, c.tr, cert)
		if err != nil {
			t.Fatalf("%s before the revocation: %v", name, err)
		}
		sessions[name] = s
	}

	revoked := time.Now()
	if _, err := r1.adm.RevokeAgent(ctx, id.ID, "key pair copied"); err != nil {
		t.Fatal(err)
	}
	for name, s := range sessions {
		select {
		case <-s.ended:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: the revoked agent's session is still open 5 s after the revocation", name)
		}
		// Over TCP the agent reads why. Over QUIC the relay's Reject
		// does not arrive: the connection is closed as soon as it is
		// written, which discards it; the agent learns why at its next
		// hello, below.
		if strings.HasSuffix(name, "/tcp") && (s.refusal == nil || s.refusal.Code != protocol.CodeRevoked.String()) {
			t.Errorf("%s: closed with %+v, want a revoked refusal", name, s.refusal)
		}
		t.Logf("%s: closed within %v of the revocation (told why: %v)", name, time.Since(revoked).Round(time.Millisecond), s.refusal != nil)
	}
	for name, c := range map[string]struct {
		r  *Relay
		tr string
	}{"relay-1/tcp": {r1, "tcp"}, "relay-1/quic": {r1, "quic"}, "relay-2/tcp": {r2, "tcp"}, "relay-2/quic": {r2, "quic"}} {
		if _, err := helloOver(t, c.r, c.tr, cert); !errors.Is(err, protocol.ErrRevoked) {
			t.Errorf("%s after the revocation: %v, want revoked", name, err)
		}
	}
	for _, r := range []*Relay{r1, r2} {
		s := &renewing{id: id, serial: cert.Leaf.SerialNumber.Text(16), at: revoked.Add(-time.Minute), boot: "b1", root: r.auth.CA().Serving().ID()}
		if resp := r.enrol.Renew(ctx, s, &protocol.RenewRequest{CSR: csrFor(t)}); resp.Code != protocol.CodeRevoked.String() || resp.Certificate != "" {
			t.Errorf("renewal of the revoked agent: %q %q, want revoked", resp.Code, resp.Message)
		}
	}
}
