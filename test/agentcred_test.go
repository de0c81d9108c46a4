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
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/tcp"
)

// newCSR is a certificate request for a fresh key.
func newCSR(t *testing.T) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "test"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// enrolTry enrols by hand from the loopback address src with token and
// returns the outcome: ok with the agent id, or the refusal's code.
func enrolTry(t *testing.T, src, agentAddr, token string) (outcome, agentID string) {
	t.Helper()
	tok, err := protocol.ParseJoinToken(token)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := fromAddr(src).Dial("tcp", agentAddr)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, identity.EnrollClientConfig(tok.CAFingerprint))
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(20 * time.Second))
	if err := protocol.WriteMessage(tc, &protocol.EnrollRequest{Token: token, CSR: newCSR(t), Hostname: "test", OS: "linux", Arch: "amd64"}); err != nil {
		t.Fatalf("enrol from %s: %v", src, err)
	}
	m, err := protocol.ReadMessage(bufio.NewReader(tc))
	if err != nil {
		t.Fatalf("enrol from %s: %v", src, err)
	}
	switch m := m.(type) {
	case *protocol.EnrollResponse:
		return outcomeOK, m.AgentID
	case *protocol.Reject:
		return m.Code, ""
	}
	t.Fatalf("enrol from %s: answered %#v", src, m)
	return "", ""
}

// forgedToken is a join token for the CA of token with a random id and
// secret (or token's id with a random secret, when sameID).
func forgedToken(t *testing.T, token string, sameID bool) string {
	t.Helper()
	tok, err := protocol.ParseJoinToken(token)
	if err != nil {
		t.Fatal(err)
	}
	if !sameID {
		rand.Read(tok.ID[:])
	}
	rand.Read(tok.Secret[:])
	return tok.String()
}

