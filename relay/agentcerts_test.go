package relay

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/quic"
	"github.com/tetherhq/tether/protocol/transport/tcp"
)

// tryHello connects cert to r over transport tr and says hello: nil once
// welcomed (the session is closed at once), else the TLS handshake's or
// the hello's refusal.
func tryHello(r *Relay, tr string, cert *tls.Certificate) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sess, err := dialAgentPort(ctx, r, tr, cert)
	if err != nil {
		return err
	}
	defer sess.Close()
	ctl, err := sess.OpenStream(ctx)
	if err != nil {
		return err
	}
	if err := protocol.WriteMessage(ctl, &protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "test", OS: "linux", Arch: "amd64", BootID: "b1"}); err != nil {
		return err
	}
	m, err := protocol.ReadMessage(bufio.NewReader(ctl))
	if err != nil {
		return err
	}
	if rej, ok := m.(*protocol.Reject); ok {
		return rej.Err()
	}
	return nil
}

// dialAgentPort connects to r's agent port over transport tr ("tcp" or
// "quic") as the agent of cert, trusting every root of r's CA.
func dialAgentPort(ctx context.Context, r *Relay, tr string, cert *tls.Certificate) (transport.Session, error) {
	roots := x509.NewCertPool()
	for _, root := range r.auth.CA().Roots() {
		roots.AddCert(root.Cert)
	}
	conf := identity.AgentClientConfig(roots, r.TrustDomain(), func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil })
	if tr == "quic" {
		return quic.Dial(ctx, r.AgentAddr().String(), conf, quic.Config(16))
	}
	return tcp.Dial(ctx, nil, r.AgentAddr().String(), conf, tcp.Config(slog.New(slog.DiscardHandler)))
}

// caKeyOf reads the key of r's CA root of generation gen from its data
// directory dir: what only the CA's holder has, to make certificates the
// CA itself never issues.
func caKeyOf(t *testing.T, dir, file string) crypto.Signer {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "ca", file))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(raw)
	if b == nil {
		t.Fatalf("%s: no PEM", file)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(crypto.Signer)
}

// issueWith makes, with the CA root cert and its key, a client
// certificate naming uris.
func issueWith(t *testing.T, root *x509.Certificate, key crypto.Signer, uris ...string) *tls.Certificate {
	t.Helper()
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "a1"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, &leafKey.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: leafKey, Leaf: leaf}
}

// The agent port takes only certificates from an active root of the
// relay's CA that name exactly one agent of its own trust domain, over
// TCP and QUIC alike. Even signed with the CA's own key (which the CA
// never does for these), a certificate naming another trust domain,
// two identities, a backend, a relay of the cluster or none is refused at
// the TLS handshake; so is the agent's own certificate once its root is
// retired. One naming the agent that the relay did not issue it as its
// newest is refused as superseded.
func TestAgentPortTakesOneAgentIdentityOfItsTrustDomain(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r := runRelay(t, Config{DataDir: dir, AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off, DrainTimeout: time.Millisecond})
	a := openAdmin(t, dir, "acme")
	td := r.TrustDomain()
	id := identity.Agent{TrustDomain: td, Tenant: "acme", ID: "a1"}
	own := recordedAgent(t, r, id, r.auth.CA().Signer())
	root := r.auth.CA().Signer().Cert
	key := caKeyOf(t, dir, "ca.key")

	transports := []string{"tcp", "quic"}
	for _, tr := range transports {
		if err := tryHello(r, tr, own); err != nil {
			t.Fatalf("%s: the agent's own certificate: %v", tr, err)
		}
		// Another certificate of the CA for the agent, which the relay
		// did not record as the agent's newest: superseded.
		if err := tryHello(r, tr, issueWith(t, root, key, id.String())); !errors.Is(err, protocol.ErrCertSuperseded) {
			t.Fatalf("%s: a certificate of the CA naming the agent, not its newest: %v, want certificate_superseded", tr, err)
		}
	}
	for name, uris := range map[string][]string{
		"another trust domain": {"spiffe://evil.example/tenant/acme/agent/a1"},
		"two identities":       {id.String(), "spiffe://" + td + "/tenant/globex/agent/a1"},
		"two of the same":      {id.String(), id.String()},
		"a backend":            {"spiffe://" + td + "/backend/billing"},
		"a relay of a cluster": {"spiffe://" + td + "/relay/relay-1"},
		"the relay":            {identity.RelayURI(td).String()},
		"no identity":          nil,
		"a query":              {id.String() + "?tenant=globex"},
	} {
		cert := issueWith(t, root, key, uris...)
		for _, tr := range transports {
			err := tryHello(r, tr, cert)
			if err == nil {
				t.Errorf("%s over %s: welcomed", name, tr)
				continue
			}
			t.Logf("%s over %s: %v", name, tr, err)
		}
	}

	// The root is retired (forced: the agent is still on it).
	if _, err := a.RotateCA(ctx, false); err != nil {
		t.Fatal(err)
	}
	r.rotation.Apply(ctx)
	if _, err := a.RetireCA(ctx, true); err != nil {
		t.Fatal(err)
	}
	r.rotation.Apply(ctx)
	for _, tr := range transports {
		if err := tryHello(r, tr, own); err == nil {
			t.Errorf("%s: a certificate of the retired root: welcomed", tr)
		} else {
			t.Logf("the retired root's certificate over %s: %v", tr, err)
		}
	}
}
