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
	"encoding/asn1"
	"encoding/pem"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/audit"
)

// enrolOver sends an enrolment request with token over the relay's agent
// port, authenticating the relay by the CA fingerprint fp (as an agent
// does with the one in its token), and returns the relay's answer.
func enrolOver(t *testing.T, r *Relay, fp [32]byte, token string) protocol.Message {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "agent"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return enrolWith(t, r, fp, token, csr)
}

// enrolWith is enrolOver with the certificate request csr (DER).
func enrolWith(t *testing.T, r *Relay, fp [32]byte, token string, csr []byte) protocol.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := (&tls.Dialer{Config: identity.EnrollClientConfig(fp)}).DialContext(ctx, "tcp", r.AgentAddr().String())
	if err != nil {
		t.Fatalf("enrolment handshake: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	req := &protocol.EnrollRequest{Token: token, CSR: csr, Hostname: "h", OS: "linux", Arch: "amd64",
		Capabilities: []string{protocol.CapRootBundle}}
	if err := protocol.WriteMessage(conn, req); err != nil {
		t.Fatal(err)
	}
	m, err := protocol.ReadMessage(bufio.NewReader(conn))
	if err != nil {
		t.Fatalf("enrolment answer: %v", err)
	}
	return m
}

// A join token made before a CA root was retired pins that root, and the
// retirement says it no longer works (ca retire lists it among the tokens
// it invalidates). The fingerprint in the token string is the holder's to
// edit: it is not covered by the secret. A holder who swaps in the new
// root's fingerprint (public: the relay's TLS chain carries it) must not
// enrol with the retired token; what the relay goes by is the root the
// token's record pins. A token made after the retirement still enrols.
func TestRetiredRootTokenCannotBeRepinned(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r := runRelay(t, Config{DataDir: dir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: Off, DrainTimeout: time.Millisecond})
	a := openAdmin(t, dir, "acme")
	oldTok, _, err := a.CreateToken(ctx, "acme", time.Hour, 5)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.RotateCA(ctx, false); err != nil {
		t.Fatal(err)
	}
	r.rotation.Apply(ctx)
	res, err := a.RetireCA(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Tokens) != 1 {
		t.Fatalf("ca retire listed %d invalidated tokens, want the one made before", len(res.Tokens))
	}
	r.rotation.Apply(ctx)
	if r.auth.CA().Rotating() {
		t.Fatal("the relay did not apply the retirement")
	}
	newRoot := r.auth.CA().Serving()

	tok, err := protocol.ParseJoinToken(oldTok)
	if err != nil {
		t.Fatal(err)
	}
	tok.CAFingerprint = newRoot.Fingerprint()
	m := enrolOver(t, r, newRoot.Fingerprint(), tok.String())
	if resp, ok := m.(*protocol.EnrollResponse); ok {
		t.Fatalf("a token invalidated by the retirement of its root, re-pinned to the new root, enrolled agent %s/%s", resp.Tenant, resp.AgentID)
	}
	rej, ok := m.(*protocol.Reject)
	if !ok || rej.Code != protocol.CodeInvalidToken.String() {
		t.Fatalf("re-pinned retired token: answered %#v, want invalid_token", m)
	}
	if info, err := a.Tokens(ctx, "acme"); err != nil || len(info) != 1 || info[0].Uses != 0 {
		t.Fatalf("tokens after the refusal: %+v, %v; want the old one unused", info, err)
	}

	// A token made now pins the new root, and enrols.
	fresh, _, err := a.CreateToken(ctx, "acme", time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	if m := enrolOver(t, r, newRoot.Fingerprint(), fresh); m.Type() != protocol.TypeEnrollResponse {
		t.Fatalf("a token made after the retirement: answered %#v, want an enrolment", m)
	}
}

// What an enrolling client controls is its certificate request: its
// subject, names and extensions are its own. None of it reaches the
// certificate, which names only the identity the relay chose in the
// token's tenant, for client authentication, not a CA; the key types and
// sizes the relay does not accept are refused without spending the token.
func TestEnrolmentTakesOnlyTheKeyFromTheRequest(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r := runRelay(t, Config{DataDir: dir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: Off, DrainTimeout: time.Millisecond})
	a := openAdmin(t, dir)
	for _, tenant := range []string{"acme", "globex"} {
		if err := a.AddTenant(ctx, tenant); err != nil {
			t.Fatal(err)
		}
	}
	tok, _, err := a.CreateToken(ctx, "acme", time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	fp := r.auth.CA().Serving().Fingerprint()

	// Refused requests: the token keeps its one use.
	weak, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	weakCSR, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, weak)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forged, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, other)
	if err != nil {
		t.Fatal(err)
	}
	forged[len(forged)-1] ^= 1 // the signature no longer matches: a key it does not hold
	for name, csr := range map[string][]byte{"P-224 key": weakCSR, "bad signature": forged, "not DER": []byte("csr")} {
		if m := enrolWith(t, r, fp, tok, csr); m.Type() != protocol.TypeReject || m.(*protocol.Reject).Code != protocol.CodeBadRequest.String() {
			t.Errorf("%s: answered %#v, want bad_request", name, m)
		}
	}
	if info, err := a.Tokens(ctx, "acme"); err != nil || info[0].Uses != 0 {
		t.Fatalf("token after the refused requests: %+v, %v; want it unused", info, err)
	}

	// A request that asks for everything it can.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	globex, _ := url.Parse("spiffe://" + r.TrustDomain() + "/tenant/globex/agent/victim")
	relayURI := identity.RelayURI(r.TrustDomain())
	isCA, _ := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{true})
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "victim", OrganizationalUnit: []string{"globex"}},
		DNSNames:       []string{identity.RelayDNSName, "localhost"},
		EmailAddresses: []string{"ops@globex.example"},
		IPAddresses:    []net.IP{net.IPv4(127, 0, 0, 1)},
		URIs:           []*url.URL{globex, relayURI},
		ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: isCA}, // basic constraints: CA
		},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	m := enrolWith(t, r, fp, tok, csr)
	resp, ok := m.(*protocol.EnrollResponse)
	if !ok {
		t.Fatalf("answered %#v, want an enrolment", m)
	}
	block, _ := pem.Decode([]byte(resp.Certificate))
	if block == nil {
		t.Fatal("no certificate in the answer")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	want := identity.Agent{TrustDomain: r.TrustDomain(), Tenant: "acme", ID: resp.AgentID}
	if resp.Tenant != "acme" || len(cert.URIs) != 1 || cert.URIs[0].String() != want.String() {
		t.Errorf("certificate names %v (tenant %q in the answer), want only %s", cert.URIs, resp.Tenant, want)
	}
	if len(cert.DNSNames)+len(cert.EmailAddresses)+len(cert.IPAddresses) != 0 || cert.Subject.CommonName != resp.AgentID ||
		len(cert.Subject.OrganizationalUnit) != 1 || cert.Subject.OrganizationalUnit[0] != "acme" {
		t.Errorf("certificate carries the request's names: subject %v, DNS %v, email %v, IP %v", cert.Subject, cert.DNSNames, cert.EmailAddresses, cert.IPAddresses)
	}
	if cert.IsCA || cert.KeyUsage != x509.KeyUsageDigitalSignature || len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("certificate: CA %v, key usage %v, extended %v; want not a CA, digital signature, client authentication only", cert.IsCA, cert.KeyUsage, cert.ExtKeyUsage)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		t.Error("certificate is not for the request's key")
	}
	if got, err := r.auth.VerifyAgent([]*x509.Certificate{cert}, time.Now()); err != nil || got != want {
		t.Errorf("the relay takes the certificate for %+v (%v), want %+v", got, err, want)
	}
}

