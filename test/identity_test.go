package test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport/tcp"
	"github.com/tetherhq/tether/relay/client"
)

// auditRecords reads the relay's audit trail through tether-relay audit.
func auditRecords(t *testing.T, r *relayProc, args ...string) []map[string]any {
	t.Helper()
	out := r.admin(t, append([]string{"audit", "-o", "json"}, args...)...)
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		recs = append(recs, m)
	}
	return recs
}

// waitAudit waits until the audit trail holds a record for which match is
// true (records are written in batches) and returns it.
func waitAudit(t *testing.T, r *relayProc, what string, match func(map[string]any) bool, args ...string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, rec := range auditRecords(t, r, args...) {
			if match(rec) {
				return rec
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no audit record of %s; trail: %v", what, auditRecords(t, r))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func kindOutcome(kind, outcome string) func(map[string]any) bool {
	return func(m map[string]any) bool { return m["kind"] == kind && m["outcome"] == outcome }
}

// echoOnce writes a line on c and expects it back.
func echoOnce(t *testing.T, c net.Conn, line string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		t.Fatalf("%s: write: %v", line, err)
	}
	if got, err := readLine(c); err != nil || got != line {
		t.Fatalf("%s: echo got %q, %v", line, got, err)
	}
	c.SetDeadline(time.Time{})
}

func TestCertificateRenewalKeepsStreams(t *testing.T) {
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			// 45 s certificates: renewed about 30 s after they were issued.
			r := startRelay(t, relayOpts{extra: []string{"--agent-cert-lifetime", "45s"}})
			r.addTenant(t, "acme")
			d := r.backend(t, "billing", "acme")
			a := startAgent(t, r, "acme", agentOpts{transport: transport, services: map[string]string{"echo": tcpService(t, echo)}})
			before := readCert(t, filepath.Join(a.stateDir, "agent.crt"))

			// A stream opened before the renewal and used after it.
			held := waitDial(t, d, "echo.acme.tether:7", 20*time.Second)
			defer held.Close()
			echoOnce(t, held, "before renewal")

			a.waitOutput(`"msg":"certificate renewed"`, 60*time.Second)
			after := readCert(t, filepath.Join(a.stateDir, "agent.crt"))
			if after.SerialNumber.Cmp(before.SerialNumber) == 0 {
				t.Fatal("agent.crt was not replaced by the renewal")
			}
			if pubEqual(after.PublicKey, before.PublicKey) {
				t.Fatal("renewed certificate reuses the old key")
			}
			if after.URIs[0].String() != before.URIs[0].String() {
				t.Fatalf("renewed certificate names %s, was %s", after.URIs[0], before.URIs[0])
			}
			echoOnce(t, held, "after renewal")

			// Past the first certificate's expiry: sessions moved to the new
			// certificate, so the held stream and new ones still work.
			time.Sleep(time.Until(before.NotAfter.Add(2 * time.Second)))
			echoOnce(t, held, "after the old certificate expired")
			c := waitDial(t, d, "echo.acme.tether:7", 5*time.Second)
			echoOnce(t, c, "new stream")
			c.Close()
			if strings.Contains(a.out.String(), "connection to relay lost") {
				t.Fatalf("a session was lost around the renewal:\n%s", a.out.String())
			}
			waitAudit(t, r, "the renewal", kindOutcome("agent.renew", "ok"), "--agent", a.id)
		})
	}
}

