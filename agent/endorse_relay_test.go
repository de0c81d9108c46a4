package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport/tcp"
)

// syncBuffer is a log destination read while the agent writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The audit's scenario over a real session: a relay that holds a genuine
// relay certificate and key (as anyone who took one relay's key would),
// but not the CA's key, asks the running agent to renew at once and
// answers with a certificate from a root of its own, sent beside the
// genuine root, with no endorsement. The agent refuses it: its log and
// its status say which root and why, and it keeps the roots it trusts
// and its key and certificate, in memory and on disk.
func TestHostileRelayRenewalAddsNoRoot(t *testing.T) {
	ca := newTestCA(t)
	evil := newTestRoot(t, "tether.internal", "attacker")
	conf := ca.relayTLS(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	answered := make(chan struct{}, 16)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { hostileRenewals(ctx, t, c, conf, ca.root, evil, answered) })
		}
	})

	var logs syncBuffer
	cfg := Config{Relays: []string{ln.Addr().String()}, Transport: TransportTCP, RelayConnections: 1, Services: map[string]Service{},
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})), NoFileWatch: true,
		Reconnect: Backoff{Initial: 100 * time.Millisecond, Max: time.Second}}
	a := enrolledWith(t, cfg, ca.root, ca.root)
	before := a.cert.Load().Leaf
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		ln.Close()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
		wg.Wait()
	})

	select {
	case <-answered:
	case <-time.After(20 * time.Second):
		t.Fatalf("the agent never asked the hostile relay to renew; its log:\n%s", logs.String())
	}
	waitFor(t, 10*time.Second, "the refusal in the status and the log", func() error {
		if why := a.Status().CARootRefused; !strings.Contains(why, `CA root "attacker"`) || !strings.Contains(why, "which no root this agent trusts endorses") {
			return fmt.Errorf("status ca_root_refused = %q", why)
		}
		if !strings.Contains(logs.String(), "certificate renewal failed") {
			return fmt.Errorf("no renewal failure in the log")
		}
		return nil
	})
	if l := logs.String(); !strings.Contains(l, "which no root this agent trusts endorses") {
		t.Fatalf("the log does not say why:\n%s", l)
	}
	if got := *a.rootList.Load(); len(got) != 1 || !got[0].Equal(ca.root.cert) {
		t.Fatalf("the agent trusts %d roots after the hostile renewal", len(got))
	}
	if !a.cert.Load().Leaf.Equal(before) {
		t.Fatal("the agent installed the hostile relay's certificate")
	}
	st, err := LoadState(a.state.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.RootCerts) != 1 || !st.RootCerts[0].Equal(ca.root.cert) || !st.Cert.Leaf.Equal(before) {
		t.Fatal("ca.crt or agent.crt changed on disk")
	}
}

// hostileRenewals serves one agent connection as a relay that has a
// genuine relay certificate (conf) but not the CA's key: it welcomes the
// agent, asks it to renew at once, and answers every renewal with a
// certificate from evil, sending the genuine root and evil.
func hostileRenewals(ctx context.Context, t *testing.T, c net.Conn, conf *tls.Config, genuine, evil testRoot, answered chan<- struct{}) {
	defer c.Close()
	tc := tls.Server(c, conf)
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		return
	}
	id, err := identity.AgentFromCertificate(tc.ConnectionState().PeerCertificates[0], "tether.internal")
	if err != nil {
		t.Errorf("hostile relay: %v", err)
		return
	}
	sess, err := tcp.Server(tc, tcp.RelayConfig(slog.New(slog.DiscardHandler)))
	if err != nil {
		return
	}
	defer sess.Close()
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	ctl, err := sess.AcceptStream(actx)
	cancel()
	if err != nil {
		return
	}
	go func() { // the agent's session ends when the test does
		<-ctx.Done()
		sess.Close()
	}()
	br := bufio.NewReader(ctl)
	if _, err := protocol.ReadMessage(br); err != nil {
		return
	}
	var mu sync.Mutex
	send := func(m protocol.Message) error {
		mu.Lock()
		defer mu.Unlock()
		return protocol.WriteMessage(ctl, m)
	}
	if send(&protocol.Welcome{ProtocolVersion: protocol.Version, RelayVersion: "hostile", AgentID: id.ID, Tenant: id.Tenant, SessionID: "hostile-1",
		Capabilities: []string{protocol.CapRenew}}) != nil {
		return
	}
	if send(&protocol.RenewNow{Root: protocol.FormatFingerprint(protocol.Fingerprint(evil.cert.Raw))}) != nil {
		return
	}
	for {
		m, err := protocol.ReadMessage(br)
		if err != nil {
			return
		}
		req, ok := m.(*protocol.RenewRequest)
		if !ok {
			continue
		}
		csr, err := x509.ParseCertificateRequest(req.CSR)
		if err != nil {
			t.Errorf("hostile relay: %v", err)
			return
		}
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
			SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(30 * 24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{id.URI()},
		}, evil.cert, csr.PublicKey, evil.key)
		if err != nil {
			t.Errorf("hostile relay: %v", err)
			return
		}
		if send(&protocol.RenewResponse{Certificate: string(pemBlock("CERTIFICATE", der)),
			CACertificates: string(rootsPEM([]*x509.Certificate{genuine.cert, evil.cert}))}) != nil {
			return
		}
		select {
		case answered <- struct{}{}:
		default:
		}
	}
}
