package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport/tcp"
	"github.com/tetherhq/tether/relay/internal/session"
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
	// Every session comes from one address: its bound on handshakes in
	// progress lifted, for the sessions opened at once below.
	r := runRelay(t, Config{DataDir: dir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: Off, DrainTimeout: time.Millisecond,
		MaxHandshakesPerAddress: 1000, MaxHandshakesPerNetwork: 1000})
	openAdmin(t, dir, "acme")
	authority := r.auth.CA()
	id := identity.Agent{TrustDomain: r.TrustDomain(), Tenant: "acme", ID: "a1"}
	cert := recordedAgent(t, r, id, authority.Signer())
	roots := x509.NewCertPool()
	for _, rt := range authority.Roots() {
		roots.AddCert(rt.Cert)
	}
	conf := identity.AgentClientConfig(roots, r.TrustDomain(), func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil })

	var muxes []*yamux.Session
	defer func() {
		for _, m := range muxes {
			m.Close()
		}
	}()
	var mu sync.Mutex
	// open opens a session as process boot and returns the relay's first
	// answer, and its control stream's reader for the rest.
	open := func(boot string) (protocol.Message, *bufio.Reader, error) {
		conn, err := (&tls.Dialer{Config: conf}).DialContext(ctx, "tcp", r.AgentAddr().String())
		if err != nil {
			return nil, nil, err
		}
		mux, err := yamux.Client(conn, tcp.Config(slog.New(slog.DiscardHandler)))
		if err != nil {
			return nil, nil, err
		}
		mu.Lock()
		muxes = append(muxes, mux)
		mu.Unlock()
		ctl, err := mux.OpenStream()
		if err != nil {
			return nil, nil, err
		}
		ctl.SetDeadline(time.Now().Add(20 * time.Second))
		if err := protocol.WriteMessage(ctl, &protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "test", OS: "linux", Arch: "amd64", BootID: boot}); err != nil {
			return nil, nil, err
		}
		br := bufio.NewReader(ctl)
		m, err := protocol.ReadMessage(br)
		return m, br, err
	}
	hello := func(boot string) protocol.Message {
		t.Helper()
		m, _, err := open(boot)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	for i := range session.MaxSessionsPerAgent {
		if m := hello("b1"); m.Type() != protocol.TypeWelcome {
			t.Fatalf("session %d of one process: %#v; want it welcomed", i+1, m)
		}
	}
	// Each joins the relay's set just after its Welcome: once all have,
	// one more is refused at its hello. (One that races in beside them is
	// closed as it joins the set, with the same refusal.)
	for deadline := time.Now().Add(10 * time.Second); r.sessions.Sessions().SessionsOf(id.Tenant, id.ID) != session.MaxSessionsPerAgent; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the relay holds %d sessions of the agent, want %d", r.sessions.Sessions().SessionsOf(id.Tenant, id.ID), session.MaxSessionsPerAgent)
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

	// Many at once from the new process: those admitted beside others
	// that had not joined the set yet are closed as they join it, each
	// told why, and the bound holds.
	const burst = session.MaxSessionsPerAgent + 8
	var wg sync.WaitGroup
	refused := make(chan bool, burst)
	for range burst {
		wg.Go(func() {
			m, br, err := open("b2")
			for err == nil {
				if rej, ok := m.(*protocol.Reject); ok {
					refused <- rej.Code == protocol.CodeLimitExceeded.String()
					return
				}
				m, err = protocol.ReadMessage(br) // after a Welcome, a Reject if one too many

			}
		})
	}
	for deadline := time.Now().Add(20 * time.Second); r.sessions.Sessions().SessionsOf(id.Tenant, id.ID) > session.MaxSessionsPerAgent || len(refused) < burst+1-session.MaxSessionsPerAgent; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after %d sessions at once (and one before) the relay holds %d sessions of the agent and refused %d; want at most %d held, the rest refused",
				burst, r.sessions.Sessions().SessionsOf(id.Tenant, id.ID), len(refused), session.MaxSessionsPerAgent)
		}
	}
	for range burst + 1 - session.MaxSessionsPerAgent {
		if !<-refused {
			t.Error("a session over the bound was refused with another code than limit_exceeded")
		}
	}
	mu.Lock()
	for _, m := range muxes {
		m.Close() // ends the readers above
	}
	mu.Unlock()
	wg.Wait()
}
