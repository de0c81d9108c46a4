package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrRevoked is returned when an operation needs a live agent and the agent
// was revoked.
var ErrRevoked = errors.New("agent was revoked")

// RevokeAgent marks agent id revoked at now. Revoking twice keeps the first
// time and reason and reports no error, so the command can be repeated.
func (s *Store) RevokeAgent(ctx context.Context, id, reason string, now time.Time) (Agent, error) {
	var a Agent
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE agents SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at = 0`,
			id, now.UnixMilli(), reason); err != nil {
			return err
		}
		var err error
		a, err = scanAgent(tx.QueryRowContext(ctx, `SELECT `+agentCols+` FROM agents WHERE id = $1`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("agent %s: %w", id, ErrNotFound)
		}
		return err
	})
	return a, err
}

// Revocation names a revoked agent.
type Revocation struct {
	Agent, Tenant string
	At            time.Time
}

// RevokedSince returns the agents revoked at or after since, oldest first.
func (s *Store) RevokedSince(ctx context.Context, since time.Time) ([]Revocation, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, tenant, revoked_at FROM agents WHERE revoked_at >= $1 AND revoked_at > 0 ORDER BY revoked_at`, since.UnixMilli())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Revocation
	for rows.Next() {
		var r Revocation
		var at int64
		if err := rows.Scan(&r.Agent, &r.Tenant, &at); err != nil {
			return nil, err
		}
		r.At = fromUnixMilli(at)
		out = append(out, r)
	}
	return out, rows.Err()
}

// CountAgents returns how many agents of tenant are enrolled and not revoked.
func (s *Store) CountAgents(ctx context.Context, tenant string) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM agents WHERE tenant = $1 AND revoked_at = 0`, tenant).Scan(&n)
	return n, err
}

// AgentsByCertRoot counts, by the CA root that issued their newest
// certificate, the agents that depend on that root at now: not revoked,
// certificate not expired. The key "" holds certificates issued before CA
// rotation existed.
func (s *Store) AgentsByCertRoot(ctx context.Context, now time.Time) (map[string]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT cert_root, count(*) FROM agents WHERE revoked_at = 0 AND cert_not_after > $1 GROUP BY cert_root`, unix(now))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var root string
		var n int
		if err := rows.Scan(&root, &n); err != nil {
			return nil, err
		}
		out[root] = n
	}
	return out, rows.Err()
}

// AgentsOnCertRoots returns up to limit agents, sorted by tenant and id,
// that depend at now on one of roots (as AgentsByCertRoot counts them).
func (s *Store) AgentsOnCertRoots(ctx context.Context, roots []string, now time.Time, limit int) ([]Agent, error) {
	if len(roots) == 0 {
		return nil, nil
	}
	args := []any{unix(now), limit}
	marks := make([]string, len(roots))
	for i, r := range roots {
		args = append(args, r)
		marks[i] = fmt.Sprintf("$%d", len(args))
	}
	return s.queryAgents(ctx, `SELECT `+agentCols+` FROM agents WHERE revoked_at = 0 AND cert_not_after > $1
		AND cert_root IN (`+strings.Join(marks, ", ")+`) ORDER BY tenant, id LIMIT $2`, args...)
}

// AuditRecord is one entry of the audit trail. Detail holds the fields
// particular to Kind (bytes, duration, reason, …).
type AuditRecord struct {
	Seq     int64          `json:"seq,omitempty"`
	At      time.Time      `json:"at"`
	Kind    string         `json:"kind"`    // e.g. "agent.enrol", "stream"
	Outcome string         `json:"outcome"` // "ok" or a refusal code
	Tenant  string         `json:"tenant,omitempty"`
	Agent   string         `json:"agent,omitempty"`
	Backend string         `json:"backend,omitempty"`
	Actor   string         `json:"actor,omitempty"` // who acted: "operator", "relay", a backend, an agent
	Detail  map[string]any `json:"detail,omitempty"`
}

// AddAudit appends records in one transaction and sets their Seq.
func (s *Store) AddAudit(ctx context.Context, recs []AuditRecord) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		// seq is the rowid, so LastInsertId is it: an Exec costs less
		// than a query's rows for every record.
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO audit (at_ms, kind, outcome, tenant, agent, backend, actor, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for i := range recs {
			r := &recs[i]
			detail := []byte("{}")
			if len(r.Detail) > 0 {
				if detail, err = json.Marshal(r.Detail); err != nil {
					return fmt.Errorf("audit detail: %w", err)
				}
			}
			res, err := stmt.ExecContext(ctx, r.At.UnixMilli(), r.Kind, r.Outcome, r.Tenant, r.Agent, r.Backend, r.Actor, string(detail))
			if err != nil {
				return err
			}
			if r.Seq, err = res.LastInsertId(); err != nil {
				return err
			}
		}
		return nil
	})
}

