package relay

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// openAdmin opens the admin of the relay data directory dir until the test
// ends, and adds tenants to it.
func openAdmin(t *testing.T, dir string, tenants ...string) *admin.Admin {
	t.Helper()
	a, err := admin.Open(context.Background(), admin.Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	for _, name := range tenants {
		if err := a.AddTenant(context.Background(), name); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

// runRelay runs a relay with cfg until the test ends, when Run must return
// without error; it returns once the relay serves. cfg must name every
// listener that is on by default (a port 0 address or Off): a default port
// would make the test fail wherever a relay runs with its defaults.
func runRelay(t *testing.T, cfg Config) *Relay {
	t.Helper()
	r, _ := startRelay(t, cfg)
	return r
}

// startRelay runs a relay with cfg as runRelay does, and returns with it
// a stop that ends Run and waits for it to return without error (at the
// test's end, if not called before).
func startRelay(t *testing.T, cfg Config) (*Relay, func()) {
	t.Helper()
	if cfg.AgentListen == "" || cfg.SOCKSListen == "" || cfg.ConnectListen == "" {
		t.Fatal("runRelay, startRelay: set AgentListen, SOCKSListen and ConnectListen (127.0.0.1:0 or Off); the defaults are fixed ports")
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Error(err)
				}
			case <-time.After(30 * time.Second):
				t.Error("Run did not return")
			}
		})
	}
	t.Cleanup(stop)
	for deadline := time.Now().Add(20 * time.Second); !r.serving.Load(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("relay never started serving")
		}
	}
	return r, stop
}

// recordedAgent issues agent id of r's CA a certificate of an hour from
// root and records the agent as enrolled with it, as an enrolment would:
// the certificate (with its Leaf) and key an agent would present.
func recordedAgent(t *testing.T, r *Relay, id identity.Agent, root *ca.Root) *tls.Certificate {
	t.Helper()
	return recordedAgentAgo(t, r, id, root, 0)
}

// recordedAgentAgo is recordedAgent with the agent and its certificate
// recorded as issued ago before now (the certificate itself is signed
// now, valid for an hour).
func recordedAgentAgo(t *testing.T, r *Relay, id identity.Agent, root *ca.Root, ago time.Duration) *tls.Certificate {
	t.Helper()
	now := time.Now()
	cert := signedAgent(t, r, id, root, now, time.Hour)
	leaf := cert.Leaf
	if err := r.dir.Store.AddAgent(context.Background(), store.Agent{ID: id.ID, Tenant: id.Tenant, CreatedAt: now.Add(-ago), CertSerial: leaf.SerialNumber.Text(16),
		CertNotAfter: leaf.NotAfter, CertRoot: root.ID(), CertIssuedAt: now.Add(-ago)}); err != nil {
		t.Fatal(err)
	}
	return cert
}

// signedAgent is a certificate for agent id, with a new key, signed by
// root at issued for lifetime; nothing is recorded.
func signedAgent(t *testing.T, r *Relay, id identity.Agent, root *ca.Root, issued time.Time, lifetime time.Duration) *tls.Certificate {
	t.Helper()
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
	leaf, err := r.auth.CA().SignAgent(root, csr, id, lifetime, issued)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
}
