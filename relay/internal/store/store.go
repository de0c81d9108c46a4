// Package store keeps the relay's persistent state: tenants, join tokens,
// agents, backend credentials and settings. It runs on an embedded SQLite
// database (modernc.org/sqlite, pure Go) in the relay's data directory. The
// SQL is kept portable (standard types, $n placeholders, hashes as hex text,
// times as Unix seconds) so that a PostgreSQL backend can share the schema.
//
// Several processes may use one database file at once: the relay serving,
// and offline admin commands run by an operator.
package store

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sort"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Sentinel errors; the store wraps them with the subject, e.g.
// `tenant "acme": not found`.
var (
	ErrNotFound     = errors.New("not found")
	ErrExists       = errors.New("already exists")
	ErrTokenExpired = errors.New("join token expired")
	ErrTokenUsedUp  = errors.New("join token has no uses left")
	ErrTokenSecret  = errors.New("join token secret does not match")
)

// Store is the relay's state.
type Store struct {
	db *sql.DB
}

// Open opens (creating if needed) the SQLite database at path and applies
// pending migrations.
func Open(ctx context.Context, path string) (*Store, error) {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// Keep connections open: opening one re-runs the pragmas above and
	// costs more than most queries. SQLite allows one writer at a time
	// anyway; readers proceed concurrently in WAL mode.
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	db.SetConnMaxIdleTime(5 * time.Minute)
	s := &Store{db: db}
	// Switching a fresh file to WAL takes an exclusive lock and SQLite
	// answers SQLITE_BUSY at once, without its busy timeout, when another
	// process is doing the same: retry for a while.
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		err = s.migrate(ctx)
		if err == nil {
			return s, nil
		}
		if !strings.Contains(err.Error(), "SQLITE_BUSY") || ctx.Err() != nil || wait == time.Second {
			db.Close()
			return nil, fmt.Errorf("migrate %s: %w", path, err)
		}
		time.Sleep(wait + time.Duration(rand.Int64N(int64(wait))))
	}
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// migrations are applied in order, each in its own transaction. Never edit
// one that has shipped: add a new one.
var migrations = []struct {
	version int
	sql     string
}{
	{1, `
CREATE TABLE tenants (
	name       TEXT PRIMARY KEY,
	created_at BIGINT NOT NULL
);
CREATE TABLE join_tokens (
	id          TEXT PRIMARY KEY,
	tenant      TEXT NOT NULL REFERENCES tenants(name),
	secret_hash TEXT NOT NULL,
	created_at  BIGINT NOT NULL,
	expires_at  BIGINT NOT NULL,
	max_uses    INTEGER NOT NULL,
	uses        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX join_tokens_tenant ON join_tokens(tenant);
CREATE TABLE agents (
	id             TEXT PRIMARY KEY,
	tenant         TEXT NOT NULL REFERENCES tenants(name),
	hostname       TEXT NOT NULL DEFAULT '',
	created_at     BIGINT NOT NULL,
	cert_serial    TEXT NOT NULL DEFAULT '',
	cert_not_after BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX agents_tenant ON agents(tenant);
CREATE TABLE backends (
	name       TEXT PRIMARY KEY,
	key_hash   TEXT NOT NULL,
	created_at BIGINT NOT NULL
);
CREATE TABLE backend_tenants (
	backend TEXT NOT NULL REFERENCES backends(name) ON DELETE CASCADE,
	tenant  TEXT NOT NULL,
	PRIMARY KEY (backend, tenant)
);
CREATE TABLE settings (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);
`},
	{2, `
ALTER TABLE agents ADD COLUMN revoked_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN revoked_reason TEXT NOT NULL DEFAULT '';
CREATE INDEX agents_revoked ON agents(revoked_at);
CREATE TABLE audit (
	seq        INTEGER PRIMARY KEY AUTOINCREMENT,
	at_ms      BIGINT NOT NULL,
	kind       TEXT NOT NULL,
	outcome    TEXT NOT NULL,
	tenant     TEXT NOT NULL DEFAULT '',
	agent      TEXT NOT NULL DEFAULT '',
	backend    TEXT NOT NULL DEFAULT '',
	actor      TEXT NOT NULL DEFAULT '',
	detail     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_at ON audit(at_ms);
CREATE INDEX audit_tenant ON audit(tenant, at_ms);
CREATE INDEX audit_agent ON audit(agent, at_ms);
CREATE INDEX audit_backend ON audit(backend, at_ms);
CREATE TABLE tenant_limits (
	tenant      TEXT PRIMARY KEY REFERENCES tenants(name),
	max_agents  INTEGER NOT NULL DEFAULT 0,
	max_streams INTEGER NOT NULL DEFAULT 0,
	open_rate   DOUBLE PRECISION NOT NULL DEFAULT 0,
	open_burst  INTEGER NOT NULL DEFAULT 0,
	cidrs       TEXT NOT NULL DEFAULT '',
	updated_at  BIGINT NOT NULL
);
`},
	// Grants name services as well as tenants, each a pattern.
	{3, `
CREATE TABLE backend_grants (
	backend TEXT NOT NULL REFERENCES backends(name) ON DELETE CASCADE,
	tenant  TEXT NOT NULL,
	service TEXT NOT NULL,
	PRIMARY KEY (backend, tenant, service)
);
INSERT INTO backend_grants (backend, tenant, service) SELECT backend, tenant, '*' FROM backend_tenants;
DROP TABLE backend_tenants;
`},
	// The CA root (printable fingerprint) that issued each agent's newest
	// certificate, and the root each join token pins. '' on rows written
	// before CA rotation existed: those are the CA's first root.
	{4, `
ALTER TABLE agents ADD COLUMN cert_root TEXT NOT NULL DEFAULT '';
ALTER TABLE join_tokens ADD COLUMN ca_root TEXT NOT NULL DEFAULT '';
`},
	// Operator tokens for the admin API (see operators.go).
	{5, migrationOperators},
	{6, migrationReleases}, // releases.go
	// When the relay last heard from each agent, Unix seconds (0: never).
	{7, `
ALTER TABLE agents ADD COLUMN last_seen BIGINT NOT NULL DEFAULT 0;
`},
}

