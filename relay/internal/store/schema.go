package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// migration is one versioned schema change. Its SQL is portable but for
// the fragments the dialect expands (dialect.ddl).
type migration struct {
	version int
	// compatibleFrom is the oldest schema version a binary must know to
	// keep working correctly on a store this migration was applied to:
	// the migration's own version when a binary that does not know it
	// would misbehave on it (fail, lose or corrupt data, or leave a
	// security check undone that the operator did not opt into), or
	// anyBinary when older binaries keep working as they did, at worst
	// without the migration's new feature (README, "Upgrading the
	// store's schema", says which features wait for every relay). The
	// store records the highest of its applied migrations'
	// (schemaRequiresKey), and a binary that knows less refuses to open
	// it (SchemaTooNewError).
	compatibleFrom int
	sql            string
}

// anyBinary is the compatibleFrom of a migration that older binaries
// may run on: what they do not know of it, they leave alone, without
// harm beyond the new feature's.
const anyBinary = 1

// schemaRequiresKey is the setting that holds the schema version a
// binary must know to open the store: the highest compatibleFrom of the
// migrations applied to it, never lowered (an older binary that knows
// less does not lower what a newer one recorded).
const schemaRequiresKey = "schema_requires_binary"

// migrations are applied in order, each in its own transaction. Never edit
// one that has shipped: add a new one. (Replacing SQLite's spelling of a
// fragment with the {{…}} that expands to exactly it edits nothing; so
// does giving each its compatibleFrom, which binaries before it ignore.)
//
// The compatibleFrom of the migrations before the check existed (1-18):
// 2 (revocations that older binaries would not enforce), 3 (drops the
// table older binaries read grants from), 4 (CA rotation's roots), 8 (the
// change feed, which older binaries' writes would bypass, and release
// files in the store, which they cannot read), 9 (tenant-scoped operators,
// whom an older admin API would take for unscoped ones), 10 (the CA kept
// in the store) and 11 (the cluster's relay and presence rows) break
// older binaries; 5-7 and 12-18 add tables, columns or indexes that older
// binaries leave alone (12-14, 16-18 with a feature that waits for every
// relay to be upgraded, see README). A store at 18 thus requires 11; so
// does one at 19, which adds columns older binaries leave alone.
var migrations = []migration{
	{1, 1, `
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
	{2, 2, `
ALTER TABLE agents ADD COLUMN revoked_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN revoked_reason TEXT NOT NULL DEFAULT '';
CREATE INDEX agents_revoked ON agents(revoked_at);
CREATE TABLE audit (
	seq        {{serial}},
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
	{3, 3, `
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
	{4, 4, `
ALTER TABLE agents ADD COLUMN cert_root TEXT NOT NULL DEFAULT '';
ALTER TABLE join_tokens ADD COLUMN ca_root TEXT NOT NULL DEFAULT '';
`},
	// Operator tokens for the admin API: a name, a hash of the secret, an
	// expiry and a revocation time.
	{5, anyBinary, `
CREATE TABLE operator_tokens (
	id          TEXT PRIMARY KEY,
	name        TEXT NOT NULL,
	secret_hash TEXT NOT NULL,
	created_at  BIGINT NOT NULL,
	expires_at  BIGINT NOT NULL,
	revoked_at  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX operator_tokens_name ON operator_tokens(name);
`},
	// Agent releases, rollouts and each agent's update state.
	{6, anyBinary, `
CREATE TABLE releases (
	version      TEXT NOT NULL,
	os           TEXT NOT NULL,
	arch         TEXT NOT NULL,
	channel      TEXT NOT NULL,
	sha256       TEXT NOT NULL,
	size         BIGINT NOT NULL,
	expires_at   BIGINT NOT NULL,
	key_id       TEXT NOT NULL DEFAULT '',
	dir          TEXT NOT NULL,
	published_at BIGINT NOT NULL,
	PRIMARY KEY (version, os, arch, channel)
);
CREATE TABLE rollouts (
	id         {{serial}},
	version    TEXT NOT NULL,
	percent    INTEGER NOT NULL DEFAULT 0,
	tenants    TEXT NOT NULL DEFAULT '',
	agents     TEXT NOT NULL DEFAULT '',
	halt_at    DOUBLE PRECISION NOT NULL DEFAULT 0,
	batch      INTEGER NOT NULL DEFAULT 0,
	state      TEXT NOT NULL,
	reason     TEXT NOT NULL DEFAULT '',
	created_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL
);
CREATE INDEX rollouts_state ON rollouts(state);
CREATE TABLE agent_updates (
	agent        TEXT NOT NULL,
	version      TEXT NOT NULL,
	tenant       TEXT NOT NULL DEFAULT '',
	rollout      BIGINT NOT NULL DEFAULT 0,
	state        TEXT NOT NULL,
	reason       TEXT NOT NULL DEFAULT '',
	message      TEXT NOT NULL DEFAULT '',
	from_version TEXT NOT NULL DEFAULT '',
	updated_at   BIGINT NOT NULL,
	PRIMARY KEY (agent, version)
);
CREATE INDEX agent_updates_version ON agent_updates(version);
`},
	// When the relay last heard from each agent, Unix seconds (0: never).
	{7, anyBinary, `
ALTER TABLE agents ADD COLUMN last_seen BIGINT NOT NULL DEFAULT 0;
`},
	// The change feed (changes.go); console sessions that outlive a
	// relay's restart (operators.go); release files kept in the store by
	// content hash instead of in a directory named by an absolute path
	// (releases.go: rows still naming a directory are imported at open).
	{8, 8, `
CREATE TABLE changes (
	seq     {{serial}},
	at_ms   BIGINT NOT NULL,
	kind    TEXT NOT NULL,
	tenant  TEXT NOT NULL DEFAULT '',
	subject TEXT NOT NULL DEFAULT ''
);
CREATE INDEX changes_at ON changes(at_ms);
CREATE TABLE console_sessions (
	id_hash    TEXT PRIMARY KEY,
	operator   TEXT NOT NULL,
	token_id   TEXT NOT NULL DEFAULT '',
	csrf       TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	expires_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_expires ON console_sessions(expires_at);
CREATE TABLE blobs (
	sha256 TEXT NOT NULL,
	part   INTEGER NOT NULL,
	data   {{blob}} NOT NULL,
	PRIMARY KEY (sha256, part)
);
ALTER TABLE releases ADD COLUMN binary_signature {{blob}};
ALTER TABLE releases ADD COLUMN manifest {{blob}};
ALTER TABLE releases ADD COLUMN manifest_signature {{blob}};
`},
	// Operators scoped to one tenant with a role (operator tokens and the
	// console sessions opened with them or by single sign-on); operator
	// certificates recorded at issue, so that they can be revoked. Rows
	// written before have tenant '' and role '': unscoped operators.
	{9, 9, `
ALTER TABLE operator_tokens ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
ALTER TABLE operator_tokens ADD COLUMN role TEXT NOT NULL DEFAULT '';
ALTER TABLE console_sessions ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
ALTER TABLE console_sessions ADD COLUMN role TEXT NOT NULL DEFAULT '';
ALTER TABLE console_sessions ADD COLUMN cert_serial TEXT NOT NULL DEFAULT '';
ALTER TABLE console_sessions ADD COLUMN subject TEXT NOT NULL DEFAULT '';
CREATE INDEX console_sessions_token ON console_sessions(token_id);
CREATE INDEX console_sessions_cert ON console_sessions(cert_serial);
CREATE TABLE operator_certs (
	serial     TEXT PRIMARY KEY,
	name       TEXT NOT NULL,
	tenant     TEXT NOT NULL DEFAULT '',
	role       TEXT NOT NULL DEFAULT '',
	created_at BIGINT NOT NULL,
	not_after  BIGINT NOT NULL,
	revoked_at BIGINT NOT NULL DEFAULT 0
);
`},
	// The tenant CA's files, for a CA kept in the store (a cluster of
	// relays on PostgreSQL; relay/internal/ca): certificates and the
	// manifest in the clear, private keys sealed under a key-encryption
	// key, which kek_id names ('' for a file in the clear).
	{10, 10, `
CREATE TABLE ca_files (
	name       TEXT PRIMARY KEY,
	data       {{blob}} NOT NULL,
	kek_id     TEXT NOT NULL DEFAULT '',
	updated_at BIGINT NOT NULL
);
`},
	// The relays of a cluster (cluster.go): each one's heartbeat row, by
	// the database clock, and presence rows for the agents it holds,
	// fenced by the run epoch of the relay that wrote them.
	{11, 11, `
CREATE TABLE relays (
	id           TEXT PRIMARY KEY,
	epoch        BIGINT NOT NULL,
	agent_addr   TEXT NOT NULL DEFAULT '',
	peer_addr    TEXT NOT NULL DEFAULT '',
	version      TEXT NOT NULL DEFAULT '',
	started_at   BIGINT NOT NULL,
	heartbeat_ms BIGINT NOT NULL,
	draining     INTEGER NOT NULL DEFAULT 0,
	agents       INTEGER NOT NULL DEFAULT 0,
	sessions     INTEGER NOT NULL DEFAULT 0,
	streams      BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE presence (
	relay_id TEXT NOT NULL,
	epoch    BIGINT NOT NULL,
	tenant   TEXT NOT NULL,
	agent    TEXT NOT NULL,
	sessions INTEGER NOT NULL,
	since_ms BIGINT NOT NULL,
	PRIMARY KEY (relay_id, epoch, agent)
);
CREATE INDEX presence_tenant ON presence(tenant);
`},
	// Only an agent's newest certificate is accepted (agents.go,
	// AgentCert): when it was issued (Unix milliseconds; 0 for rows
	// written before, whose agents are accepted on any valid certificate
	// until their next renewal records one) and to which agent process
	// (its boot id), and the certificate it replaced with the end of the
	// overlap during which that one is still accepted (Unix milliseconds).
	{12, anyBinary, `
ALTER TABLE agents ADD COLUMN cert_issued_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN cert_boot_id TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN prev_cert_serial TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN prev_cert_until BIGINT NOT NULL DEFAULT 0;
`},
	// A tenant's bandwidth limit, in bytes per second each way (0:
	// unlimited).
	{13, anyBinary, `
ALTER TABLE tenant_limits ADD COLUMN bandwidth BIGINT NOT NULL DEFAULT 0;
`},
	// Backend certificates recorded at issue (backends.go, BackendCert),
	// so that removing a backend ends them for good, even when a backend
	// of the same name is added again. certs_recorded is 1 on the rows of
	// backends added since; the rows written before have 0, as the
	// certificates issued to them were not recorded (the front door
	// accepts those while the backend stays: Backend.CertsUnrecorded).
	{14, anyBinary, `
CREATE TABLE backend_certs (
	serial     TEXT PRIMARY KEY,
	backend    TEXT NOT NULL REFERENCES backends(name) ON DELETE CASCADE,
	created_at BIGINT NOT NULL,
	not_after  BIGINT NOT NULL
);
CREATE INDEX backend_certs_backend ON backend_certs(backend);
ALTER TABLE backends ADD COLUMN certs_recorded INTEGER NOT NULL DEFAULT 0;
`},
	// Agents' update states are listed a page at a time, newest first
	// ((updated_at, agent, version) descending, releases.go,
	// AgentUpdatePage): an index in that order for the whole table, and
	// one for each filter that narrows it most (a version, a tenant), so
	// that a page reads its rows in order and stops, however many rows
	// accumulate. The version index replaces the one on version alone,
	// which it begins with.
	{15, anyBinary, `
CREATE INDEX agent_updates_recent ON agent_updates(updated_at, agent, version);
CREATE INDEX agent_updates_version_recent ON agent_updates(version, updated_at, agent);
CREATE INDEX agent_updates_tenant_recent ON agent_updates(tenant, updated_at, agent, version);
DROP INDEX agent_updates_version;
`},
	// The single sign-on issuer (its name in the relay's configuration)
	// that granted a console session: the session lasts only while that
	// very issuer is configured to grant it, even when another issuer
	// has the same issuer URL. Sessions written before have '' and end
	// at their next request (admin.ConsoleSession).
	{16, anyBinary, `
ALTER TABLE console_sessions ADD COLUMN sso_issuer TEXT NOT NULL DEFAULT '';
`},
	// Agents' update states are read by what changed since the last read
	// (releases.go, AgentUpdatesSince): seq is set at every write of a
	// row, to a number after those of the version's rows committed before
	// (SQLite) or to the id of the writing transaction (PostgreSQL; the
	// dialect's agentUpdateSeq and agentUpdateMark), and an index finds a
	// version's rows from a seq on. Rows written before have 0: a read of
	// every row (from 0) finds them.
	{17, anyBinary, `
ALTER TABLE agent_updates ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
CREATE INDEX agent_updates_version_seq ON agent_updates(version, seq);
`},
	// A key of its own for each audit record, unique, which the relay's
	// audit writer gives a record before it first tries to store it: a
	// record tried again (its transaction failed, or committed with the
	// answer lost; or read back from the audit file) is stored once.
	// Records written before have none (NULL: unique indexes let NULLs
	// repeat).
	{18, anyBinary, `
ALTER TABLE audit ADD COLUMN record_key TEXT;
CREATE UNIQUE INDEX audit_record_key ON audit(record_key);
`},
	// The newest schema version each relay's binary knows (its latest
	// migration; cluster.go, Relay.Schema), with the binary version it
	// goes with: a row written again by a binary from before this
	// migration (a relay rolled back under its id) keeps the newer
	// run's, under another version, and its schema reads as unknown (0).
	{19, anyBinary, `
ALTER TABLE relays ADD COLUMN schema_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE relays ADD COLUMN schema_of TEXT NOT NULL DEFAULT '';
`},
	// The newest certificate issued in a restore window (backup.go,
	// RestoreWindows) that the relay has accepted from an agent since
	// (agents.go, Agent.WindowCertSerial): its serial and when it was
	// issued (Unix milliseconds; 0: none). A certificate of the window
	// older than it is refused, and only a newer one of the window may
	// take the agent's newest certificate back from a renewal of it
	// (policy.LostRenewal). Older binaries leave the columns alone and
	// accept, as before, any certificate of the window newer than the
	// one on record.
	{20, anyBinary, `
ALTER TABLE agents ADD COLUMN window_cert_serial TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN window_cert_issued_at BIGINT NOT NULL DEFAULT 0;
`},
	// The audit records of one kind by date: the relay's retention of
	// high-volume records (audit.go, PruneAudit) deletes a kind's oldest
	// without reading the records it keeps, of every age, which audit_at
	// alone would read again at every batch. Older binaries do not
	// prune: the index costs them only its upkeep.
	{21, anyBinary, `
CREATE INDEX audit_kind_at ON audit(kind, at_ms);
`},
}

// latestMigration is the schema version a migrated store has.
func latestMigration() int { return migrations[len(migrations)-1].version }

// requiredByMigrations is the schema version a binary must know to open a
// store every migration of this binary was applied to.
func requiredByMigrations() int {
	req := 0
	for _, m := range migrations {
		req = max(req, m.compatibleFrom)
	}
	return req
}

// BinarySchemaVersion is the newest schema version this binary knows: its
// latest migration.
func BinarySchemaVersion() int { return latestMigration() }

// ErrSchemaTooNew is what a SchemaTooNewError is (errors.Is).
var ErrSchemaTooNew = errors.New("the store's schema requires a newer binary")

// SchemaTooNewError refuses a store whose schema a binary does not know
// well enough to work on correctly: migrations it does not know were
// applied to it, one of which requires binaries to know at least
// Requires.
type SchemaTooNewError struct {
	Store    int // the store's schema version: its newest migration
	Requires int // the schema version a binary must know to open it
	Binary   int // the newest schema version this binary knows
}

func (e *SchemaTooNewError) Error() string {
	return fmt.Sprintf("the store's schema is at version %d and requires a binary that knows schema version %d or newer; "+
		"this binary knows only up to version %d and would not work correctly on it: upgrade this tether-relay binary "+
		"(to the release the other relays or admin hosts of this store run) and start it again; the store is left as it is",
		e.Store, e.Requires, e.Binary)
}

// Is makes errors.Is(err, ErrSchemaTooNew) true.
func (e *SchemaTooNewError) Is(target error) bool { return target == ErrSchemaTooNew }

// SchemaState is what opening the store found of its schema.
type SchemaState struct {
	Store    int // the store's schema version (its newest migration), after this binary's were applied
	Binary   int // the newest schema version this binary knows
	Requires int // the schema version a binary must know to open the store
}

// Newer reports whether the store's schema is newer than this binary's
// (which still works on it: it opened).
func (st SchemaState) Newer() bool { return st.Store > st.Binary }

// Schema returns what opening the store found of its schema.
func (s *Store) Schema() SchemaState { return s.schema }

func (s *Store) migrate(ctx context.Context) error {
	// In a write transaction: outside one, SQLite may find the schema
	// changed under it by another process creating the same file and
	// answer SQLITE_BUSY at once instead of waiting (tx retries that).
	// Under the lock migrations take: PostgreSQL's CREATE TABLE IF NOT
	// EXISTS is not safe against itself in another transaction.
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if err := s.d.orderChanges(ctx, tx); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`)
		return err
	})
	if err != nil {
		return err
	}
	// Before anything is applied: a binary older than the store's schema
	// requires changes nothing.
	storeVersion, err := s.checkSchema(ctx)
	if err != nil {
		return err
	}
	pending, err := s.pendingMigrations(ctx)
	if err != nil {
		return err
	}
	began := time.Now()
	for _, m := range pending {
		if err := s.applyMigration(ctx, m, storeVersion == 0); err != nil {
			return err
		}
	}
	if len(pending) > 0 && ctx.Err() != nil {
		// The migrations outlasted the caller's bound (relay.New's 30
		// s), not their own: they are committed, and the next start
		// finds them applied.
		return fmt.Errorf("store migrations %d-%d applied, in %v, longer than this start may take: start again: %w",
			pending[0].version, pending[len(pending)-1].version, time.Since(began).Round(time.Millisecond), ctx.Err())
	}
	// The requirement of the migrations applied before it was recorded
	// (a store migrated by a binary that did not record it); and the
	// check again, for a newer binary's migrations applied meanwhile.
	var requires int
	if err := s.tx(ctx, func(tx *sql.Tx) error {
		if err := s.d.orderChanges(ctx, tx); err != nil {
			return err
		}
		if err := raiseRequirement(ctx, tx, requiredByMigrations()); err != nil {
			return err
		}
		var err error
		storeVersion, requires, err = checkRequirement(ctx, tx)
		return err
	}); err != nil {
		return err
	}
	s.schema = SchemaState{Store: storeVersion, Binary: latestMigration(), Requires: requires}
	if s.schema.Newer() {
		s.log.Warn("the store's schema is newer than this binary's; this binary still works on it correctly, "+
			"but lacks what the newer migrations brought: upgrade it (to the release the other relays or admin hosts of this store run)",
			"store_schema", s.schema.Store, "binary_schema", s.schema.Binary, "requires_binary_schema", s.schema.Requires)
	}
	return s.importReleaseDirs(ctx)
}

// MigrationTimeout bounds how long a migration may take, waiting for
// another process's migration included, whatever the deadline of the
// caller of Open (relay.New gives the whole start 30 s): a migration
// cut short is rolled back and tried again at the next start, holding
// the lock that orders every write of the cluster meanwhile, so an index
// built on a large table must be given the time to finish.
// MigrationLockTimeout bounds, on PostgreSQL, each wait of a migration
// for a lock on a table that another transaction holds: waiting, it
// would queue every reader of the table behind it.
var (
	MigrationTimeout     = 10 * time.Minute
	MigrationLockTimeout = 5 * time.Second
)

// pendingMigrations returns the migrations not yet applied, as they were
// when it looked: another process may be applying them.
func (s *Store) pendingMigrations(ctx context.Context) ([]migration, error) {
	applied := map[int]bool{}
	err := s.read(ctx, func() error {
		rows, err := s.db.QueryContext(ctx, `SELECT version FROM schema_migrations`)
		if err != nil {
			return err
		}
		defer rows.Close()
		clear(applied)
		for rows.Next() {
			var v int
			if err := rows.Scan(&v); err != nil {
				return err
			}
			applied[v] = true
		}
		return rows.Err()
	})
	var pending []migration
	for _, m := range migrations {
		if !applied[m.version] {
			pending = append(pending, m)
		}
	}
	return pending, err
}

// applyMigration applies m unless another process did meanwhile. It has
// MigrationTimeout, from now, whatever ctx's deadline (ctx's end by
// cancellation still ends it), and gives up at once waiting
// MigrationLockTimeout for a table's lock. Its start and end are logged
// (at Debug for a new store, whose migrations are only its creation).
func (s *Store) applyMigration(ctx context.Context, m migration, newStore bool) error {
	mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), MigrationTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			cancel()
		}
	})
	defer stop()
	level := slog.LevelInfo
	if newStore {
		level = slog.LevelDebug
	}
	var start time.Time
	applied := false
	// Each migration checks and applies under a lock that one process
	// holds at a time (SQLite: the write lock BEGIN IMMEDIATE takes;
	// other engines: the lock that orders the change feed), so two
	// processes opening a fresh database cannot both apply it.
	err := s.tx(mctx, func(tx *sql.Tx) error {
		applied = false
		if err := s.d.orderChanges(mctx, tx); err != nil {
			return err
		}
		done, err := exists(mctx, tx, `SELECT count(*) FROM schema_migrations WHERE version = $1`, m.version)
		if err != nil || done {
			return err
		}
		if m.compatibleFrom == m.version {
			if err := s.olderRelaysRunning(mctx, tx, m.version); err != nil {
				return err
			}
		}
		// Once the lock above is held: it bounds the wait for that one
		// too, which is another process's migration or a short write.
		if q := s.d.lockTimeout(MigrationLockTimeout); q != "" {
			if _, err := tx.ExecContext(mctx, q); err != nil {
				return err
			}
		}
		start = time.Now()
		s.log.Log(mctx, level, "applying store migration", "migration", m.version)
		if _, err := tx.ExecContext(mctx, s.d.ddl(m.sql)); err != nil {
			if s.d.classify(err) == classLockTimeout {
				return fmt.Errorf("migration %d: gave up after waiting %v for a lock on a table that another transaction holds "+
					"(it would have queued every reader of the table behind it); nothing was changed: start again once that transaction is over: %w",
					m.version, MigrationLockTimeout, err)
			}
			return fmt.Errorf("migration %d: %w", m.version, err)
		}
		if _, err = tx.ExecContext(mctx, `INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)`, m.version, time.Now().Unix()); err != nil {
			return err
		}
		applied = true
		// With the migration, in its transaction: no binary that
		// requirement refuses sees the migration without it.
		return raiseRequirement(mctx, tx, m.compatibleFrom)
	})
	switch {
	case err != nil && !start.IsZero():
		s.log.Error("store migration failed", "migration", m.version, "took", time.Since(start).Round(time.Millisecond), "err", err)
		if errors.Is(mctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("migration %d did not finish within %v and was rolled back: %w", m.version, MigrationTimeout, err)
		}
	case applied:
		s.log.Log(mctx, level, "applied store migration", "migration", m.version, "took", time.Since(start).Round(time.Millisecond))
	}
	return err
}

