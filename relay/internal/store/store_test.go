package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/pgtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopShared()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

var (
	ctx = context.Background()
	t0  = time.Unix(1_800_000_000, 0).UTC()
)

// engine is a database engine the store's tests run on.
type engine struct {
	name string
	// dsn returns where a new, empty store is: a file path or a URL.
	dsn func(t *testing.T) string
}

// open opens a new, empty store and returns it with its DSN, with which
// a test opens it again, as another process would.
func (e engine) open(t *testing.T) (*Store, string) {
	t.Helper()
	dsn := e.dsn(t)
	s, err := OpenDSN(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dsn
}

var engines = []engine{
	{"sqlite", func(t *testing.T) string { return filepath.Join(t.TempDir(), "tether.db") }},
	// One server for the whole package, a database of its own per test.
	{"postgres", func(t *testing.T) string { return pgtest.Shared(t).CreateDatabase(t) }},
}

// eachEngine runs test on every engine, as subtests named after them.
func eachEngine(t *testing.T, test func(*testing.T, engine)) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) { test(t, e) })
	}
}

func hash(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

func matches(secret string) func([]byte) bool {
	return func(h []byte) bool { return string(h) == string(hash(secret)) }
}

func TestMigrations(t *testing.T) { eachEngine(t, testMigrations) }

func testMigrations(t *testing.T, e engine) {
	s, path := e.open(t)
	v, err := s.SchemaVersion(ctx)
	if err != nil || v != latestMigration() {
		t.Fatalf("SchemaVersion = %d, %v; want %d", v, err, latestMigration())
	}
	if err := s.AddTenant(ctx, "acme", t0); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Reopening applies nothing and keeps the data.
	s2, err := OpenDSN(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := s2.Tenant(ctx, "acme"); err != nil {
		t.Fatalf("tenant lost across reopen: %v", err)
	}
}

func TestConcurrentOpenOfFreshFile(t *testing.T) { eachEngine(t, testConcurrentOpenOfFreshFile) }

func testConcurrentOpenOfFreshFile(t *testing.T, e engine) {
	path := e.dsn(t)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	stores := make([]*Store, 8)
	for i := range stores {
		wg.Go(func() { stores[i], errs[i] = OpenDSN(ctx, path) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Open %d: %v", i, err)
			continue
		}
		if v, err := stores[i].SchemaVersion(ctx); err != nil || v != latestMigration() {
			t.Errorf("Open %d: schema version %d, %v", i, v, err)
		}
		stores[i].Close()
	}
}

func TestTenants(t *testing.T) { eachEngine(t, testTenants) }

func testTenants(t *testing.T, e engine) {
	s, _ := e.open(t)
	for _, n := range []string{"globex", "acme"} {
		if err := s.AddTenant(ctx, n, t0); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddTenant(ctx, "acme", t0); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate tenant: got %v, want ErrExists", err)
	}
	if _, err := s.Tenant(ctx, "nosuch"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing tenant: got %v, want ErrNotFound", err)
	}
	got, err := s.Tenant(ctx, "acme")
	if err != nil || got.Name != "acme" || !got.CreatedAt.Equal(t0) {
		t.Fatalf("Tenant = %+v, %v", got, err)
	}
	list, err := s.ListTenants(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "acme" || list[1].Name != "globex" {
		t.Fatalf("ListTenants = %+v, %v; want acme, globex", list, err)
	}
}

func addToken(t *testing.T, s *Store, id, secret string, uses int, ttl time.Duration) {
	t.Helper()
	if err := s.AddToken(ctx, Token{ID: id, Tenant: "acme", SecretHash: hash(secret), CreatedAt: t0, ExpiresAt: t0.Add(ttl), MaxUses: uses}); err != nil {
		t.Fatal(err)
	}
}

func TestConsumeToken(t *testing.T) { eachEngine(t, testConsumeToken) }

func testConsumeToken(t *testing.T, e engine) {
	s, _ := e.open(t)
	s.AddTenant(ctx, "acme", t0)
	if err := s.AddToken(ctx, Token{ID: "x", Tenant: "nosuch", SecretHash: hash("s"), ExpiresAt: t0.Add(time.Hour), MaxUses: 1}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("token for a missing tenant: got %v, want ErrNotFound", err)
	}
	addToken(t, s, "one", "s1", 1, time.Hour)
	addToken(t, s, "two", "s2", 2, time.Hour)
	addToken(t, s, "old", "s3", 5, time.Hour)
	if err := s.AddToken(ctx, Token{ID: "one", Tenant: "acme", SecretHash: hash("s"), ExpiresAt: t0, MaxUses: 1}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate token id: got %v, want ErrExists", err)
	}
	steps := []struct {
		name     string
		id       string
		secret   string
		now      time.Time
		want     error
		wantUses int
	}{
		{"unknown id", "nosuch", "s1", t0, ErrNotFound, 0},
		{"wrong secret", "one", "bad", t0, ErrTokenSecret, 0},
		{"first use", "one", "s1", t0, nil, 1},
		{"used up", "one", "s1", t0, ErrTokenUsedUp, 0},
		{"wrong secret on used-up token says secret", "one", "bad", t0, ErrTokenSecret, 0},
		{"two: first", "two", "s2", t0, nil, 1},
		{"two: second", "two", "s2", t0.Add(time.Minute), nil, 2},
		{"two: third", "two", "s2", t0, ErrTokenUsedUp, 0},
		{"expired at the boundary", "old", "s3", t0.Add(time.Hour), ErrTokenExpired, 0},
		{"wrong secret on expired token says secret", "old", "bad", t0.Add(2 * time.Hour), ErrTokenSecret, 0},
	}
	for _, st := range steps {
		tok, err := s.ConsumeToken(ctx, st.id, matches(st.secret), st.now, nil)
		if st.want != nil {
			if !errors.Is(err, st.want) {
				t.Fatalf("%s: got %v, want %v", st.name, err, st.want)
			}
			continue
		}
		if err != nil || tok.Uses != st.wantUses || tok.Tenant != "acme" {
			t.Fatalf("%s: got %+v, %v; want uses %d", st.name, tok, err, st.wantUses)
		}
	}
	list, err := s.ListTokens(ctx, "acme")
	if err != nil || len(list) != 3 {
		t.Fatalf("ListTokens = %d tokens, %v", len(list), err)
	}
	for _, tk := range list {
		if tk.SecretHash != nil {
			t.Fatalf("ListTokens leaks the secret hash of %s", tk.ID)
		}
	}
}

// TestEnrolAgent: a join token's use and the agent it enrols are stored
// together or not at all.
func TestEnrolAgent(t *testing.T) { eachEngine(t, testEnrolAgent) }

func testEnrolAgent(t *testing.T, e engine) {
	s, _ := e.open(t)
	s.AddTenant(ctx, "acme", t0)
	addToken(t, s, "one", "s1", 1, time.Hour)
	agent := func(id, tenant string) func(Token) (Agent, error) {
		return func(Token) (Agent, error) {
			return Agent{ID: id, Tenant: tenant, Hostname: "h", CreatedAt: t0, CertSerial: "01", CertNotAfter: t0.Add(time.Hour)}, nil
		}
	}
	uses := func() int {
		t.Helper()
		list, err := s.ListTokens(ctx, "acme")
		if err != nil || len(list) != 1 {
			t.Fatalf("ListTokens = %v, %v", list, err)
		}
		return list[0].Uses
	}
	failed := errors.New("signing failed")
	if _, err := s.EnrolAgent(ctx, "one", matches("s1"), t0, nil, func(Token) (Agent, error) { return Agent{}, failed }); !errors.Is(err, failed) {
		t.Fatalf("register failing: got %v, want its error", err)
	}
	if n := uses(); n != 0 {
		t.Fatalf("a failed registration took a use of the token: uses %d", n)
	}
	if _, err := s.EnrolAgent(ctx, "one", matches("s1"), t0, nil, agent("a2", "other")); err == nil {
		t.Fatal("an agent of another tenant than the token's was registered")
	}
	if err := s.AddAgent(ctx, Agent{ID: "taken", Tenant: "acme", CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EnrolAgent(ctx, "one", matches("s1"), t0, nil, agent("taken", "acme")); !errors.Is(err, ErrExists) {
		t.Fatalf("an agent id already taken: got %v, want ErrExists", err)
	}
	if n := uses(); n != 0 {
		t.Fatalf("refused registrations took uses of the token: uses %d", n)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.EnrolAgent(cctx, "one", matches("s1"), t0, nil, agent("a3", "acme")); err == nil {
		t.Fatal("an enrolment with an ended context succeeded")
	}
	tok, err := s.EnrolAgent(ctx, "one", matches("s1"), t0, nil, agent("a1", "acme"))
	if err != nil || tok.Uses != 1 {
		t.Fatalf("enrolment: got %+v, %v; want uses 1", tok, err)
	}
	if a, err := s.Agent(ctx, "a1"); err != nil || a.Tenant != "acme" {
		t.Fatalf("enrolled agent: %+v, %v", a, err)
	}
	for _, id := range []string{"a2", "a3"} {
		if _, err := s.Agent(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("agent %s of a refused enrolment: %v, want ErrNotFound", id, err)
		}
	}
	if _, err := s.EnrolAgent(ctx, "one", matches("s1"), t0, nil, agent("a4", "acme")); !errors.Is(err, ErrTokenUsedUp) {
		t.Fatalf("second enrolment with a single-use token: got %v, want ErrTokenUsedUp", err)
	}
}

// TestConsumeTokenRace: concurrent consumers — several goroutines on one
// handle and on separate handles (as separate processes would) — never
// overspend a token.
func TestConsumeTokenRace(t *testing.T) { eachEngine(t, testConsumeTokenRace) }

func testConsumeTokenRace(t *testing.T, e engine) {
	for _, uses := range []int{1, 3} {
		s, path := e.open(t)
		s.AddTenant(ctx, "acme", t0)
		addToken(t, s, "tok", "secret", uses, time.Hour)
		other, err := OpenDSN(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		results := make([]error, 50)
		for i := range results {
			h := s
			if i%2 == 1 {
				h = other
			}
			wg.Go(func() { _, results[i] = h.ConsumeToken(ctx, "tok", matches("secret"), t0, nil) })
		}
		wg.Wait()
		other.Close()
		ok := 0
		for _, err := range results {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, ErrTokenUsedUp):
				t.Errorf("uses=%d: unexpected error %v", uses, err)
			}
		}
		if ok != uses {
			t.Fatalf("uses=%d: %d consumers succeeded, want exactly %d", uses, ok, uses)
		}
	}
}

// TestEnrolAgentLimit: enrolments that pass their checks at the same
// moment — on one handle and on another, as on two relays sharing the
// store — take a tenant no further than its limit on agents, because the
// transaction that registers each counts the others: exactly as many
// succeed as there are places left, the rest are refused with
// ErrAgentLimit without taking a use of the token. Revoked agents do not
// count.
func TestEnrolAgentLimit(t *testing.T) { eachEngine(t, testEnrolAgentLimit) }

func testEnrolAgentLimit(t *testing.T, e engine) {
	s, dsn := e.open(t)
	s.AddTenant(ctx, "acme", t0)
	addToken(t, s, "tok", "secret", 10, time.Hour)
	other, err := OpenDSN(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := s.AddAgent(ctx, Agent{ID: "gone", Tenant: "acme", CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeAgent(ctx, "gone", "test", t0); err != nil {
		t.Fatal(err)
	}
	enrolled := 0
	for _, round := range []struct{ limit, enrolments int }{{1, 2}, {3, 4}} {
		// Every enrolment waits in its check for all the others to reach
		// theirs: none has begun its transaction when any counts.
		var arrived sync.WaitGroup
		arrived.Add(round.enrolments)
		allThere := make(chan struct{})
		go func() { arrived.Wait(); close(allThere) }()
		check := func(string) (int, error) {
			arrived.Done()
			select {
			case <-allThere:
			case <-time.After(20 * time.Second):
				t.Error("the enrolments never all reached their checks")
			}
			return round.limit, nil
		}
		var wg sync.WaitGroup
		results := make([]error, round.enrolments)
		for i := range results {
			h := s
			if i%2 == 1 {
				h = other
			}
			id := fmt.Sprintf("l%d-%d", round.limit, i)
			register := func(Token) (Agent, error) {
				return Agent{ID: id, Tenant: "acme", CreatedAt: t0, CertSerial: "01", CertNotAfter: t0.Add(time.Hour)}, nil
			}
			wg.Go(func() { _, results[i] = h.EnrolAgent(ctx, "tok", matches("secret"), t0, check, register) })
		}
		wg.Wait()
		ok := 0
		for _, err := range results {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, ErrAgentLimit):
				t.Errorf("limit %d: unexpected error %v", round.limit, err)
			}
		}
		if want := round.limit - enrolled; ok != want {
			t.Fatalf("limit %d with %d agents enrolled: %d of %d enrolments at once succeeded, want %d (errors %v)",
				round.limit, enrolled, ok, round.enrolments, want, results)
		}
		enrolled += ok
		if n, err := s.CountAgents(ctx, "acme"); err != nil || n != round.limit {
			t.Fatalf("limit %d: %d agents enrolled (%v)", round.limit, n, err)
		}
	}
	if tok, err := s.JoinToken(ctx, "tok"); err != nil || tok.Uses != enrolled {
		t.Fatalf("join token after the enrolments: %+v, %v; want %d uses (refusals take none)", tok, err, enrolled)
	}
	// A limit already reached refuses at once, and says which tenant.
	_, err = s.EnrolAgent(ctx, "tok", matches("secret"), t0, func(string) (int, error) { return 3, nil },
		func(Token) (Agent, error) { return Agent{ID: "late", Tenant: "acme", CreatedAt: t0}, nil })
	if !errors.Is(err, ErrAgentLimit) || !strings.Contains(err.Error(), `"acme"`) {
		t.Fatalf("enrolment past the limit: %v, want ErrAgentLimit naming the tenant", err)
	}
}

func TestAgents(t *testing.T) { eachEngine(t, testAgents) }

func testAgents(t *testing.T, e engine) {
	s, _ := e.open(t)
	s.AddTenant(ctx, "acme", t0)
	s.AddTenant(ctx, "globex", t0)
	long := strings.Repeat("h", 10000)
	for _, a := range []Agent{
		{ID: "b", Tenant: "acme", Hostname: long, CreatedAt: t0, CertSerial: "01", CertNotAfter: t0.Add(time.Hour)},
		{ID: "a", Tenant: "globex", CreatedAt: t0},
		{ID: "c", Tenant: "acme", CreatedAt: t0},
	} {
		if err := s.AddAgent(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddAgent(ctx, Agent{ID: "a", Tenant: "acme", CreatedAt: t0}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate agent id: got %v, want ErrExists", err)
	}
	if err := s.AddAgent(ctx, Agent{ID: "z", Tenant: "nosuch", CreatedAt: t0}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("agent of a missing tenant: got %v, want ErrNotFound", err)
	}
	got, err := s.Agent(ctx, "b")
	if err != nil || got.Hostname != long || got.CertSerial != "01" || !got.CertNotAfter.Equal(t0.Add(time.Hour)) {
		t.Fatalf("Agent(b) = %+v, %v", got, err)
	}
	if _, err := s.Agent(ctx, "nosuch"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing agent: got %v", err)
	}
	if err := s.SetAgentCert(ctx, "b", "02", t0.Add(2*time.Hour), "sha256:02"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Agent(ctx, "b"); got.CertSerial != "02" {
		t.Fatalf("SetAgentCert: serial %q, want 02", got.CertSerial)
	}
	if err := s.SetAgentCert(ctx, "nosuch", "1", t0, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetAgentCert of a missing agent: got %v", err)
	}
	all, _ := s.ListAgents(ctx, "")
	acme, _ := s.ListAgents(ctx, "acme")
	if ids := agentIDs(all); ids != "b,c,a" {
		t.Fatalf("ListAgents(all) = %s, want b,c,a (by tenant, then id)", ids)
	}
	if ids := agentIDs(acme); ids != "b,c" {
		t.Fatalf("ListAgents(acme) = %s, want b,c", ids)
	}
}

func agentIDs(as []Agent) string {
	var ids []string
	for _, a := range as {
		ids = append(ids, a.ID)
	}
	return strings.Join(ids, ",")
}

func TestBackends(t *testing.T) { eachEngine(t, testBackends) }

func testBackends(t *testing.T, e engine) {
	s, _ := e.open(t)
	s.AddTenant(ctx, "acme", t0)
	s.AddTenant(ctx, "globex", t0)
	billing := []Grant{{"acme", "db"}, {"globex", Any}, {"acme", "api"}}
	if err := s.AddBackend(ctx, Backend{Name: "billing", KeyHash: hash("k"), Grants: billing, CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddBackend(ctx, Backend{Name: "ops", KeyHash: hash("k2"), Grants: []Grant{{Any, "metrics-*"}}, CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddBackend(ctx, Backend{Name: "billing", KeyHash: hash("x"), Grants: []Grant{{"acme", Any}}, CreatedAt: t0}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate backend: got %v, want ErrExists", err)
	}
	err := s.AddBackend(ctx, Backend{Name: "bad", KeyHash: hash("x"), Grants: []Grant{{"acme", Any}, {"nosuch", "db"}}, CreatedAt: t0})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "nosuch") {
		t.Fatalf("backend granted a missing tenant: got %v, want ErrNotFound naming nosuch", err)
	}
	if _, err := s.Backend(ctx, "bad"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused backend was stored anyway: %v", err)
	}
	b, err := s.Backend(ctx, "billing")
	if err != nil || string(b.KeyHash) != string(hash("k")) || grants(b.Grants) != "acme/api,acme/db,globex/*" {
		t.Fatalf("Backend(billing) = %+v, %v", b, err)
	}
	list, err := s.ListBackends(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "billing" || list[1].Name != "ops" || grants(list[1].Grants) != "*/metrics-*" || grants(list[0].Grants) != "acme/api,acme/db,globex/*" {
		t.Fatalf("ListBackends = %+v, %v", list, err)
	}
	if list[0].KeyHash != nil {
		t.Fatal("ListBackends leaks key hashes")
	}

	// Grant and Ungrant.
	if err := s.Grant(ctx, "billing", []Grant{{"globex", "db"}, {"acme", "db"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Grant(ctx, "billing", []Grant{{"nosuch", "db"}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("grant to a missing tenant: got %v, want ErrNotFound", err)
	}
	if err := s.Grant(ctx, "nosuch", []Grant{{"acme", "db"}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("grant to a missing backend: got %v, want ErrNotFound", err)
	}
	if err := s.Ungrant(ctx, "billing", []Grant{{"acme", "db"}, {"globex", Any}}); err != nil {
		t.Fatal(err)
	}
	err = s.Ungrant(ctx, "billing", []Grant{{"acme", "nope"}})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "acme/nope") {
		t.Fatalf("removing a grant the backend lacks: got %v, want ErrNotFound naming it", err)
	}
	if b, _ := s.Backend(ctx, "billing"); grants(b.Grants) != "acme/api,globex/db" {
		t.Fatalf("after grant and ungrant: %s", grants(b.Grants))
	}
}

func grants(gs []Grant) string {
	var out []string
	for _, g := range gs {
		out = append(out, g.String())
	}
	return strings.Join(out, ",")
}

// A store written before grants named services keeps every backend's
// tenants, now as grants to all of their services.
func TestMigrationToServiceGrants(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tether.db")
	s, err := OpenDSN(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	// Go back to schema 2 by hand: drop what migration 3 made and recreate
	// what it replaced.
	for _, q := range []string{
		`DROP TABLE backend_grants`,
		`CREATE TABLE backend_tenants (backend TEXT NOT NULL REFERENCES backends(name) ON DELETE CASCADE, tenant TEXT NOT NULL, PRIMARY KEY (backend, tenant))`,
		`DELETE FROM schema_migrations WHERE version = 3`,
		`INSERT INTO tenants (name, created_at) VALUES ('acme', 0)`,
		`INSERT INTO backends (name, key_hash, created_at) VALUES ('billing', '00', 0)`,
		`INSERT INTO backend_tenants (backend, tenant) VALUES ('billing', 'acme'), ('billing', '*')`,
	} {
		if _, err := s.db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	s.Close()
	s, err = OpenDSN(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b, err := s.Backend(ctx, "billing")
	if err != nil || grants(b.Grants) != "*/*,acme/*" {
		t.Fatalf("after migration: %+v, %v", b, err)
	}
}

func TestBackendCerts(t *testing.T) { eachEngine(t, testBackendCerts) }

// Certificates are recorded per backend, expired ones are forgotten at the
// next issue, and removing a backend forgets them all: a backend added
// again under the same name has none.
func testBackendCerts(t *testing.T, e engine) {
	s, _ := e.open(t)
	s.AddTenant(ctx, "acme", t0)
	if err := s.AddBackend(ctx, Backend{Name: "billing", KeyHash: hash("k"), Grants: []Grant{{"acme", Any}}, CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if b, err := s.Backend(ctx, "billing"); err != nil || b.CertsUnrecorded || len(b.CertSerials) != 0 {
		t.Fatalf("new backend: %+v, %v; want its certificates recorded, none yet", b, err)
	}
	if err := s.AddBackendCert(ctx, BackendCert{Serial: "ff", Backend: "nosuch", CreatedAt: t0, NotAfter: t0.Add(time.Hour)}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("certificate of a missing backend: got %v, want ErrNotFound", err)
	}
	for _, c := range []BackendCert{
		{Serial: "b2", Backend: "billing", CreatedAt: t0, NotAfter: t0.Add(2 * time.Hour)},
		{Serial: "a1", Backend: "billing", CreatedAt: t0, NotAfter: t0.Add(time.Hour)},
	} {
		if err := s.AddBackendCert(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddBackendCert(ctx, BackendCert{Serial: "a1", Backend: "billing", CreatedAt: t0, NotAfter: t0.Add(time.Hour)}); !errors.Is(err, ErrExists) {
		t.Fatalf("same serial twice: got %v, want ErrExists", err)
	}
	if b, err := s.Backend(ctx, "billing"); err != nil || strings.Join(b.CertSerials, ",") != "a1,b2" {
		t.Fatalf("Backend(billing).CertSerials = %q, %v; want a1,b2", b.CertSerials, err)
	}
	if err := s.AddBackendCert(ctx, BackendCert{Serial: "c3", Backend: "billing", CreatedAt: t0.Add(90 * time.Minute), NotAfter: t0.Add(3 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if b, err := s.Backend(ctx, "billing"); err != nil || strings.Join(b.CertSerials, ",") != "b2,c3" {
		t.Fatalf("after an issue past a1's expiry: CertSerials = %q, %v; want b2,c3", b.CertSerials, err)
	}
	// BackendCredentials reads every backend as Backend reads one.
	if err := s.AddBackend(ctx, Backend{Name: "ops", KeyHash: hash("o"), Grants: []Grant{{"acme", "db"}, {"acme", "api"}, {"*", "metrics"}}, CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	all, err := s.BackendCredentials(ctx)
	if err != nil || len(all) != 2 || all[0].Name != "billing" || all[1].Name != "ops" {
		t.Fatalf("BackendCredentials = %+v, %v; want billing and ops", all, err)
	}
	for _, got := range all {
		want, err := s.Backend(ctx, got.Name)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("BackendCredentials has %+v; Backend(%s) = %+v, %v", got, got.Name, want, err)
		}
	}
	if err := s.RemoveBackend(ctx, "billing"); err != nil {
		t.Fatal(err)
	}
	if err := s.AddBackend(ctx, Backend{Name: "billing", KeyHash: hash("k2"), Grants: []Grant{{"acme", Any}}, CreatedAt: t0.Add(2 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if b, err := s.Backend(ctx, "billing"); err != nil || len(b.CertSerials) != 0 || b.CertsUnrecorded {
		t.Fatalf("backend added again: %+v, %v; want none of the old certificates", b, err)
	}
}

func TestMigrationToBackendCerts(t *testing.T) { eachEngine(t, testMigrationToBackendCerts) }

// Backends from before certificates were recorded say so; those added
// since do not.
func testMigrationToBackendCerts(t *testing.T, e engine) {
	s, dsn := e.open(t)
	// Go back to schema 13 by hand.
	for _, q := range []string{
		`DROP TABLE backend_certs`,
		`ALTER TABLE backends DROP COLUMN certs_recorded`,
		`DELETE FROM schema_migrations WHERE version = 14`,
		`INSERT INTO backends (name, key_hash, created_at) VALUES ('billing', '00', 0)`,
	} {
		if _, err := s.db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	s.Close()
	s, err := OpenDSN(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if b, err := s.Backend(ctx, "billing"); err != nil || !b.CertsUnrecorded || len(b.CertSerials) != 0 {
		t.Fatalf("backend from before the migration: %+v, %v; want CertsUnrecorded", b, err)
	}
	if err := s.AddBackend(ctx, Backend{Name: "ops", KeyHash: hash("k"), CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if b, err := s.Backend(ctx, "ops"); err != nil || b.CertsUnrecorded {
		t.Fatalf("backend added after the migration: %+v, %v; want its certificates recorded", b, err)
	}
}

func TestBackendCertRevocation(t *testing.T) { eachEngine(t, testBackendCertRevocation) }

// A backend's recorded certificates are listed newest first; removing
// one forgets it (and tells the change feed) and touches no other; an
// unknown serial, another backend's serial and a missing backend are
// ErrNotFound. A backend from before certificates were recorded stops
// accepting unrecorded ones once told, once.
func testBackendCertRevocation(t *testing.T, e engine) {
	s, _ := e.open(t)
	s.AddTenant(ctx, "acme", t0)
	for _, name := range []string{"billing", "ops"} {
		if err := s.AddBackend(ctx, Backend{Name: name, KeyHash: hash(name), Grants: []Grant{{"acme", Any}}, CreatedAt: t0}); err != nil {
			t.Fatal(err)
		}
	}
	if cs, err := s.BackendCerts(ctx, "billing"); err != nil || len(cs) != 0 {
		t.Fatalf("BackendCerts of a backend without certificates = %+v, %v; want none", cs, err)
	}
	if _, err := s.BackendCerts(ctx, "nosuch"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("BackendCerts of a missing backend: got %v, want ErrNotFound", err)
	}
	for _, c := range []BackendCert{
		{Serial: "a1", Backend: "billing", CreatedAt: t0, NotAfter: t0.Add(time.Hour)},
		{Serial: "c3", Backend: "billing", CreatedAt: t0.Add(time.Minute), NotAfter: t0.Add(3 * time.Hour)},
		{Serial: "b2", Backend: "billing", CreatedAt: t0, NotAfter: t0.Add(2 * time.Hour)},
		{Serial: "d4", Backend: "ops", CreatedAt: t0, NotAfter: t0.Add(time.Hour)},
	} {
		if err := s.AddBackendCert(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	list := func(name string) string {
		t.Helper()
		cs, err := s.BackendCerts(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, c := range cs {
			if c.Backend != name {
				t.Errorf("BackendCerts(%s) lists %+v", name, c)
			}
			out = append(out, fmt.Sprintf("%s@%d-%d", c.Serial, c.CreatedAt.Sub(t0)/time.Minute, c.NotAfter.Sub(t0)/time.Minute))
		}
		return strings.Join(out, ",")
	}
	if got, want := list("billing"), "c3@1-180,a1@0-60,b2@0-120"; got != want {
		t.Fatalf("BackendCerts(billing) = %s, want %s (newest first)", got, want)
	}

	before, err := s.LatestChange(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.RemoveBackendCert(ctx, "billing", "a1")
	if err != nil || c.Serial != "a1" || c.Backend != "billing" || !c.CreatedAt.Equal(t0) || !c.NotAfter.Equal(t0.Add(time.Hour)) {
		t.Fatalf("RemoveBackendCert(billing, a1) = %+v, %v", c, err)
	}
	if changes, err := s.Changes(ctx, before, 10); err != nil || len(changes) != 1 || changes[0].Kind != ChangeBackend || changes[0].Subject != "billing" {
		t.Fatalf("changes after the removal = %+v, %v; want one backend change of billing", changes, err)
	}
	if b, err := s.Backend(ctx, "billing"); err != nil || strings.Join(b.CertSerials, ",") != "b2,c3" {
		t.Fatalf("Backend(billing).CertSerials after removing a1 = %q, %v; want b2,c3", b.CertSerials, err)
	}
	for _, tc := range []struct{ backend, serial string }{
		{"billing", "a1"},  // removed already
		{"billing", "ff"},  // never issued
		{"billing", "d4"},  // another backend's
		{"nosuch", "b2"},   // no such backend
		{"billing", "B2 "}, // the store takes serials as written at issue only
	} {
		if _, err := s.RemoveBackendCert(ctx, tc.backend, tc.serial); !errors.Is(err, ErrNotFound) {
			t.Errorf("RemoveBackendCert(%s, %q): got %v, want ErrNotFound", tc.backend, tc.serial, err)
		}
	}
	if got := list("ops"); got != "d4@0-60" {
		t.Fatalf("BackendCerts(ops) = %s, want d4 untouched", got)
	}
	if got := list("billing"); got != "c3@1-180,b2@0-120" {
		t.Fatalf("BackendCerts(billing) = %s, want c3 and b2", got)
	}

	// Unrecorded certificates: a backend added since they are recorded
	// accepts none already.
	if changed, err := s.RefuseUnrecordedBackendCerts(ctx, "billing"); err != nil || changed {
		t.Fatalf("RefuseUnrecordedBackendCerts of a backend added with its certificates recorded = %v, %v; want false", changed, err)
	}
	if _, err := s.RefuseUnrecordedBackendCerts(ctx, "nosuch"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("RefuseUnrecordedBackendCerts of a missing backend: got %v, want ErrNotFound", err)
	}
	// ops as a backend from before the migration (schema 13 and older).
	if _, err := s.db.ExecContext(ctx, `UPDATE backends SET certs_recorded = 0 WHERE name = 'ops'`); err != nil {
		t.Fatal(err)
	}
	if b, err := s.Backend(ctx, "ops"); err != nil || !b.CertsUnrecorded {
		t.Fatalf("Backend(ops) = %+v, %v; want CertsUnrecorded", b, err)
	}
	if before, err = s.LatestChange(ctx); err != nil {
		t.Fatal(err)
	}
	if changed, err := s.RefuseUnrecordedBackendCerts(ctx, "ops"); err != nil || !changed {
		t.Fatalf("RefuseUnrecordedBackendCerts(ops) = %v, %v; want true", changed, err)
	}
	if b, err := s.Backend(ctx, "ops"); err != nil || b.CertsUnrecorded || strings.Join(b.CertSerials, ",") != "d4" {
		t.Fatalf("Backend(ops) after refusing unrecorded certificates = %+v, %v; want its recorded d4 only", b, err)
	}
	if changes, err := s.Changes(ctx, before, 10); err != nil || len(changes) != 1 || changes[0].Kind != ChangeBackend || changes[0].Subject != "ops" {
		t.Fatalf("changes after refusing unrecorded certificates = %+v, %v; want one backend change of ops", changes, err)
	}
	if changed, err := s.RefuseUnrecordedBackendCerts(ctx, "ops"); err != nil || changed {
		t.Fatalf("RefuseUnrecordedBackendCerts(ops) again = %v, %v; want false", changed, err)
	}
	if changes, err := s.Changes(ctx, before, 10); err != nil || len(changes) != 1 {
		t.Fatalf("changes after refusing again = %+v, %v; want none more", changes, err)
	}
}

func TestSettings(t *testing.T) { eachEngine(t, testSettings) }

func testSettings(t *testing.T, e engine) {
	s, path := e.open(t)
	if _, err := s.Setting(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing setting: got %v", err)
	}
	other, err := OpenDSN(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var wg sync.WaitGroup
	got := make([]string, 10)
	for i := range got {
		h := s
		if i%2 == 1 {
			h = other
		}
		wg.Go(func() {
			v, err := h.SetSettingIfAbsent(ctx, "k", string(rune('a'+i)))
			if err != nil {
				t.Error(err)
			}
			got[i] = v
		})
	}
	wg.Wait()
	for _, v := range got {
		if v != got[0] {
			t.Fatalf("racing SetSettingIfAbsent disagree: %q", got)
		}
	}
}

// TestTokenRevokedAsItIsUsed: a join token revoked between an
// enrolment's lookup and its use is refused as not found, as it is once
// revoked, not as used up (it had uses left).
func TestTokenRevokedAsItIsUsed(t *testing.T) { eachEngine(t, testTokenRevokedAsItIsUsed) }

func testTokenRevokedAsItIsUsed(t *testing.T, e engine) {
	s, _ := e.open(t)
	s.AddTenant(ctx, "acme", t0)
	addToken(t, s, "tok", "secret", 5, time.Hour)
	// check runs after the lookup, before the transaction that takes a
	// use: the token is revoked there.
	revoke := func(string) (int, error) {
		if _, err := s.DeleteToken(ctx, "tok"); err != nil {
			t.Error(err)
		}
		return 0, nil
	}
	_, err := s.EnrolAgent(ctx, "tok", matches("secret"), t0, revoke, func(tok Token) (Agent, error) {
		return Agent{ID: "a1", Tenant: tok.Tenant, CreatedAt: t0}, nil
	})
	if !errors.Is(err, ErrNotFound) || errors.Is(err, ErrTokenUsedUp) {
		t.Fatalf("enrolment with a token revoked as it was used: %v, want not found", err)
	}
	if _, err := s.Agent(ctx, "a1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("agent a1 enrolled with the revoked token: %v", err)
	}
}