func (s *Store) migrate(ctx context.Context) error {
	// In a write transaction: outside one, SQLite may find the schema
	// changed under it by another process creating the same file and
	// answer SQLITE_BUSY at once instead of waiting.
	err := s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`)
		return err
	})
	if err != nil {
		return err
	}
	for _, m := range migrations {
		// BEGIN IMMEDIATE (the _txlock above) takes the write lock first, so
		// two processes opening a fresh file cannot both apply m.
		err := s.tx(ctx, func(tx *sql.Tx) error {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations WHERE version = $1`, m.version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return nil
			}
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("migration %d: %w", m.version, err)
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)`, m.version, time.Now().Unix())
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// SchemaVersion is the highest migration applied.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT max(version) FROM schema_migrations`).Scan(&v)
	return int(v.Int64), err
}

func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// isUnique reports whether err is a uniqueness violation.
func isUnique(err error) bool {
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
}

func unix(t time.Time) int64     { return t.Unix() }
func fromUnix(n int64) time.Time { return time.Unix(n, 0).UTC() }

func fromUnixMilli(n int64) time.Time { return time.UnixMilli(n).UTC() }

// Tenant is one tenant.
type Tenant struct {
	Name      string
	CreatedAt time.Time
}

// AddTenant creates a tenant.
func (s *Store) AddTenant(ctx context.Context, name string, now time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO tenants (name, created_at) VALUES ($1, $2)`, name, unix(now))
	if isUnique(err) {
		return fmt.Errorf("tenant %q: %w", name, ErrExists)
	}
	return err
}

// Tenant returns one tenant.
func (s *Store) Tenant(ctx context.Context, name string) (Tenant, error) {
	var t Tenant
	var created int64
	err := s.db.QueryRowContext(ctx, `SELECT name, created_at FROM tenants WHERE name = $1`, name).Scan(&t.Name, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return Tenant{}, fmt.Errorf("tenant %q: %w", name, ErrNotFound)
	}
	t.CreatedAt = fromUnix(created)
	return t, err
}

// ListTenants returns every tenant, sorted by name.
func (s *Store) ListTenants(ctx context.Context) ([]Tenant, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, created_at FROM tenants ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Tenant
	for rows.Next() {
		var t Tenant
		var created int64
		if err := rows.Scan(&t.Name, &created); err != nil {
			return nil, err
		}
		t.CreatedAt = fromUnix(created)
		out = append(out, t)
	}
	return out, rows.Err()
}

// Token is a join token record. SecretHash is the SHA-256 of the secret.
type Token struct {
	ID         string
	Tenant     string
	SecretHash []byte
	CreatedAt  time.Time
	ExpiresAt  time.Time
	MaxUses    int
	Uses       int
	// CARoot is the printable fingerprint of the CA root the token pins;
	// "" for tokens made before CA rotation existed.
	CARoot string
}

// AddToken stores a join token; its tenant must exist.
func (s *Store) AddToken(ctx context.Context, t Token) error {
	if _, err := s.Tenant(ctx, t.Tenant); err != nil {
		return err
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO join_tokens (id, tenant, secret_hash, created_at, expires_at, max_uses, uses, ca_root) VALUES ($1, $2, $3, $4, $5, $6, 0, $7)`,
		t.ID, t.Tenant, hex.EncodeToString(t.SecretHash), unix(t.CreatedAt), unix(t.ExpiresAt), t.MaxUses, t.CARoot)
	if isUnique(err) {
		return fmt.Errorf("join token %s: %w", t.ID, ErrExists)
	}
	return err
}