func TestRevocationClosesLiveSessionsAndSurvivesRestart(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	d := r.backend(t, "billing", "acme")
	a := startAgent(t, r, "acme", agentOpts{services: map[string]string{"echo": tcpService(t, echo)}})
	held := waitDial(t, d, "echo.acme.tether:7", 20*time.Second)
	defer held.Close()
	echoOnce(t, held, "before revocation")

	r.admin(t, "agent", "revoke", a.id, "--reason", "laptop stolen")
	// The open stream ends within 5 s of the revocation, written once the
	// command has returned (its own start is not the relay's time): its
	// session is closed.
	revoked := time.Now()
	held.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := held.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("stream through the revoked agent still open %v after revocation (read: %v)", time.Since(revoked), err)
	}
	if took := time.Since(revoked); took > 5*time.Second {
		t.Fatalf("revocation took %v to close the stream", took)
	}
	waitDialErr(t, d, "echo.acme.tether:7", client.ErrNoAgent)
	a.waitOutput("revoked", 10*time.Second)
	// Refused for good, the agent stops (TestRevokedAgentStops).
	wantExit(t, a.proc, 3, 20*time.Second)

	// After a restart the relay still refuses the agent, with the reason.
	refused := strings.Count(r.out.String(), `"msg":"agent refused"`)
	r.kill()
	r.restart()
	waitCount(t, r.proc, `"msg":"relay serving"`, 2, 20*time.Second)
	a.restart()
	waitCount(t, r.proc, `"msg":"agent refused"`, refused+1, 20*time.Second)
	wantExit(t, a.proc, 3, 20*time.Second)
	waitDialErr(t, d, "echo.acme.tether:7", client.ErrNoAgent)
	if !strings.Contains(a.out.String(), "laptop stolen") {
		t.Errorf("agent log does not say why it was revoked:\n%s", a.out.String())
	}
	waitAudit(t, r, "the revocation", kindOutcome("agent.revoke", "ok"), "--agent", a.id)
	waitAudit(t, r, "the closed session", kindOutcome("agent.disconnect", "revoked"), "--agent", a.id)
	waitAudit(t, r, "the refused reconnection", kindOutcome("agent.connect", "revoked"), "--agent", a.id)
}

// relayCA reads the relay's CA certificate and key from its data directory,
// to forge certificates the relay must refuse.
func relayCA(t *testing.T, r *relayProc) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	crt := readCert(t, filepath.Join(r.dataDir, "ca", "ca.crt"))
	raw, err := os.ReadFile(filepath.Join(r.dataDir, "ca", "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(raw)
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return crt, k.(*ecdsa.PrivateKey)
}

// agentCert issues a client certificate for uri from ca, valid from
// notBefore to notAfter.
func agentCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, uri string, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "forged"},
		NotBefore: notBefore, NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// helloWith connects to the relay over TLS+yamux with cert, sends a hello
// and returns the relay's answer (or the transport error).
func helloWith(t *testing.T, r *relayProc, cert tls.Certificate) (protocol.Message, error) {
	t.Helper()
	ca, _ := relayCA(t, r)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	conf := identity.AgentClientConfig(roots, "tether.internal", func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := tcp.Dial(ctx, nil, r.agentAddr, conf, tcp.Config(slog.New(slog.DiscardHandler)))
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	ctl, err := sess.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	ctl.SetDeadline(time.Now().Add(10 * time.Second))
	if err := protocol.WriteMessage(ctl, &protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "test", OS: "linux", Arch: "amd64"}); err != nil {
		return nil, err
	}
	return protocol.ReadMessage(bufio.NewReader(ctl))
}

