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
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/admin"
)

// enrolOver sends an enrolment request with token over the relay's agent
// port, authenticating the relay by the CA fingerprint fp (as an agent
// does with the one in its token), and returns the relay's answer.
func enrolOver(t *testing.T, r *Relay, fp [32]byte, token string) protocol.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := (&tls.Dialer{Config: identity.EnrollClientConfig(fp)}).DialContext(ctx, "tcp", r.AgentAddr().String())
	if err != nil {
		t.Fatalf("enrolment handshake: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "agent"}}, key)
	if err != nil {
		t.Fatal(err)
	}
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
	a, err := admin.Open(ctx, admin.Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.AddTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
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