// ListTokens returns join tokens of tenant ("" for all), newest first,
// without their secret hashes.
func (s *Store) ListTokens(ctx context.Context, tenant string) ([]Token, error) {
	return s.queryTokens(ctx, `SELECT id, tenant, created_at, expires_at, max_uses, uses, ca_root FROM join_tokens
		WHERE $1 = '' OR tenant = $1 ORDER BY created_at DESC, id`, tenant)
}

// LiveTokens returns the join tokens that can still enrol an agent at now
// (not expired, uses left), newest first, without their secret hashes.
func (s *Store) LiveTokens(ctx context.Context, now time.Time) ([]Token, error) {
	return s.queryTokens(ctx, `SELECT id, tenant, created_at, expires_at, max_uses, uses, ca_root FROM join_tokens
		WHERE expires_at > $1 AND uses < max_uses ORDER BY created_at DESC, id`, unix(now))
}

func (s *Store) queryTokens(ctx context.Context, q string, args ...any) ([]Token, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Token
	for rows.Next() {
		var t Token
		var created, expires int64
		if err := rows.Scan(&t.ID, &t.Tenant, &created, &expires, &t.MaxUses, &t.Uses, &t.CARoot); err != nil {
			return nil, err
		}
		t.CreatedAt, t.ExpiresAt = fromUnix(created), fromUnix(expires)
		out = append(out, t)
	}
	return out, rows.Err()
}

