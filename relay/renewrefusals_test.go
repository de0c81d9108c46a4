package relay

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/store"
)

// renewWith sends a renewal request with csr over s and returns its
// answer.
func renewWith(t *testing.T, s *agentSession, csr []byte) *protocol.RenewResponse {
	t.Helper()
	if err := s.send(&protocol.RenewRequest{CSR: csr}); err != nil {
		t.Fatal(err)
	}
	select {
	case resp := <-s.renewed:
		return resp
	case <-time.After(20 * time.Second):
		t.Fatal("no answer to a renewal within 20s")
		return nil
	}
}

// dueAgent issues agent id a certificate from r's signing root and records
// it as issued two hours ago, valid for one more hour: past half its life,
// so that its renewals are due and spend none of the agent's burst.
func dueAgent(t *testing.T, r *Relay, id identity.Agent) *tls.Certificate {
	t.Helper()
	return recordedAgentAgo(t, r, id, r.auth.CA().Signer(), 2*time.Hour)
}

// An agent whose certificate is due for renewal spends none of its burst
// renewing; a renewal it sends with a certificate request the relay
// refuses (malformed, or for a key it does not accept) takes no
// certificate, so the next one is due as well. Such refusals, which the
// agent alone causes and may send as fast as it reads the answers, are
// summed per agent as the other refused renewals are (rate_limited,
// superseded): a few agent.renew records a minute, not one each, so that
// one agent cannot fill the store's audit trail. A good request is
// renewed after them.
func TestRefusedRenewalRequestsAreSummed(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r, stop := startRelay(t, Config{DataDir: dir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: Off, DrainTimeout: time.Millisecond})
	a := openAdmin(t, dir, "acme")
	id := identity.Agent{TrustDomain: r.TrustDomain(), Tenant: "acme", ID: "a1"}
	ag := newTestAgent(t, r, "other")
	ag.cert = dueAgent(t, r, id)
	s, err := ag.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}

	weak, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	weakCSR, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, weak)
	if err != nil {
		t.Fatal(err)
	}
	const flood = 60
	for i := range flood {
		csr := []byte("not a certificate request")
		if i%2 == 1 {
			csr = weakCSR
		}
		if resp := renewWith(t, s, csr); resp.Code != protocol.CodeBadRequest.String() || resp.Certificate != "" {
			t.Fatalf("renewal %d with a bad certificate request: %q %q, want bad_request", i, resp.Code, resp.Message)
		}
	}
	if resp := renewWith(t, s, csrFor(t)); resp.Code != "" || resp.Certificate == "" {
		t.Fatalf("a good renewal after the refused ones: %q %q, want a certificate", resp.Code, resp.Message)
	}
	s.close()
	stop() // the sums of the interval are written as the relay stops

	recs, err := a.Audit(ctx, admin.AuditFilter{Kind: audit.Renew, Agent: id.ID, Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	var ok, refusals, counted int
	for _, rec := range recs {
		switch rec.Outcome {
		case audit.OutcomeOK:
			ok++
		case protocol.CodeBadRequest.String():
			refusals++
			if c, isSum := rec.Detail["count"].(float64); isSum {
				counted += int(c)
			} else {
				counted++
			}
		default:
			t.Errorf("unexpected renewal record: %+v", rec)
		}
	}
	t.Logf("%d refused renewals: %d audit records counting %d", flood, refusals, counted)
	if ok != 1 || refusals > 2 || counted != flood {
		t.Errorf("renewal records: %d ok, %d refusals counting %d; want 1 ok and at most 2 refusals counting %d", ok, refusals, counted, flood)
	}
}

// A session outlives its certificate by up to a heartbeat: the relay
// closes it at its next beat after the expiry. A renewal asked over it
// in that moment must not be answered: the certificate that authenticated
// the session has expired, and an agent whose certificate expired is to be
// enrolled again (certificate_expired), not given a new one. The store
// keeps the agent's record as it was.
func TestRenewalRefusedOnceTheSessionCertificateExpired(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	// A heartbeat long enough that the relay's beat does not close the
	// session before the renewal below is answered.
	r, stop := startRelay(t, Config{DataDir: dir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: Off, DrainTimeout: time.Millisecond,
		HeartbeatInterval: time.Minute})
	a := openAdmin(t, dir, "acme")
	id := identity.Agent{TrustDomain: r.TrustDomain(), Tenant: "acme", ID: "a1"}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ca.CheckCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	// A certificate of two seconds, recorded as the agent's newest.
	root, now := r.auth.CA().Signer(), time.Now()
	leaf, err := r.auth.CA().SignAgent(root, csr, id, 2*time.Second, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.dir.Store.AddAgent(ctx, store.Agent{ID: id.ID, Tenant: id.Tenant, CreatedAt: now, CertSerial: leaf.SerialNumber.Text(16),
		CertNotAfter: leaf.NotAfter, CertRoot: root.ID(), CertIssuedAt: now}); err != nil {
		t.Fatal(err)
	}
	ag := newTestAgent(t, r, "other")
	ag.cert = &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	s, err := ag.connect(ctx)
	if err != nil {
		t.Fatalf("connect before the certificate expires: %v", err)
	}
	// The certificate's expiry is a time, not an event: wait for it.
	time.Sleep(time.Until(leaf.NotAfter.Add(50 * time.Millisecond)))
	if n := r.sessions.Sessions().SessionsOf(id.Tenant, id.ID); n != 1 {
		t.Fatalf("the session is not up after its certificate expired (%d sessions); the test needs it up until the next beat", n)
	}
	resp := renewWith(t, s, csrFor(t))
	if resp.Certificate != "" || resp.Code != protocol.CodeCertExpired.String() {
		t.Fatalf("renewal over a session whose certificate expired at %s: answered %q %q with a certificate of %d bytes; want certificate_expired and none",
			leaf.NotAfter.UTC().Format(time.RFC3339Nano), resp.Code, resp.Message, len(resp.Certificate))
	}
	if rec, err := r.dir.Store.Agent(ctx, id.ID); err != nil || rec.CertSerial != leaf.SerialNumber.Text(16) {
		t.Fatalf("the agent's record after the refused renewal: %+v, %v; want it unchanged", rec, err)
	}
	s.close()
	stop()
	recs, err := a.Audit(ctx, admin.AuditFilter{Kind: audit.Renew, Agent: id.ID, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Outcome != protocol.CodeCertExpired.String() {
		t.Errorf("renewal records: %+v; want one, certificate_expired", recs)
	}
}
