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
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport/tcp"
	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/session"
	"github.com/tetherhq/tether/relay/internal/store"
)

// TestSessionsPerAgentBounded: one agent process holds at most
// session.MaxSessionsPerAgent sessions with a relay; one more is refused
// as over a limit (each holds a socket, goroutines and buffers, and
// nothing else bounded them: an agent's certificate in many processes
// could open any number). A new process of the agent (another boot id)
// is still admitted, and the old process's sessions are closed as stale.
func TestSessionsPerAgentBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	r := runRelay(t, Config{DataDir: dir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: Off, DrainTimeout: time.Millisecond})
	a, err := admin.Open(ctx, admin.Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	authority := r.auth.CA()
	id := identity.Agent{TrustDomain: r.TrustDomain(), Tenant: "acme", ID: "a1"}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id.ID}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ca.CheckCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	now, root := time.Now(), authority.Signer()
	leaf, err := authority.SignAgent(root, csr, id, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.dir.Store.AddAgent(ctx, store.Agent{ID: id.ID, Tenant: id.Tenant, CreatedAt: now, CertSerial: leaf.SerialNumber.Text(16),
		CertNotAfter: leaf.NotAfter, CertRoot: root.ID(), CertIssuedAt: now}); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	for _, rt := range authority.Roots() {
		roots.AddCert(rt.Cert)
	}
	cert := &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	conf := identity.AgentClientConfig(roots, r.TrustDomain(), func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil })

	var muxes []*yamux.Session
	defer func() {
		for _, m := range muxes {
			m.Close()
		}
	}()
	// hello opens a session as process boot and returns the relay's answer.
	hello := func(boot string) protocol.Message {
		t.Helper()
		conn, err := (&tls.Dialer{Config: conf}).DialContext(ctx, "tcp", r.AgentAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		mux, err := yamux.Client(conn, tcp.Config(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		muxes = append(muxes, mux)
		ctl, err := mux.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		ctl.SetDeadline(time.Now().Add(10 * time.Second))
		if err := protocol.WriteMessage(ctl, &protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "test", OS: "linux", Arch: "amd64", BootID: boot}); err != nil {
			t.Fatal(err)
		}
		m, err := protocol.ReadMessage(bufio.NewReader(ctl))
		if err != nil {
			t.Fatal(err)
		}
		ctl.SetDeadline(time.Time{})
		return m
	}
	for i := range session.MaxSessionsPerAgent {
		if m := hello("b1"); m.Type() != protocol.TypeWelcome {
			t.Fatalf("session %d of one process: %#v; want it welcomed", i+1, m)
		}
	}
	m := hello("b1")
	rej, ok := m.(*protocol.Reject)
	if !ok || rej.Code != protocol.CodeLimitExceeded.String() || !strings.Contains(rej.Message, "sessions") {
		t.Fatalf("session %d of one process: %#v; want it refused as over the limit of sessions", session.MaxSessionsPerAgent+1, m)
	}
	if n := r.sessions.Sessions().SessionsOf(id.Tenant, id.ID); n > session.MaxSessionsPerAgent {
		t.Fatalf("the relay holds %d sessions of the agent", n)
	}
	// The agent restarted: its new process is admitted, the old one's
	// sessions go.
	if m := hello("b2"); m.Type() != protocol.TypeWelcome {
		t.Fatalf("the first session of the agent's next process: %#v; want it welcomed", m)
	}
	for deadline := time.Now().Add(10 * time.Second); r.sessions.Sessions().SessionsOf(id.Tenant, id.ID) != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the old process's sessions are not closed: %d sessions", r.sessions.Sessions().SessionsOf(id.Tenant, id.ID))
		}
	}
}