// ConsumeToken checks and uses one use of join token id. It verifies the
// secret first (a wrong secret learns nothing about expiry or uses), then
// expiry and remaining uses. The use is taken with a conditional update, so
// concurrent consumers — in one process or several — never overspend a
// token. check, when not nil, runs with the token's tenant after the
// secret and expiry checks and before the use is taken; its error is
// returned as is and no use is taken. It returns the token with Uses after
// the increment (and, on a refusal after the secret matched, the token as
// read).
func (s *Store) ConsumeToken(ctx context.Context, id string, secretMatches func(hash []byte) bool, now time.Time, check func(tenant string) error) (Token, error) {
	var t Token
	var hashHex string
	var created, expires int64
	err := s.db.QueryRowContext(ctx, `SELECT id, tenant, secret_hash, created_at, expires_at, max_uses, uses FROM join_tokens WHERE id = $1`, id).
		Scan(&t.ID, &t.Tenant, &hashHex, &created, &expires, &t.MaxUses, &t.Uses)
	if errors.Is(err, sql.ErrNoRows) {
		return Token{}, fmt.Errorf("join token %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Token{}, err
	}
	hash, err := hex.DecodeString(hashHex)
	if err != nil || !secretMatches(hash) {
		return Token{}, fmt.Errorf("join token %s: %w", id, ErrTokenSecret)
	}
	t.SecretHash = hash
	t.CreatedAt, t.ExpiresAt = fromUnix(created), fromUnix(expires)
	if !now.Before(t.ExpiresAt) {
		return t, fmt.Errorf("join token %s: %w", id, ErrTokenExpired)
	}
	if check != nil {
		if err := check(t.Tenant); err != nil {
			return t, err
		}
	}
	res, err := s.db.ExecContext(ctx, `UPDATE join_tokens SET uses = uses + 1 WHERE id = $1 AND uses < max_uses AND expires_at > $2`, id, unix(now))
	if err != nil {
		return Token{}, err
	}
	if n, err := res.RowsAffected(); err != nil {
		return Token{}, err
	} else if n == 0 {
		return t, fmt.Errorf("join token %s: %w", id, ErrTokenUsedUp)
	}
	if err := s.db.QueryRowContext(ctx, `SELECT uses FROM join_tokens WHERE id = $1`, id).Scan(&t.Uses); err != nil {
		return Token{}, err
	}
	return t, nil
}

// Agent is an enrolled agent.
type Agent struct {
	ID           string
	Tenant       string
	Hostname     string
	CreatedAt    time.Time
	CertSerial   string
	CertNotAfter time.Time
	// CertRoot is the printable fingerprint of the CA root that issued the
	// newest certificate; "" for certificates issued before CA rotation
	// existed.
	CertRoot string
	// RevokedAt is zero unless the agent was revoked.
	RevokedAt     time.Time
	RevokedReason string
	// LastSeen is when a relay last heard from the agent, to within about
	// a minute while it is connected; zero if never.
	LastSeen time.Time
}

// AddAgent registers an agent; its tenant must exist.
func (s *Store) AddAgent(ctx context.Context, a Agent) error {
	if _, err := s.Tenant(ctx, a.Tenant); err != nil {
		return err
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO agents (id, tenant, hostname, created_at, cert_serial, cert_not_after, cert_root) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		a.ID, a.Tenant, a.Hostname, unix(a.CreatedAt), a.CertSerial, unix(a.CertNotAfter), a.CertRoot)
	if isUnique(err) {
		return fmt.Errorf("agent %s: %w", a.ID, ErrExists)
	}
	return err
}

const agentCols = `id, tenant, hostname, created_at, cert_serial, cert_not_after, cert_root, revoked_at, revoked_reason, last_seen`

func scanAgent(sc interface{ Scan(...any) error }) (Agent, error) {
	var a Agent
	var created, notAfter, revoked, seen int64
	if err := sc.Scan(&a.ID, &a.Tenant, &a.Hostname, &created, &a.CertSerial, &notAfter, &a.CertRoot, &revoked, &a.RevokedReason, &seen); err != nil {
		return Agent{}, err
	}
	a.CreatedAt, a.CertNotAfter = fromUnix(created), fromUnix(notAfter)
	if seen != 0 {
		a.LastSeen = fromUnix(seen)
	}
	if revoked != 0 {
		a.RevokedAt = fromUnixMilli(revoked)
	}
	return a, nil
}

// Agent returns one agent.
func (s *Store) Agent(ctx context.Context, id string) (Agent, error) {
	a, err := scanAgent(s.db.QueryRowContext(ctx, `SELECT `+agentCols+` FROM agents WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Agent{}, fmt.Errorf("agent %s: %w", id, ErrNotFound)
	}
	return a, err
}

// ListAgents returns the agents of tenant ("" for all), sorted by tenant
// and id.
func (s *Store) ListAgents(ctx context.Context, tenant string) ([]Agent, error) {
	return s.queryAgents(ctx, `SELECT `+agentCols+` FROM agents WHERE $1 = '' OR tenant = $1 ORDER BY tenant, id`, tenant)
}

// queryAgents runs a query selecting agentCols and scans every row.
func (s *Store) queryAgents(ctx context.Context, query string, args ...any) ([]Agent, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Agent
	for rows.Next() {
		a, err := scanAgent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// SetAgentCert records the serial, expiry and issuing CA root of an
// agent's newest certificate.
func (s *Store) SetAgentCert(ctx context.Context, id, serial string, notAfter time.Time, root string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE agents SET cert_serial = $2, cert_not_after = $3, cert_root = $4 WHERE id = $1`, id, serial, unix(notAfter), root)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("agent %s: %w", id, ErrNotFound)
	}
	return nil
}

// Any, as a grant's tenant or service, matches every name.
const Any = "*"

// Grant lets a backend reach the services matching Service of the tenants
// matching Tenant. Both are patterns: a name, or a name with "*"
// wildcards ("*" alone matches every name).
type Grant struct {
	Tenant  string `json:"tenant"`
	Service string `json:"service"`
}

func (g Grant) String() string { return g.Tenant + "/" + g.Service }

// Backend is a backend credential. KeyHash is the SHA-256 of its API key.
type Backend struct {
	Name      string
	KeyHash   []byte
	Grants    []Grant // sorted by tenant, then service
	CreatedAt time.Time
}

// checkGrantTenants makes sure every tenant a grant names exactly (without
// a wildcard) exists, so a typo does not become a grant to nobody.
func checkGrantTenants(ctx context.Context, tx *sql.Tx, grants []Grant) error {
	for _, g := range grants {
		if strings.Contains(g.Tenant, "*") {
			continue
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM tenants WHERE name = $1`, g.Tenant).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("tenant %q: %w", g.Tenant, ErrNotFound)
		}
	}
	return nil
}

func insertGrants(ctx context.Context, tx *sql.Tx, backend string, grants []Grant) error {
	for _, g := range grants {
		if _, err := tx.ExecContext(ctx, `INSERT INTO backend_grants (backend, tenant, service) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, backend, g.Tenant, g.Service); err != nil {
			return err
		}
	}
	return nil
}

// AddBackend stores a backend credential with its grants; every tenant a
// grant names without a wildcard must exist.
func (s *Store) AddBackend(ctx context.Context, b Backend) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if err := checkGrantTenants(ctx, tx, b.Grants); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO backends (name, key_hash, created_at) VALUES ($1, $2, $3)`, b.Name, hex.EncodeToString(b.KeyHash), unix(b.CreatedAt))
		if isUnique(err) {
			return fmt.Errorf("backend %q: %w", b.Name, ErrExists)
		}
		if err != nil {
			return err
		}
		return insertGrants(ctx, tx, b.Name, b.Grants)
	})
}

// Grant adds grants to a backend (those it already has are kept once).
func (s *Store) Grant(ctx context.Context, backend string, grants []Grant) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if err := backendExists(ctx, tx, backend); err != nil {
			return err
		}
		if err := checkGrantTenants(ctx, tx, grants); err != nil {
			return err
		}
		return insertGrants(ctx, tx, backend, grants)
	})
}

// Ungrant removes grants from a backend. Removing a grant it does not have
// is an error naming it, so a mistyped pattern is not mistaken for a
// removal.
func (s *Store) Ungrant(ctx context.Context, backend string, grants []Grant) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if err := backendExists(ctx, tx, backend); err != nil {
			return err
		}
		for _, g := range grants {
			res, err := tx.ExecContext(ctx, `DELETE FROM backend_grants WHERE backend = $1 AND tenant = $2 AND service = $3`, backend, g.Tenant, g.Service)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 0 {
				return fmt.Errorf("backend %q has no grant %s: %w", backend, g, ErrNotFound)
			}
		}
		return nil
	})
}

func backendExists(ctx context.Context, tx *sql.Tx, name string) error {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM backends WHERE name = $1`, name).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("backend %q: %w", name, ErrNotFound)
	}
	return nil
}