// Enrolment with wrong join tokens from one address is refused
// invalid_token for a burst of 10, then rate_limited, while a valid token
// still enrols from another address and from the throttled one itself;
// wrong secrets for one token id from many addresses are throttled too,
// and the token's holder still enrols. The refusals are counted in
// tether_auth_refusals_total{door="enrol"} and audited: one by one for
// each source's burst, summed in auth.refused records beyond.
func TestEnrolmentThrottlesWrongJoinTokens(t *testing.T) {
	r := startRelay(t, relayOpts{extra: []string{"--metrics-listen", "127.0.0.1:0"}})
	metricsURL := "http://" + servingAddrs(t, r)["metrics_addr"]
	r.addTenant(t, "acme")
	valid := r.token(t, "acme", "--uses", "5")

	start := time.Now()
	var got []string
	for range 15 {
		o, _ := enrolTry(t, "127.0.0.1", r.agentAddr, forgedToken(t, valid, false))
		got = append(got, o)
	}
	refill := int(time.Since(start) / (5 * time.Second))
	n := map[string]int{}
	for _, o := range got {
		n[o]++
	}
	if got[0] != "invalid_token" || got[14] != outcomeRateLimited || n["invalid_token"] < 10 || n["invalid_token"] > 10+refill || n["invalid_token"]+n[outcomeRateLimited] != 15 {
		t.Errorf("15 wrong join tokens from one address answered %v; want 10 invalid_token, then rate_limited", got)
	}
	refused, throttled := 15, n[outcomeRateLimited]

	if o, id := enrolTry(t, "127.0.0.2", r.agentAddr, valid); o != outcomeOK || id == "" {
		t.Errorf("a valid token from another address: %s, want enrolled", o)
	}
	// The throttled address, with a valid token, through the real agent.
	if _, id := enroll(t, r.agentAddr, valid); id == "" {
		t.Error("tether-agent enroll from the throttled address printed no agent id")
	}

	// Wrong secrets for one token's id from twelve addresses, one each.
	held := r.token(t, "acme")
	var byID []string
	for i := range 12 {
		o, _ := enrolTry(t, fmt.Sprintf("127.0.2.%d", i+1), r.agentAddr, forgedToken(t, held, true))
		byID = append(byID, o)
		if o == outcomeRateLimited {
			throttled++
		}
	}
	refused += len(byID)
	if byID[0] != "invalid_token" || byID[11] != outcomeRateLimited {
		t.Errorf("wrong secrets for one token id from twelve addresses: %v; want invalid_token, then rate_limited", byID)
	}
	if o, _ := enrolTry(t, "127.0.2.13", r.agentAddr, held); o != outcomeOK {
		t.Errorf("the token's holder while its id is throttled: %s, want enrolled", o)
	}

	if got := metricSum(t, metricsURL, "tether_auth_refusals_total", `door="enrol"`); got != float64(refused) {
		t.Errorf("tether_auth_refusals_total{door=enrol} = %v, want %d", got, refused)
	}
	if got := metricSum(t, metricsURL, "tether_auth_refusals_total", `door="enrol"`, `reason="throttled"`); got != float64(throttled) {
		t.Errorf("tether_auth_refusals_total{door=enrol,reason=throttled} = %v, want %d", got, throttled)
	}

	if err := r.stop(30 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	// Each source's first refusals are audited one by one (agent.enrol),
	// the rest summed (auth.refused): together they count every refusal.
	heldTok, _ := protocol.ParseJoinToken(held)
	audited, summaries, named := 0, 0, false
	for _, rec := range auditRecords(t, r, "--kind", "auth.refused") {
		d, _ := rec["detail"].(map[string]any)
		if d["door"] != "enrol" {
			continue
		}
		summaries++
		c, _ := d["count"].(float64)
		audited += int(c)
		named = named || strings.Contains(fmt.Sprint(d["identities"]), heldTok.IDString())
	}
	oneByOne, enrolled := 0, 0
	for _, rec := range auditRecords(t, r, "--kind", "agent.enrol") {
		switch rec["outcome"] {
		case outcomeOK:
			enrolled++
		case "invalid_token":
			oneByOne++
		default:
			t.Errorf("unexpected enrolment record %v", rec)
		}
	}
	// One by one: the first source's burst (10) and one refusal of each
	// of the ten sources of the id's burst; the throttled ones summed.
	if audited+oneByOne != refused || oneByOne > 20+refill || summaries > 2*3 {
		t.Errorf("%d enrolment refusals audited one by one and %d summaries counting %d; want %d in all, at most %d one by one",
			oneByOne, summaries, audited, refused, 20+refill)
	}
	if !named {
		t.Errorf("no auth.refused record names token %s", heldTok.IDString())
	}
	if enrolled != 3 {
		t.Errorf("%d enrolments audited, want 3", enrolled)
	}
}

// rawSession is an agent session opened by hand over TCP+yamux: it
// answers the relay's pings, hands every other message over, and resets
// every stream the relay opens (which the relay then opens elsewhere).
type rawSession struct {
	sess      *tcp.Session
	ctl       transport.Stream
	mu        sync.Mutex // serialises writes to ctl
	msgs      chan protocol.Message
	wg        sync.WaitGroup // the reader and the stream refuser
	closeOnce sync.Once
	first     protocol.Message // the answer to the hello
}

// close ends the session and waits for its goroutines.
func (s *rawSession) close() {
	s.closeOnce.Do(func() {
		s.sess.Close()
		s.wg.Wait()
	})
}

// openSession connects to r with cert and says hello (with no boot id,
// as an agent of an earlier version). The session is closed when the test
// ends.
func openSession(t *testing.T, r *relayProc, cert tls.Certificate) *rawSession {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, filepath.Join(r.dataDir, "ca", "ca.crt")))
	conf := identity.AgentClientConfig(roots, "tether.internal", func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := tcp.Dial(ctx, nil, r.agentAddr, conf, tcp.Config(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	s := &rawSession{sess: sess, msgs: make(chan protocol.Message, 16)}
	t.Cleanup(s.close)
	if s.ctl, err = sess.OpenStream(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.send(&protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "test", OS: "linux", Arch: "amd64"}); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(s.ctl)
	s.ctl.SetDeadline(time.Now().Add(10 * time.Second))
	if s.first, err = protocol.ReadMessage(br); err != nil {
		t.Fatal(err)
	}
	s.ctl.SetDeadline(time.Time{})
	s.wg.Go(func() {
		for {
			st, err := sess.AcceptStream(context.Background())
			if err != nil {
				return
			}
			st.Close()
		}
	})
	s.wg.Go(func() {
		defer close(s.msgs)
		for {
			m, err := protocol.ReadMessage(br)
			if err != nil {
				return
			}
			if p, ok := m.(*protocol.Ping); ok {
				s.send(&protocol.Pong{Seq: p.Seq})
				continue
			}
			select {
			case s.msgs <- m:
			default: // nobody waits for it
			}
		}
	})
	return s
}

// send writes a control message (the relay reads its control streams at
// once: no deadline is needed on loopback).
func (s *rawSession) send(m protocol.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return protocol.WriteMessage(s.ctl, m)
}

// renew asks for a certificate for a fresh key and returns the answer.
func (s *rawSession) renew(t *testing.T) *protocol.RenewResponse {
	t.Helper()
	if err := s.send(&protocol.RenewRequest{CSR: newCSR(t)}); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(20 * time.Second)
	for {
		select {
		case m, ok := <-s.msgs:
			if !ok {
				t.Fatal("the session ended before the renewal's answer")
			}
			if resp, ok := m.(*protocol.RenewResponse); ok {
				return resp
			}
		case <-timeout:
			t.Fatal("no answer to the renewal request within 20 s")
		}
	}
}

// detailIs matches audit records of kind and outcome whose detail has
// key = value.
func detailIs(kind, outcome, key, value string) func(map[string]any) bool {
	return func(m map[string]any) bool {
		d, _ := m["detail"].(map[string]any)
		return m["kind"] == kind && m["outcome"] == outcome && d != nil && fmt.Sprint(d[key]) == value
	}
}

// The relay accepts only an agent's newest certificate. A copy of an
// agent's key pair connected before the agent renewed cannot renew on
// that session; once the agent uses its new certificate, the copy is
// refused at the handshake as certificate_superseded and audited as
// agent.stale_certificate, while the agent keeps serving. An agent that
// stopped between receiving its new certificate and installing it comes
// back on the old one during the overlap, and renews.
func TestClonedAgentCertificateIsRefused(t *testing.T) {
	// 60 s certificates: renewed about 40 s after they were issued.
	r := startRelay(t, relayOpts{extra: []string{"--agent-cert-lifetime", "60s"}})
	r.addTenant(t, "acme")
	d := r.backend(t, "billing", "acme")
	a := startAgent(t, r, "acme", agentOpts{transport: "tcp", services: map[string]string{"echo": tcpService(t, echo)}})
	b := startAgent(t, r, "acme", agentOpts{transport: "tcp", services: map[string]string{"echo": tcpService(t, echo)}})
	copied := readKeyPair(t, a.stateDir)
	oldSerial := copied.Leaf.SerialNumber.Text(16)
	bFiles := map[string][]byte{}
	for _, f := range []string{"agent.crt", "agent.key"} {
		raw, err := os.ReadFile(filepath.Join(b.stateDir, f))
		if err != nil {
			t.Fatal(err)
		}
		bFiles[f] = raw
	}
	bOld := readCert(t, filepath.Join(b.stateDir, "agent.crt")).SerialNumber.Text(16)

	waitDial(t, d, echoTarget, 15*time.Second).Close()
	// The copy connects while its certificate is the agent's newest.
	clone := openSession(t, r, copied)
	if _, ok := clone.first.(*protocol.Welcome); !ok {
		t.Fatalf("the copy before the agent renewed: answered %#v, want welcome", clone.first)
	}

	a.waitOutput(`"msg":"certificate renewed"`, 90*time.Second)
	b.waitOutput(`"msg":"certificate renewed"`, 30*time.Second)
	newSerial := readCert(t, filepath.Join(a.stateDir, "agent.crt")).SerialNumber.Text(16)

	// The copy's session stands on the replaced certificate: no renewal.
	resp := clone.renew(t)
	if resp.Code != protocol.CodeCertSuperseded.String() || !strings.Contains(resp.Message, newSerial) {
		t.Errorf("a renewal over the copy's session: %s: %s; want certificate_superseded naming %s", resp.Code, resp.Message, newSerial)
	}
	waitAudit(t, r, "the refused renewal", detailIs("agent.stale_certificate", "certificate_superseded", "door", "renew"), "--agent", a.id)
	clone.close()

	// The agent restarts on its new certificate: its first use ends the
	// overlap, and the copy is refused at the handshake.
	if err := a.stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	a.restart()
	waitAudit(t, r, "the agent on its new certificate", detailIs("agent.connect", "ok", "cert_serial", newSerial), "--agent", a.id)
	m, err := helloWith(t, r, copied)
	if err != nil {
		t.Fatal(err)
	}
	if rej, ok := m.(*protocol.Reject); !ok || rej.Code != protocol.CodeCertSuperseded.String() {
		t.Fatalf("the copy after the agent used its new certificate: answered %#v, want certificate_superseded", m)
	}
	waitAudit(t, r, "the copy refused", detailIs("agent.stale_certificate", "certificate_superseded", "cert_serial", oldSerial), "--agent", a.id)

	// The agent keeps serving, and was never refused.
	for i := range 5 {
		c := waitDial(t, d, echoTarget, 10*time.Second)
		echoOnce(t, c, fmt.Sprint("after the copy ", i))
		c.Close()
	}
	if strings.Contains(a.out.String(), "certificate_superseded") {
		t.Errorf("the agent was refused its own certificate:\n%s", a.out.String())
	}

	// The other agent stopped before installing its new certificate: it
	// comes back on the old one during the overlap, and renews at once
	// (its old certificate is well past two thirds of its life).
	if err := b.stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	for f, raw := range bFiles {
		if err := os.WriteFile(filepath.Join(b.stateDir, f), raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b.restart()
	waitAudit(t, r, "the agent back on its replaced certificate", detailIs("agent.connect", "ok", "cert_serial", bOld), "--agent", b.id)
	waitCount(t, b.proc, `"msg":"certificate renewed"`, 2, 30*time.Second)
	waitAudit(t, r, "its renewal", detailIs("agent.renew", "ok", "replaced_serial", bOld), "--agent", b.id)
	if strings.Contains(b.out.String(), "certificate_superseded") {
		t.Errorf("the agent that stopped before installing its certificate was refused:\n%s", b.out.String())
	}
}

// A renewal storm from one agent session: the certificate is fresh, so
// renewals are not due, and the agent gets its burst of 3; the rest are
// refused rate_limited, counted, and summed in at most two audit records
// in the interval. The session stays up.
func TestRenewalStormIsLimited(t *testing.T) {
	r := startRelay(t, relayOpts{extra: []string{"--metrics-listen", "127.0.0.1:0"}})
	metricsURL := "http://" + servingAddrs(t, r)["metrics_addr"]
	r.addTenant(t, "acme")
	stateDir, id := enroll(t, r.agentAddr, r.token(t, "acme"))
	s := openSession(t, r, readKeyPair(t, stateDir))
	if _, ok := s.first.(*protocol.Welcome); !ok {
		t.Fatalf("hello: answered %#v, want welcome", s.first)
	}
	const storm = 20
	var got []string
	serials := map[string]bool{}
	for range storm {
		resp := s.renew(t)
		if resp.Code != "" {
			got = append(got, resp.Code)
			continue
		}
		got = append(got, outcomeOK)
		c, err := parsePEMCertificate(resp.Certificate)
		if err != nil {
			t.Fatal(err)
		}
		if a, err := identity.AgentFromCertificate(c, "tether.internal"); err != nil || a.ID != id {
			t.Errorf("renewed certificate names %v (%v), want agent %s", c.URIs, err, id)
		}
		serials[c.SerialNumber.Text(16)] = true
	}
	n := map[string]int{}
	for _, o := range got {
		n[o]++
	}
	if n[outcomeOK] != 3 || n[outcomeRateLimited] != storm-3 || len(serials) != 3 {
		t.Fatalf("a storm of %d renewals answered %v (%d distinct certificates); want 3 renewed, the rest rate_limited", storm, got, len(serials))
	}
	if got := metricSum(t, metricsURL, "tether_auth_refusals_total", `door="renew"`, `reason="throttled"`); got != storm-3 {
		t.Errorf("tether_auth_refusals_total{door=renew,reason=throttled} = %v, want %d", got, storm-3)
	}
	// The refusals did not end the session.
	if resp := s.renew(t); resp.Code != outcomeRateLimited {
		t.Errorf("one more renewal on the session: %q, want rate_limited", resp.Code)
	}

	if err := r.stop(30 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	ok, refusals, counted := 0, 0, 0
	for _, rec := range auditRecords(t, r, "--kind", "agent.renew", "--agent", id) {
		switch rec["outcome"] {
		case "ok":
			ok++
		case outcomeRateLimited:
			refusals++
			d, _ := rec["detail"].(map[string]any)
			c, _ := d["count"].(float64)
			counted += int(c)
		default:
			t.Errorf("unexpected renewal record %v", rec)
		}
	}
	if ok != 3 || refusals > 2 || counted != storm-2 {
		t.Errorf("renewal records: %d ok, %d refusals counting %d; want 3 ok and at most 2 refusals counting %d", ok, refusals, counted, storm-2)
	}
}

// parsePEMCertificate parses the first certificate of a PEM chain.
func parsePEMCertificate(s string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("no certificate in %q", s)
	}
	return x509.ParseCertificate(b.Bytes)
}
