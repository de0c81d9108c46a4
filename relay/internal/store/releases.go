package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// migrationReleases (6) holds agent releases, rollouts and each agent's
// update state.
const migrationReleases = `
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
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
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
`

// Release is a published agent release (its signed files are in Dir).
type Release struct {
	Version, OS, Arch, Channel string
	SHA256                     string
	Size                       int64
	ExpiresAt                  time.Time
	KeyID                      string // the minisign key id that signed it, as printed
	Dir                        string
	PublishedAt                time.Time
}

// AddRelease records a release; a release of the same version, OS,
// architecture and channel is ErrExists.
func (s *Store) AddRelease(ctx context.Context, r Release) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO releases (version, os, arch, channel, sha256, size, expires_at, key_id, dir, published_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		r.Version, r.OS, r.Arch, r.Channel, r.SHA256, r.Size, unix(r.ExpiresAt), r.KeyID, r.Dir, unix(r.PublishedAt))
	if isUnique(err) {
		return fmt.Errorf("release %s %s/%s %s: %w", r.Version, r.OS, r.Arch, r.Channel, ErrExists)
	}
	return err
}

// Releases returns the releases of version ("" for all), newest first.
func (s *Store) Releases(ctx context.Context, version string) ([]Release, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT version, os, arch, channel, sha256, size, expires_at, key_id, dir, published_at
		FROM releases WHERE $1 = '' OR version = $1 ORDER BY published_at DESC, version, os, arch, channel`, version)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Release
	for rows.Next() {
		var r Release
		var exp, pub int64
		if err := rows.Scan(&r.Version, &r.OS, &r.Arch, &r.Channel, &r.SHA256, &r.Size, &exp, &r.KeyID, &r.Dir, &pub); err != nil {
			return nil, err
		}
		r.ExpiresAt, r.PublishedAt = fromUnix(exp), fromUnix(pub)
		out = append(out, r)
	}
	return out, rows.Err()
}

// Rollout states.
const (
	RolloutActive     = "active"
	RolloutHalted     = "halted"
	RolloutSuperseded = "superseded"
)

// Rollout offers a version to a selection of agents: Agents, else
// Tenants, else Percent of all agents.
type Rollout struct {
	ID        int64
	Version   string
	Percent   int
	Tenants   []string
	Agents    []string
	HaltAt    float64 // halt when this fraction of the agents offered failed; 0 never
	Batch     int     // at most this many agents updating at once; 0 no limit
	State     string
	Reason    string
	CreatedAt time.Time
	UpdatedAt time.Time
}

// AddRollout starts a rollout; the active one, if any, is superseded.
func (s *Store) AddRollout(ctx context.Context, r Rollout) (int64, error) {
	var id int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE rollouts SET state = $1, updated_at = $2 WHERE state = $3`, RolloutSuperseded, unix(r.CreatedAt), RolloutActive); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `INSERT INTO rollouts (version, percent, tenants, agents, halt_at, batch, state, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id`,
			r.Version, r.Percent, strings.Join(r.Tenants, ","), strings.Join(r.Agents, ","), r.HaltAt, r.Batch, RolloutActive, unix(r.CreatedAt)).Scan(&id)
	})
	return id, err
}

// Rollouts returns rollouts, newest first; only active ones when active.
func (s *Store) Rollouts(ctx context.Context, active bool) ([]Rollout, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, version, percent, tenants, agents, halt_at, batch, state, reason, created_at, updated_at
		FROM rollouts WHERE NOT $1 OR state = $2 ORDER BY id DESC`, active, RolloutActive)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Rollout
	for rows.Next() {
		var r Rollout
		var tenants, agents string
		var created, updated int64
		if err := rows.Scan(&r.ID, &r.Version, &r.Percent, &tenants, &agents, &r.HaltAt, &r.Batch, &r.State, &r.Reason, &created, &updated); err != nil {
			return nil, err
		}
		r.Tenants, r.Agents = splitList(tenants), splitList(agents)
		r.CreatedAt, r.UpdatedAt = fromUnix(created), fromUnix(updated)
		out = append(out, r)
	}
	return out, rows.Err()
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// ActiveRollout returns the active rollout, or ErrNotFound.
func (s *Store) ActiveRollout(ctx context.Context) (Rollout, error) {
	rs, err := s.Rollouts(ctx, true)
	if err != nil {
		return Rollout{}, err
	}
	if len(rs) == 0 {
		return Rollout{}, fmt.Errorf("active rollout: %w", ErrNotFound)
	}
	return rs[0], nil
}

// HaltRollout halts rollout id if it is active and reports whether it did.
func (s *Store) HaltRollout(ctx context.Context, id int64, reason string, now time.Time) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE rollouts SET state = $1, reason = $2, updated_at = $3 WHERE id = $4 AND state = $5`,
		RolloutHalted, reason, unix(now), id, RolloutActive)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// AgentUpdate is where one agent stands with one version.
type AgentUpdate struct {
	Agent, Version, Tenant string
	Rollout                int64
	State                  string
	Reason, Message        string
	From                   string
	UpdatedAt              time.Time
}

// SetAgentUpdate records an agent's update state for a version.
func (s *Store) SetAgentUpdate(ctx context.Context, u AgentUpdate) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO agent_updates (agent, version, tenant, rollout, state, reason, message, from_version, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (agent, version) DO UPDATE SET tenant = excluded.tenant, rollout = CASE WHEN excluded.rollout = 0 THEN agent_updates.rollout ELSE excluded.rollout END,
			state = excluded.state, reason = excluded.reason, message = excluded.message,
			from_version = CASE WHEN excluded.from_version = '' THEN agent_updates.from_version ELSE excluded.from_version END, updated_at = excluded.updated_at`,
		u.Agent, u.Version, u.Tenant, u.Rollout, u.State, u.Reason, u.Message, u.From, unix(u.UpdatedAt))
	return err
}

// AgentUpdates returns update states of version ("" for all), newest first.
func (s *Store) AgentUpdates(ctx context.Context, version string) ([]AgentUpdate, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT agent, version, tenant, rollout, state, reason, message, from_version, updated_at
		FROM agent_updates WHERE $1 = '' OR version = $1 ORDER BY updated_at DESC, agent`, version)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []AgentUpdate
	for rows.Next() {
		var u AgentUpdate
		var at int64
		if err := rows.Scan(&u.Agent, &u.Version, &u.Tenant, &u.Rollout, &u.State, &u.Reason, &u.Message, &u.From, &at); err != nil {
			return nil, err
		}
		u.UpdatedAt = fromUnix(at)
		out = append(out, u)
	}
	return out, rows.Err()
}

// AgentUpdate returns one agent's state for version, or ErrNotFound.
func (s *Store) AgentUpdate(ctx context.Context, agent, version string) (AgentUpdate, error) {
	var u AgentUpdate
	var at int64
	err := s.db.QueryRowContext(ctx, `SELECT agent, version, tenant, rollout, state, reason, message, from_version, updated_at
		FROM agent_updates WHERE agent = $1 AND version = $2`, agent, version).
		Scan(&u.Agent, &u.Version, &u.Tenant, &u.Rollout, &u.State, &u.Reason, &u.Message, &u.From, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return u, fmt.Errorf("update of agent %s to %s: %w", agent, version, ErrNotFound)
	}
	u.UpdatedAt = fromUnix(at)
	return u, err
}