func TestExpiredCertificateIsRefusedWithAClearMessage(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	stateDir, id := enroll(t, r.agentAddr, r.token(t, "acme"))
	ca, caKey := relayCA(t, r)
	uri := fmt.Sprintf("spiffe://tether.internal/tenant/acme/agent/%s", id)
	// Expired a minute ago (and issued after the CA, as a real one was).
	expired := agentCert(t, ca, caKey, uri, ca.NotBefore.Add(time.Minute), time.Now().Add(-time.Minute))

	// The relay answers the hello with certificate_expired and says what to do.
	m, err := helloWith(t, r, expired)
	if err != nil {
		t.Fatalf("hello with an expired certificate: %v", err)
	}
	rej, ok := m.(*protocol.Reject)
	if !ok || rej.Code != protocol.CodeCertExpired.String() || !strings.Contains(rej.Message, "enrol it again") {
		t.Fatalf("relay answered %#v, want a certificate_expired reject telling to enrol again", m)
	}
	waitAudit(t, r, "the refusal", kindOutcome("agent.connect", "certificate_expired"), "--agent", id)

	// tether-agent run says the same before dialling and exits non-zero.
	writeCertFiles(t, stateDir, expired)
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("relays: [%q]\nstate_dir: %q\nservices: {}\n", r.agentAddr, stateDir)), 0o600)
	_, stderr, err := runCmd(t, bins.agent, "run", "--config", cfg)
	if err == nil || !strings.Contains(stderr, "expired") || !strings.Contains(stderr, "enrol it again") {
		t.Fatalf("tether-agent run with an expired certificate: err %v, stderr:\n%s", err, stderr)
	}
	// It exits with the status of a refusal for good, having said so once.
	if code, n := exitCode(err), strings.Count(stderr, "restarting the agent will not help"); code != agent.ExitRefused || n != 1 {
		t.Errorf("tether-agent run with an expired certificate: exit %d (want %d), said what to do %d times (want once):\n%s", code, agent.ExitRefused, n, stderr)
	}
}

func TestForgedCertificatesAreRefusedAndAudited(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	r.addTenant(t, "beta")
	_, id := enroll(t, r.agentAddr, r.token(t, "acme"))
	ca, caKey := relayCA(t, r)
	now := time.Now()

	// Another CA with the same trust domain and names.
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherTmpl := *ca
	otherTmpl.SerialNumber = big.NewInt(42)
	otherTmpl.PublicKey = &otherKey.PublicKey
	otherDER, err := x509.CreateCertificate(rand.Reader, &otherTmpl, &otherTmpl, &otherKey.PublicKey, otherKey)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := x509.ParseCertificate(otherDER)
	foreign := agentCert(t, other, otherKey, "spiffe://tether.internal/tenant/acme/agent/"+id, now.Add(-time.Minute), now.Add(time.Hour))
	if m, err := helloWith(t, r, foreign); err == nil {
		t.Fatalf("a certificate from another CA got an answer: %#v", m)
	}
	waitAudit(t, r, "the foreign certificate", func(m map[string]any) bool {
		d, _ := m["detail"].(map[string]any)
		return m["kind"] == "agent.handshake" && d != nil && strings.Contains(fmt.Sprint(d["error"]), "unknown authority")
	})

	// Our CA, but naming agent id under another tenant: the registration
	// is acme's, so the relay does not know that agent in beta.
	crossTenant := agentCert(t, ca, caKey, "spiffe://tether.internal/tenant/beta/agent/"+id, now.Add(-time.Minute), now.Add(time.Hour))
	m, err := helloWith(t, r, crossTenant)
	if err != nil {
		t.Fatal(err)
	}
	if rej, ok := m.(*protocol.Reject); !ok || rej.Code != protocol.CodeUnknownAgent.String() {
		t.Fatalf("certificate naming agent %s in tenant beta: relay answered %#v, want unknown_agent", id, m)
	}
	waitAudit(t, r, "the cross-tenant certificate", kindOutcome("agent.connect", "unknown_agent"), "--tenant", "beta")
}

