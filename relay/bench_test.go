package relay

// Microbenchmarks of the relay's per-stream and per-handshake hot paths.
// scripts/bench/micro runs them and compares two revisions with benchstat.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/credential"
	"github.com/tetherhq/tether/relay/internal/policy"
	"github.com/tetherhq/tether/relay/internal/store"
)

// benchSession is an agent session that is always up and whose streams
// answer every stream header with an OK reply at once, so that only the
// relay's own work is measured.
type benchSession struct{ done chan struct{} }

func newBenchSession() *benchSession { return &benchSession{done: make(chan struct{})} }

func (s *benchSession) OpenStream(context.Context) (transport.Stream, error) {
	return &okStream{}, nil
}

func (s *benchSession) AcceptStream(ctx context.Context) (transport.Stream, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (s *benchSession) Close() error          { return nil }
func (s *benchSession) Done() <-chan struct{} { return s.done }

// okStream reads as the agent's OK reply to a stream header; writes are
// discarded.
type okStream struct{ off int }

var okReply = []byte{1, byte(protocol.CodeOK), 0, 0} // version, code, empty message

func (s *okStream) Read(p []byte) (int, error) {
	if s.off == len(okReply) {
		return 0, io.EOF
	}
	n := copy(p, okReply[s.off:])
	s.off += n
	return n, nil
}

func (s *okStream) Write(p []byte) (int, error)     { return len(p), nil }
func (s *okStream) CloseWrite() error               { return nil }
func (s *okStream) Close() error                    { return nil }
func (s *okStream) SetDeadline(time.Time) error     { return nil }
func (s *okStream) SetReadDeadline(time.Time) error { return nil }

var discardLog = slog.New(slog.DiscardHandler)

// benchConn is a connected, healthy agent connection of tenant.
func benchConn(tenant, id string) *agentConn {
	c := &agentConn{id: identity.Agent{TrustDomain: "bench.test", Tenant: tenant, ID: id}, sess: newBenchSession(), transport: "quic", log: discardLog}
	c.lastHeard.Store(time.Now().UnixNano())
	return c
}

// BenchmarkRegistryPick measures choosing an agent connection for a stream
// open: tenant-N has N connections of the one tenant asked for; fleet-N has
// N connections spread over N/2 tenants of two connections each (the usual
// shape: every agent keeps two connections) and asks for one of them.
func BenchmarkRegistryPick(b *testing.B) {
	const hb = 10 * time.Second
	for _, tc := range []struct {
		name             string
		tenants, perTent int
	}{
		{"tenant-1", 1, 1},
		{"tenant-100", 1, 100},
		{"tenant-10000", 1, 10000},
		{"fleet-10000", 5000, 2},
	} {
		b.Run(tc.name, func(b *testing.B) {
			g := newRegistry()
			for t := range tc.tenants {
				for i := range tc.perTent {
					c := benchConn(fmt.Sprintf("tenant-%d", t), fmt.Sprintf("agent-%d", i))
					c.open.Store(int64(i % 7)) // streams already open, so the least loaded must be found
					g.add(c)
				}
			}
			want := fmt.Sprintf("tenant-%d", tc.tenants/2)
			b.ReportAllocs()
			for b.Loop() {
				if c := g.pick(want, hb, nil); c == nil || c.id.Tenant != want {
					b.Fatalf("pick = %v", c)
				}
			}
		})
	}
}

// BenchmarkParseTarget parses the address a backend asks for.
func BenchmarkParseTarget(b *testing.B) {
	for _, addr := range []string{"postgres.acme.tether:5432", "postgres.acme.tether"} {
		b.Run(addr, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if t, err := ParseTarget(addr); err != nil || t.Tenant != "acme" {
					b.Fatalf("ParseTarget = %+v, %v", t, err)
				}
			}
		})
	}
}

// benchRelay is a relay with a data directory (CA and store) but no
// listeners: enough for the code paths measured here.
func benchRelay(b *testing.B) *Relay {
	b.Helper()
	cfg := Config{DataDir: b.TempDir(), TrustDomain: "bench.test"}
	cfg.setDefaults()
	ctx := context.Background()
	st, err := openState(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.close() })
	r := &Relay{cfg: cfg, log: cfg.Logger, st: st, reg: newRegistry(), pol: policy.New(cfg.Logger), gate: newHandshakeGate(cfg.MaxHandshakes)}
	r.metrics = newMetrics(r)
	return r
}

// BenchmarkAuthenticate measures a front door authenticating a backend by
// name and API key: from the cache (the usual case), with a wrong key, and
// with an unknown name (never cached, so the store is asked every time).
func BenchmarkAuthenticate(b *testing.B) {
	r := benchRelay(b)
	ctx := context.Background()
	now := time.Now()
	if err := r.st.store.AddTenant(ctx, "acme", now); err != nil {
		b.Fatal(err)
	}
	const key = "tk_8c1f0d5e7a9b3c2d4e6f8a0b1c3d5e7f"
	if err := r.st.store.AddBackend(ctx, store.Backend{Name: "billing", KeyHash: credential.Hash(key), Grants: []store.Grant{{Tenant: "acme", Service: store.Any}}, CreatedAt: now}); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name, backend, key string
		ok                 bool
	}{
		{"cached", "billing", key, true},
		{"wrong-key", "billing", key + "x", false},
		{"unknown-name", "nobody", key, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c, err := r.authenticate(ctx, tc.backend, tc.key)
				if (err == nil) != tc.ok || (tc.ok && c.name != tc.backend) {
					b.Fatalf("authenticate = %+v, %v", c, err)
				}
			}
		})
	}
}

// BenchmarkVerifyAgentChain measures the relay's check of an agent's
// certificate in every agent handshake: chain to the tenant CA, client
// usage, SPIFFE identity in this trust domain.
func BenchmarkVerifyAgentChain(b *testing.B) {
	r := benchRelay(b)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		b.Fatal(err)
	}
	csr, err := ca.CheckCSR(der)
	if err != nil {
		b.Fatal(err)
	}
	want := identity.Agent{TrustDomain: r.TrustDomain(), Tenant: "acme", ID: "k3n5q7s9u2w4y6a8"}
	cert, err := r.st.CA().SignAgent(r.st.CA().Signer(), csr, want, 24*time.Hour, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	chain := []*x509.Certificate{cert}
	b.ReportAllocs()
	for b.Loop() {
		if id, err := r.st.auth.VerifyAgent(chain, r.cfg.Now()); err != nil || id != want {
			b.Fatalf("verifyAgentChain = %+v, %v", id, err)
		}
	}
}

// BenchmarkDial measures the relay's whole stream open short of the
// network: parse the target, authorize, tenant limits, pick an agent
// connection, open a stream, write the stream header and read the agent's
// OK reply. The agent session answers at once.
func BenchmarkDial(b *testing.B) {
	r := &Relay{reg: newRegistry(), pol: policy.New(slog.New(slog.DiscardHandler))}
	r.metrics = newMetrics(r)
	r.cfg.setDefaults()
	r.log = r.cfg.Logger
	r.reg.add(benchConn("acme", "a1"))
	r.reg.add(benchConn("acme", "a2"))
	c := &caller{name: "billing", grants: []policy.Grant{{Tenant: "acme", Service: "*"}}, via: viaAPIKey}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		tun, err := r.dial(ctx, c, "postgres.acme.tether:5432")
		if err != nil {
			b.Fatal(err)
		}
		tun.abandon()
	}
}