// AuditFilter selects audit records; zero fields match everything.
type AuditFilter struct {
	Tenant, Agent, Backend string
	// Kind matches exactly, or as a prefix when it ends in ".".
	Kind        string
	Since       time.Time // inclusive
	Until       time.Time // exclusive
	AfterSeq    int64
	BeforeSeq   int64 // exclusive; 0: no bound
	Limit       int   // default 1000
	NewestFirst bool
}

// ListAudit returns the records matching f, oldest first unless
// f.NewestFirst.
func (s *Store) ListAudit(ctx context.Context, f AuditFilter) ([]AuditRecord, error) {
	var where []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, strings.ReplaceAll(cond, "?", fmt.Sprintf("$%d", len(args))))
	}
	if f.Tenant != "" {
		add("tenant = ?", f.Tenant)
	}
	if f.Agent != "" {
		add("agent = ?", f.Agent)
	}
	if f.Backend != "" {
		add("backend = ?", f.Backend)
	}
	if strings.HasSuffix(f.Kind, ".") {
		add(fmt.Sprintf("substr(kind, 1, %d) = ?", len(f.Kind)), f.Kind)
	} else if f.Kind != "" {
		add("kind = ?", f.Kind)
	}
	if !f.Since.IsZero() {
		add("at_ms >= ?", f.Since.UnixMilli())
	}
	if !f.Until.IsZero() {
		add("at_ms < ?", f.Until.UnixMilli())
	}
	if f.AfterSeq > 0 {
		add("seq > ?", f.AfterSeq)
	}
	if f.BeforeSeq > 0 {
		add("seq < ?", f.BeforeSeq)
	}
	if f.Limit <= 0 {
		f.Limit = 1000
	}
	q := `SELECT seq, at_ms, kind, outcome, tenant, agent, backend, actor, detail FROM audit`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	if f.NewestFirst {
		q += " ORDER BY seq DESC"
	} else {
		q += " ORDER BY seq"
	}
	q += fmt.Sprintf(" LIMIT %d", f.Limit)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []AuditRecord
	for rows.Next() {
		var r AuditRecord
		var at int64
		var detail string
		if err := rows.Scan(&r.Seq, &at, &r.Kind, &r.Outcome, &r.Tenant, &r.Agent, &r.Backend, &r.Actor, &detail); err != nil {
			return nil, err
		}
		r.At = fromUnixMilli(at)
		if detail != "" && detail != "{}" {
			if err := json.Unmarshal([]byte(detail), &r.Detail); err != nil {
				return nil, fmt.Errorf("audit record %d: damaged detail: %w", r.Seq, err)
			}
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Limits are a tenant's bulkheads. Zero means unlimited.
type Limits struct {
	Tenant     string
	MaxAgents  int      // enrolled (and connected) agents
	MaxStreams int      // concurrent streams through the relay
	OpenRate   float64  // stream opens per second, per backend
	OpenBurst  int      // token-bucket burst for OpenRate
	CIDRs      []string // networks agents may connect from; empty: any
	UpdatedAt  time.Time
}

// SetLimits stores tenant's limits, replacing earlier ones.
func (s *Store) SetLimits(ctx context.Context, l Limits) error {
	if _, err := s.Tenant(ctx, l.Tenant); err != nil {
		return err
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO tenant_limits (tenant, max_agents, max_streams, open_rate, open_burst, cidrs, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (tenant) DO UPDATE SET max_agents = $2, max_streams = $3, open_rate = $4, open_burst = $5, cidrs = $6, updated_at = $7`,
		l.Tenant, l.MaxAgents, l.MaxStreams, l.OpenRate, l.OpenBurst, strings.Join(l.CIDRs, ","), l.UpdatedAt.UnixMilli())
	return err
}

// AllLimits returns the limits of every tenant that has any, by tenant.
func (s *Store) AllLimits(ctx context.Context) (map[string]Limits, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT tenant, max_agents, max_streams, open_rate, open_burst, cidrs, updated_at FROM tenant_limits`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]Limits{}
	for rows.Next() {
		var l Limits
		var cidrs string
		var updated int64
		if err := rows.Scan(&l.Tenant, &l.MaxAgents, &l.MaxStreams, &l.OpenRate, &l.OpenBurst, &cidrs, &updated); err != nil {
			return nil, err
		}
		if cidrs != "" {
			l.CIDRs = strings.Split(cidrs, ",")
		}
		l.UpdatedAt = fromUnixMilli(updated)
		out[l.Tenant] = l
	}
	return out, rows.Err()
}