func TestTenantLimitsAreBulkheads(t *testing.T) {
	r := startRelay(t, relayOpts{})
	for _, tn := range []string{"acme", "beta"} {
		r.addTenant(t, tn)
	}
	d := r.backend(t, "billing", "acme", "beta")
	svc := map[string]string{"echo": tcpService(t, echo)}
	startAgent(t, r, "acme", agentOpts{services: svc})
	startAgent(t, r, "beta", agentOpts{services: svc})

	// acme: two concurrent streams at most. The relay applies a change
	// to the limits once it has followed the store's change feed (every
	// ChangePoll, 500 ms): each step below waits for the limit to apply,
	// trying again while what it tries is still allowed, not a fixed time
	// (2 s, which a loaded machine could outlast).
	r.admin(t, "tenant", "limits", "acme", "--max-streams", "2", "--max-agents", "1")
	var open []net.Conn
	for i := range 2 {
		c := waitDial(t, d, "echo.acme.tether:7", 10*time.Second)
		echoOnce(t, c, fmt.Sprintf("acme %d", i))
		open = append(open, c)
	}
	untilLimited(t, "third acme stream", func() error {
		c, err := d.Dial("tcp", "echo.acme.tether:7")
		if err == nil {
			c.Close() // the limit does not apply yet
		}
		return err
	})
	// beta is not affected.
	var betas []net.Conn
	for i := range 5 {
		c := waitDial(t, d, "echo.beta.tether:7", 10*time.Second)
		echoOnce(t, c, fmt.Sprintf("beta %d", i))
		betas = append(betas, c)
	}
	for _, c := range append(open, betas...) {
		c.Close()
	}
	waitAudit(t, r, "the stream refusal", kindOutcome("stream", "limit_exceeded"), "--tenant", "acme")

	// A second acme agent cannot enrol past --max-agents 1.
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(r.token(t, "acme")), 0o600)
	_, stderr, err := runCmd(t, bins.agent, "enroll", "--relay", r.agentAddr, "--token-file", tokenFile, "--state-dir", t.TempDir())
	if err == nil || !strings.Contains(stderr, "limit_exceeded") {
		t.Fatalf("enrolment past max-agents: err %v, stderr %s", err, stderr)
	}

	// Stream-open rate: one per second, no burst, per backend: an open
	// right after one is refused.
	r.admin(t, "tenant", "limits", "acme", "--open-rate", "0.5", "--open-burst", "1")
	untilLimited(t, "second acme open within the rate", func() error {
		c := waitDial(t, d, "echo.acme.tether:7", 10*time.Second)
		c.Close()
		c, err := d.Dial("tcp", "echo.acme.tether:7")
		if err == nil {
			c.Close() // the rate does not apply yet
		}
		return err
	})
	c := waitDial(t, d, "echo.beta.tether:7", 10*time.Second)
	c.Close()

	// Agents of acme may only connect from 10.0.0.0/8: enrolment from
	// loopback is refused, and so is a reconnection. Until the relay
	// applies the networks, the enrolment is refused for --max-agents.
	r.admin(t, "tenant", "limits", "acme", "--cidrs", "10.0.0.0/8")
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, stderr, err = runCmd(t, bins.agent, "enroll", "--relay", r.agentAddr, "--token-file", tokenFile, "--state-dir", t.TempDir())
		if err != nil && strings.Contains(stderr, "not_allowed") {
			break
		}
		if err == nil || !strings.Contains(stderr, "limit_exceeded") || time.Now().After(deadline) {
			t.Fatalf("enrolment from outside the tenant's networks: err %v, stderr %s; want not_allowed (within 15 s of the change)", err, stderr)
		}
	}
	waitAudit(t, r, "the enrolment refusal", kindOutcome("agent.enrol", "not_allowed"), "--tenant", "acme")
}

// untilLimited calls try until it is refused with limit_exceeded, while
// what it tries still succeeds (a limit just set, which the relay has not
// applied yet), for at most 15 s; any other failure fails the test.
func untilLimited(t *testing.T, what string, try func() error) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		err := try()
		if errors.Is(err, client.ErrLimitExceeded) {
			return
		}
		if err != nil || time.Now().After(deadline) {
			t.Fatalf("%s: got %v, want limit_exceeded (within 15 s of the change)", what, err)
		}
	}
}

// waitCount waits until p's output holds s at least n times.
func waitCount(t *testing.T, p *proc, s string, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for strings.Count(p.out.String(), s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s printed %q %d times within %v, want %d", p.name, s, strings.Count(p.out.String(), s), d, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(raw)
	if b == nil {
		t.Fatalf("%s holds no PEM", path)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pubEqual(a, b any) bool {
	x, ok := a.(*ecdsa.PublicKey)
	return ok && x.Equal(b)
}

func writeCertFiles(t *testing.T, dir string, c tls.Certificate) {
	t.Helper()
	kder, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "agent.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	os.WriteFile(filepath.Join(dir, "agent.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600)
}
