package store

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

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
	err := s.write(ctx, func(tx *sql.Tx) error {
		if _, err := tenant(ctx, tx, t.Tenant); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO join_tokens (id, tenant, secret_hash, created_at, expires_at, max_uses, uses, ca_root) VALUES ($1, $2, $3, $4, $5, $6, 0, $7)`,
			t.ID, t.Tenant, hex.EncodeToString(t.SecretHash), unix(t.CreatedAt), unix(t.ExpiresAt), t.MaxUses, t.CARoot)
		return err
	}, Change{Kind: ChangeToken, Tenant: t.Tenant, Subject: t.ID})
	if s.unique(err) {
		return fmt.Errorf("join token %s: %w", t.ID, ErrExists)
	}
	return err
}

const tokenCols = `id, tenant, created_at, expires_at, max_uses, uses, ca_root`

// ListTokens returns join tokens of tenant ("" for all), newest first,
// without their secret hashes.
func (s *Store) ListTokens(ctx context.Context, tenant string) ([]Token, error) {
	return queryTokens(ctx, s.db, `SELECT `+tokenCols+` FROM join_tokens
		WHERE $1 = '' OR tenant = $1 ORDER BY created_at DESC, id`, tenant)
}

// JoinToken returns one join token, without its secret hash.
func (s *Store) JoinToken(ctx context.Context, id string) (Token, error) {
	ts, err := queryTokens(ctx, s.db, `SELECT `+tokenCols+` FROM join_tokens WHERE id = $1`, id)
	if err != nil {
		return Token{}, err
	}
	if len(ts) == 0 {
		return Token{}, fmt.Errorf("join token %s: %w", id, ErrNotFound)
	}
	return ts[0], nil
}

// LiveTokens returns the join tokens that can still enrol an agent at now
// (not expired, uses left), newest first, without their secret hashes.
func (s *Store) LiveTokens(ctx context.Context, now time.Time) ([]Token, error) {
	return queryTokens(ctx, s.db, `SELECT `+tokenCols+` FROM join_tokens
		WHERE expires_at > $1 AND uses < max_uses ORDER BY created_at DESC, id`, unix(now))
}

// querier is a *sql.DB or a *sql.Tx.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func queryTokens(ctx context.Context, q querier, query string, args ...any) ([]Token, error) {
	rows, err := q.QueryContext(ctx, query, args...)
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
	var limitless func(string) (int, error)
	if check != nil {
		limitless = func(tenant string) (int, error) { return 0, check(tenant) }
	}
	return s.consumeToken(ctx, id, secretMatches, now, limitless, nil)
}

// EnrolAgent is ConsumeToken and the registration of the agent it enrols,
// in one transaction: register, called with the token once its use is
// taken, returns the agent to add (in the token's tenant). Either both are
// stored or neither: a registration that fails — register's error, the
// tenant gone, the store not answering before ctx ends — leaves the
// token's use untaken, so a stalled or failing store never spends a join
// token on an agent that was not enrolled.
//
// check, when not nil, runs as ConsumeToken's does (it must not wait on
// the store: it runs outside the transaction), and returns with its
// verdict the most agents the token's tenant may have (0: no limit).
// Under a limit the transaction counts the tenant's agents enrolled and
// not revoked, with the tenant locked against other enrolments, and
// refuses with ErrAgentLimit when there are that many: concurrent
// enrolments, in one process or on relays sharing the store, never take a
// tenant past its limit. No use is taken then.
func (s *Store) EnrolAgent(ctx context.Context, id string, secretMatches func(hash []byte) bool, now time.Time, check func(tenant string) (maxAgents int, err error), register func(Token) (Agent, error)) (Token, error) {
	return s.consumeToken(ctx, id, secretMatches, now, check, register)
}

func (s *Store) consumeToken(ctx context.Context, id string, secretMatches func(hash []byte) bool, now time.Time, check func(tenant string) (int, error), register func(Token) (Agent, error)) (Token, error) {
	var t Token
	var hashHex string
	var created, expires int64
	err := s.db.QueryRowContext(ctx, `SELECT id, tenant, secret_hash, created_at, expires_at, max_uses, uses, ca_root FROM join_tokens WHERE id = $1`, id).
		Scan(&t.ID, &t.Tenant, &hashHex, &created, &expires, &t.MaxUses, &t.Uses, &t.CARoot)
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
	maxAgents := 0
	if check != nil {
		if maxAgents, err = check(t.Tenant); err != nil {
			return t, err
		}
	}
	err = s.tx(ctx, func(tx *sql.Tx) error {
		if maxAgents > 0 {
			if err := s.underAgentLimit(ctx, tx, t.Tenant, maxAgents); err != nil {
				return err
			}
		}
		res, err := tx.ExecContext(ctx, `UPDATE join_tokens SET uses = uses + 1 WHERE id = $1 AND uses < max_uses AND expires_at > $2`, id, unix(now))
		if err != nil {
			return err
		}
		if n, err := affected(res); err != nil {
			return err
		} else if n == 0 {
			// Read since the lookup: used up by others, or revoked
			// (deleted) meanwhile, which is no use left to say so.
			var uses int
			switch err := tx.QueryRowContext(ctx, `SELECT uses FROM join_tokens WHERE id = $1`, id).Scan(&uses); {
			case errors.Is(err, sql.ErrNoRows):
				return fmt.Errorf("join token %s, revoked as it was used: %w", id, ErrNotFound)
			case err != nil:
				return err
			}
			return fmt.Errorf("join token %s: %w", id, ErrTokenUsedUp)
		}
		if err := tx.QueryRowContext(ctx, `SELECT uses FROM join_tokens WHERE id = $1`, id).Scan(&t.Uses); err != nil {
			return err
		}
		if register == nil {
			return nil
		}
		a, err := register(t)
		if err != nil {
			return err
		}
		if a.Tenant != t.Tenant {
			return fmt.Errorf("agent %s: tenant %q is not the join token's %q", a.ID, a.Tenant, t.Tenant)
		}
		return addAgent(ctx, tx, a)
	})
	if errors.Is(err, ErrTokenUsedUp) || errors.Is(err, ErrAgentLimit) {
		return t, err
	}
	if errors.Is(err, ErrNotFound) {
		return Token{}, err
	}
	if register != nil && err != nil {
		if s.unique(err) {
			err = fmt.Errorf("register agent: %w", ErrExists)
		}
		return t, err
	}
	if err != nil {
		return Token{}, err
	}
	return t, nil
}

// underAgentLimit returns ErrAgentLimit when tenant has maxAgents agents
// or more enrolled and not revoked. It first locks the tenant's row until
// tx ends, so that the enrolments of one tenant count one after another,
// each seeing the agents of those before it (SQLite: every transaction
// already holds the write lock). The lock leaves other writers that only
// refer to the tenant (its agents, tokens, limits) free.
func (s *Store) underAgentLimit(ctx context.Context, tx *sql.Tx, tenant string, maxAgents int) error {
	var name string
	err := tx.QueryRowContext(ctx, `SELECT name FROM tenants WHERE name = $1`+s.d.lockRows(), tenant).Scan(&name)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("tenant %q: %w", tenant, ErrNotFound)
	}
	if err != nil {
		return err
	}
	n, err := countAgents(ctx, tx, tenant)
	if err != nil {
		return err
	}
	if n >= maxAgents {
		return fmt.Errorf("tenant %q has %d agents enrolled, its limit %d: %w", tenant, n, maxAgents, ErrAgentLimit)
	}
	return nil
}

// DeleteToken removes a join token, so that it enrols no more agents.
func (s *Store) DeleteToken(ctx context.Context, id string) (Token, error) {
	var t Token
	err := s.writeChanges(ctx, func(tx *sql.Tx) ([]Change, error) {
		ts, err := queryTokens(ctx, tx, `SELECT `+tokenCols+` FROM join_tokens WHERE id = $1`, id)
		if err != nil {
			return nil, err
		}
		if len(ts) == 0 {
			return nil, fmt.Errorf("join token %s: %w", id, ErrNotFound)
		}
		t = ts[0]
		_, err = tx.ExecContext(ctx, `DELETE FROM join_tokens WHERE id = $1`, id)
		return []Change{{Kind: ChangeToken, Tenant: t.Tenant, Subject: id}}, err
	})
	return t, err
}

// PurgeTokens deletes the join tokens that can enrol no more agents and
// have not been able to for a while: those that expired before before,
// and those whose every use is taken that were created before before (a
// token does not record when its last use was taken; it was after its
// creation). It returns the tokens deleted, appending a ChangeToken for
// each, as DeleteToken does.
func (s *Store) PurgeTokens(ctx context.Context, before time.Time) ([]Token, error) {
	var out []Token
	err := s.writeChanges(ctx, func(tx *sql.Tx) ([]Change, error) {
		ts, err := queryTokens(ctx, tx, `SELECT `+tokenCols+` FROM join_tokens
			WHERE expires_at < $1 OR (uses >= max_uses AND created_at < $1) ORDER BY created_at, id`+s.d.lockRows(), unix(before))
		if err != nil || len(ts) == 0 {
			return nil, err
		}
		changes := make([]Change, 0, len(ts))
		for _, t := range ts {
			if _, err := tx.ExecContext(ctx, `DELETE FROM join_tokens WHERE id = $1`, t.ID); err != nil {
				return nil, err
			}
			changes = append(changes, Change{Kind: ChangeToken, Tenant: t.Tenant, Subject: t.ID})
		}
		out = ts
		return changes, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
