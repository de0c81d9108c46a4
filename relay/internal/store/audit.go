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
	// Key, when set, is the record's own key, unique in the store:
	// AddAudit stores a record with a key at most once, however often it
	// is given. Not read back by ListAudit.
	Key string `json:"key,omitempty"`
}

// AddAudit appends records in one transaction and sets their Seq. A
// record whose Key the store already holds is not added again: it gets
// the Seq it was stored with (so that a batch tried again after its
// commit's answer was lost adds nothing twice).
func (s *Store) AddAudit(ctx context.Context, recs []AuditRecord) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, s.d.insertIDQuery(`INSERT INTO audit (at_ms, kind, outcome, tenant, agent, backend, actor, detail, record_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING`, "seq"))
		if err != nil {
			return err
		}
		defer stmt.Close()
		for i := range recs {
			r := &recs[i]
			detail := []byte("{}")
			if len(r.Detail) > 0 {
				if detail, err = json.Marshal(r.Detail); err != nil {
					return fmt.Errorf("audit detail: %w", refusedError{err})
				}
			}
			var key any // NULL without a key
			if r.Key != "" {
				key = r.Key
			}
			r.Seq, err = s.d.execInsertID(ctx, stmt, r.At.UnixMilli(), r.Kind, r.Outcome, r.Tenant, r.Agent, r.Backend, r.Actor, string(detail), key)
			if errors.Is(err, sql.ErrNoRows) && r.Key != "" { // stored already
				err = tx.QueryRowContext(ctx, `SELECT seq FROM audit WHERE record_key = $1`, r.Key).Scan(&r.Seq)
			}
			if err != nil {
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
	Kind string
	// Request matches the records of one request id (their detail's
	// "request"). Letters, digits and "-" only.
	Request     string
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
	if f.Request != "" {
		if strings.Trim(f.Request, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" {
			return nil, fmt.Errorf("audit request id %q: letters, digits and \"-\" only", f.Request)
		}
		// Details are stored as encoding/json writes them, without spaces.
		add("detail LIKE ?", `%"request":"`+f.Request+`"%`)
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

// PruneAudit deletes the audit records of kinds (exact kinds) dated
// before before, at most batch records a transaction (default 1000), so
// that no transaction holds the table long, until none is left or ctx
// ends. It returns how many it deleted of each kind (those deleted before
// an error included). The index on (kind, at_ms) finds them without
// reading the records kept.
//
// Several processes may prune at once (the relays of a cluster): each
// deletes what the others have not, and the counts of all of them add up
// to what was deleted.
func (s *Store) PruneAudit(ctx context.Context, kinds []string, before time.Time, batch int) (map[string]int64, error) {
	if batch <= 0 {
		batch = 1000
	}
	deleted := map[string]int64{}
	for _, kind := range kinds {
		for {
			var n int64
			err := s.tx(ctx, func(tx *sql.Tx) error {
				res, err := tx.ExecContext(ctx, `DELETE FROM audit WHERE seq IN (SELECT seq FROM audit WHERE kind = $1 AND at_ms < $2 ORDER BY at_ms LIMIT $3)`,
					kind, before.UnixMilli(), batch)
				if err != nil {
					return err
				}
				n, err = affected(res)
				return err
			})
			if err != nil {
				return deleted, fmt.Errorf("prune %s audit records before %s: %w", kind, before.UTC().Format(time.RFC3339), err)
			}
			if n > 0 {
				deleted[kind] += n
			}
			if n < int64(batch) {
				break
			}
			if err := ctx.Err(); err != nil {
				return deleted, err
			}
		}
	}
	return deleted, nil
}