// Backend returns one backend credential.
func (s *Store) Backend(ctx context.Context, name string) (Backend, error) {
	var b Backend
	var hashHex string
	var created int64
	err := s.db.QueryRowContext(ctx, `SELECT name, key_hash, created_at FROM backends WHERE name = $1`, name).Scan(&b.Name, &hashHex, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return Backend{}, fmt.Errorf("backend %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Backend{}, err
	}
	if b.KeyHash, err = hex.DecodeString(hashHex); err != nil {
		return Backend{}, fmt.Errorf("backend %q: damaged key hash: %w", name, err)
	}
	b.CreatedAt = fromUnix(created)
	b.Grants, err = s.backendGrants(ctx, name)
	return b, err
}

func (s *Store) backendGrants(ctx context.Context, name string) ([]Grant, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT tenant, service FROM backend_grants WHERE backend = $1 ORDER BY tenant, service`, name)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Grant
	for rows.Next() {
		var g Grant
		if err := rows.Scan(&g.Tenant, &g.Service); err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

// ListBackends returns every backend credential, sorted by name, without
// key hashes.
func (s *Store) ListBackends(ctx context.Context) ([]Backend, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT b.name, b.created_at, g.tenant, g.service FROM backends b
		LEFT JOIN backend_grants g ON g.backend = b.name ORDER BY b.name, g.tenant, g.service`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	byName := map[string]*Backend{}
	var names []string
	for rows.Next() {
		var name string
		var created int64
		var tenant, service sql.NullString
		if err := rows.Scan(&name, &created, &tenant, &service); err != nil {
			return nil, err
		}
		b := byName[name]
		if b == nil {
			b = &Backend{Name: name, CreatedAt: fromUnix(created)}
			byName[name] = b
			names = append(names, name)
		}
		if tenant.Valid {
			b.Grants = append(b.Grants, Grant{Tenant: tenant.String, Service: service.String})
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	sort.Strings(names)
	out := make([]Backend, len(names))
	for i, n := range names {
		out[i] = *byName[n]
	}
	return out, nil
}

// Setting returns a stored setting.
func (s *Store) Setting(ctx context.Context, key string) (string, error) {
	var v string
	err := s.db.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = $1`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("setting %q: %w", key, ErrNotFound)
	}
	return v, err
}

// SetSetting stores value under key, replacing any earlier value.
func (s *Store) SetSetting(ctx context.Context, key, value string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2`, key, value)
	return err
}

// SetSettingIfAbsent stores value under key unless key already has one, and
// returns the value now stored, so that racing processes agree.
func (s *Store) SetSettingIfAbsent(ctx context.Context, key, value string) (string, error) {
	if _, err := s.db.ExecContext(ctx, `INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`, key, value); err != nil {
		return "", err
	}
	return s.Setting(ctx, key)
}

// lastSeenChunk is how many agents one transaction of SetAgentsLastSeen
// updates: enough to make a fleet's update a few transactions, few enough
// that none holds SQLite's write lock for long.
const lastSeenChunk = 500

// SetAgentsLastSeen records when each agent of seen was last heard from.
// A time not after the one recorded changes nothing; unknown agents are
// skipped. It writes in a few transactions of prepared updates, so that a
// relay records a whole fleet at once.
func (s *Store) SetAgentsLastSeen(ctx context.Context, seen map[string]time.Time) error {
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids) // a stable lock order for concurrent writers
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), lastSeenChunk)]
		ids = ids[len(chunk):]
		err := s.tx(ctx, func(tx *sql.Tx) error {
			st, err := tx.PrepareContext(ctx, `UPDATE agents SET last_seen = $2 WHERE id = $1 AND last_seen < $2`)
			if err != nil {
				return err
			}
			defer st.Close()
			for _, id := range chunk {
				if _, err := st.ExecContext(ctx, id, unix(seen[id])); err != nil {
					return fmt.Errorf("agent %s: %w", id, err)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("record agents last seen: %w", err)
		}
	}
	return nil
}
