package frontdoor

// Microbenchmarks of the front doors' per-stream hot paths.
// scripts/bench/micro runs them and compares two revisions with benchstat.

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/credential"
	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/metrics"
	"github.com/tetherhq/tether/relay/internal/policy"
	"github.com/tetherhq/tether/relay/internal/route"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/throttle"
)

// benchDoors is a front-door server with a data directory (store) and an
// empty routing table, but no listeners: enough for the code paths
// measured here.
func benchDoors(b testing.TB) *Server {
	b.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	dir, _, err := datadir.Open(ctx, b.TempDir(), datadir.Options{TrustDomain: "bench.test"}, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dir.Close() })
	routes := route.NewTable()
	cfg := Config{StreamOpenTimeout: 10 * time.Second, Store: dir.Store, Policy: policy.New(log), Routes: routes,
		Router:  route.NewRouter(route.Config{Table: routes, StreamOpenTimeout: 10 * time.Second, Dir: dir, Logger: log, Now: time.Now}),
		Metrics: metrics.New(nil, throttle.NewRefusals()), Logger: log, Now: time.Now}
	fd, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return fd
}

// okCarrier is a carrier whose streams answer every stream header with
// an OK reply at once, so that only the relay's own work is measured.
type okCarrier struct {
	tenant, agent string
	open          atomic.Int64
}

func (c *okCarrier) OpenStream(_ context.Context, hdr protocol.StreamHeader, _ route.Early, _ func() bool) (transport.Stream, error) {
	st := &okStream{}
	if err := protocol.WriteStreamHeader(st, hdr); err != nil {
		return nil, err
	}
	rep, err := protocol.ReadReply(st)
	if err != nil {
		return nil, err
	}
	if err := rep.Err(); err != nil {
		return nil, err
	}
	c.open.Add(1)
	return st, nil
}

func (c *okCarrier) StreamDone()           { c.open.Add(-1) }
func (c *okCarrier) Usable(time.Time) bool { return true }
func (c *okCarrier) Load() int64           { return c.open.Load() }
func (c *okCarrier) Stalled() bool         { return false }
func (c *okCarrier) Agent() string         { return c.agent }
func (c *okCarrier) Tenant() string        { return c.tenant }

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

// BenchmarkAuthenticate measures a front door authenticating a backend by
// name and API key: from the cache (the usual case), with a wrong key, and
// with an unknown name (remembered as unknown after the first read).
func BenchmarkAuthenticate(b *testing.B) {
	fd := benchDoors(b)
	ctx := context.Background()
	now := time.Now()
	if err := fd.cfg.Store.AddTenant(ctx, "acme", now); err != nil {
		b.Fatal(err)
	}
	const key = "tk_8c1f0d5e7a9b3c2d4e6f8a0b1c3d5e7f"
	if err := fd.cfg.Store.AddBackend(ctx, store.Backend{Name: "billing", KeyHash: credential.Hash(key), Grants: []store.Grant{{Tenant: "acme", Service: store.Any}}, CreatedAt: now}); err != nil {
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
				c, err := fd.authenticate(ctx, "192.0.2.1:1", tc.backend, tc.key)
				if (err == nil) != tc.ok || (tc.ok && c.name != tc.backend) {
					b.Fatalf("authenticate = %+v, %v", c, err)
				}
			}
		})
	}
}

// BenchmarkDial measures the relay's whole stream open short of the
// network: parse the target, authorize, tenant limits, pick an agent
// connection, open a stream, write the stream header and read the agent's
// OK reply. The carrier answers at once.
func BenchmarkDial(b *testing.B) {
	fd := benchDoors(b)
	fd.cfg.Routes.Add(&okCarrier{tenant: "acme", agent: "a1"})
	fd.cfg.Routes.Add(&okCarrier{tenant: "acme", agent: "a2"})
	c := &caller{name: "billing", grants: []policy.Grant{{Tenant: "acme", Service: "*"}}, via: viaAPIKey}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		tun, err := fd.dial(ctx, c, "postgres.acme.tether:5432", credential.NewRequestID(), nil)
		if err != nil {
			b.Fatal(err)
		}
		tun.Abandon()
		tun.release()
	}
}

// BenchmarkRecord measures the audit record of a stream that ended,
// opened at the first attempt on a connection of an agent to this relay
// (its session named): the record of every stream.
func BenchmarkRecord(b *testing.B) {
	c := &sessionCarrier{okCarrier: okCarrier{tenant: "acme", agent: "a1"}, id: "0123456789abcdef"}
	t := &tunnel{Tunnel: &route.Tunnel{Carrier: c, Agent: "a1", Opened: time.Now()}, requestID: "3f2a9c0d1e4b5a67",
		target: route.Target{Tenant: "acme", Service: "postgres"}, caller: &caller{name: "billing", via: viaAPIKey}}
	b.ReportAllocs()
	for b.Loop() {
		if rec := t.record("connect", audit.OutcomeOK, 10, 20); rec.Tenant != "acme" {
			b.Fatalf("record = %+v", rec)
		}
	}
}

// sessionCarrier is an okCarrier that names its session, as an agent's
// connection to the relay does.
type sessionCarrier struct {
	okCarrier
	id string
}

func (c *sessionCarrier) SessionID() string { return c.id }