// relayLiveWindow is how long after its last heartbeat a relay's row
// counts as a running relay (cluster.DefaultDeadAfter).
const relayLiveWindow = 10 * time.Second

// olderRelaysRunning refuses to apply migration version, which breaks
// binaries that do not know it, while relays that run such binaries are
// live on the store (a heartbeat within relayLiveWindow, by the database
// clock): they would go on running on a schema they do not know, since
// a relay checks the schema only as it starts. Stopped, their rows stop
// counting within relayLiveWindow.
func (s *Store) olderRelaysRunning(ctx context.Context, tx *sql.Tx, version int) error {
	relays, err := exists(ctx, tx, `SELECT count(*) FROM schema_migrations WHERE version = 11`)
	if err != nil || !relays {
		return err
	}
	withSchema, err := exists(ctx, tx, `SELECT count(*) FROM schema_migrations WHERE version = 19`)
	if err != nil {
		return err
	}
	schema := "0" // relays from before migration 19 do not say
	if withSchema {
		schema = "CASE WHEN schema_of = version THEN schema_version ELSE 0 END"
	}
	rows, err := tx.QueryContext(ctx, fmt.Sprintf(`SELECT id, version, %s FROM relays WHERE heartbeat_ms > %s - $1 ORDER BY id`, schema, s.d.nowMillis()),
		relayLiveWindow.Milliseconds())
	if err != nil {
		return err
	}
	defer rows.Close()
	var older []string
	for rows.Next() {
		var id, v string
		var sv int
		if err := rows.Scan(&id, &v, &sv); err != nil {
			return err
		}
		if sv < version {
			older = append(older, fmt.Sprintf("%s (version %q, schema %d)", id, v, sv))
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(older) > 0 {
		return fmt.Errorf("migration %d breaks binaries that do not know it, and relays that run one are live on this store: %s; "+
			"stop every relay of the older release (their rows stop counting %v after their last heartbeat), then start this one again; nothing was changed",
			version, strings.Join(older, ", "), relayLiveWindow)
	}
	return nil
}

// checkSchema returns the store's schema version (0 for a new store) and
// refuses, with a SchemaTooNewError, a store whose schema requires a
// binary that knows more than this one.
func (s *Store) checkSchema(ctx context.Context) (version int, err error) {
	err = s.tx(ctx, func(tx *sql.Tx) error {
		if err := s.d.orderChanges(ctx, tx); err != nil {
			return err
		}
		version, _, err = checkRequirement(ctx, tx)
		return err
	})
	return version, err
}

// checkRequirement returns the store's schema version (0 for a new
// store) and the version it requires a binary to know, or a
// SchemaTooNewError when that is more than this binary knows.
func checkRequirement(ctx context.Context, tx *sql.Tx) (version, requires int, err error) {
	var v sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT max(version) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, 0, err
	}
	version = int(v.Int64)
	if version == 0 {
		return 0, 0, nil // a new store
	}
	if requires, err = storedRequirement(ctx, tx); err != nil {
		return 0, 0, err
	}
	if requires > latestMigration() {
		return 0, 0, &SchemaTooNewError{Store: version, Requires: requires, Binary: latestMigration()}
	}
	return version, requires, nil
}

// storedRequirement reads the schema version a binary must know to open
// the store; 0 where none is recorded.
func storedRequirement(ctx context.Context, tx *sql.Tx) (int, error) {
	var v string
	err := tx.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = $1`, schemaRequiresKey).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read the schema version the store requires: %w", err)
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("setting %s is damaged: %q", schemaRequiresKey, v)
	}
	return n, nil
}

// raiseRequirement records that a binary must know schema version req to
// open the store, unless a higher requirement is recorded.
func raiseRequirement(ctx context.Context, tx *sql.Tx, req int) error {
	cur, err := storedRequirement(ctx, tx)
	if err != nil || cur >= req {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2`, schemaRequiresKey, strconv.Itoa(req))
	return err
}

// SchemaVersion is the highest migration applied.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT max(version) FROM schema_migrations`).Scan(&v)
	return int(v.Int64), err
}