// A join token that is used up (or expired) is no longer guarded as a
// secret: a single-use token is pasted into tickets and install logs once
// spent. Enrolments with it are refused token_used_up as before, every
// time (it is not throttled: its holder asks why), but its holder cannot
// write an audit record for each: a source's first refusals are audited
// one by one, in the token's tenant's trail, and the rest summed per
// source, as the refusals of wrong tokens are.
func TestSpentJoinTokenRefusalsAreSummed(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r, stop := startRelay(t, Config{DataDir: dir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: Off, DrainTimeout: time.Millisecond})
	a := openAdmin(t, dir, "acme")
	tok, info, err := a.CreateToken(ctx, "acme", time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	fp := r.auth.CA().Serving().Fingerprint()
	if m := enrolOver(t, r, fp, tok); m.Type() != protocol.TypeEnrollResponse {
		t.Fatalf("the token's one use: answered %#v", m)
	}
	const spent = 40
	start := time.Now()
	for i := range spent {
		m := enrolOver(t, r, fp, tok)
		if rej, ok := m.(*protocol.Reject); !ok || rej.Code != protocol.CodeTokenUsedUp.String() {
			t.Fatalf("enrolment %d with the used-up token: answered %#v, want token_used_up", i, m)
		}
	}
	single := 10 + int(time.Since(start)/(5*time.Second)) // a source's burst, then one every 5 s
	stop()                                                // the sums of the interval are written as the relay stops

	var one, summed, counted int
	for _, kind := range []string{audit.Enrol, audit.AuthRefused} {
		recs, err := a.Audit(ctx, admin.AuditFilter{Kind: kind, Limit: 10000})
		if err != nil {
			t.Fatal(err)
		}
		for _, rec := range recs {
			if rec.Outcome != protocol.CodeTokenUsedUp.String() {
				continue
			}
			if rec.Tenant != "acme" {
				t.Errorf("a refusal of acme's token in the trail of %q: %+v", rec.Tenant, rec)
			}
			if c, ok := rec.Detail["count"].(float64); ok {
				summed++
				counted += int(c)
				if ids, _ := rec.Detail["identities"].([]any); len(ids) != 1 || ids[0] != info.ID {
					t.Errorf("summed refusal names tokens %v, want %s", rec.Detail["identities"], info.ID)
				}
				continue
			}
			one++
			counted++
		}
	}
	t.Logf("%d enrolments with a used-up token: %d audit records one by one, %d summed", spent, one, summed)
	if one > single || summed > 2 || counted != spent {
		t.Errorf("%d enrolments with a used-up token: %d records one by one, %d summed, counting %d; want at most %d one by one, at most 2 summed, counting all",
			spent, one, summed, counted, single)
	}
}
