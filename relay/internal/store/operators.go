package store

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// migrationOperators (migration 5) keeps the admin API's operator tokens:
// a name, a hash of the secret, an expiry and a revocation time.
const migrationOperators = `
CREATE TABLE operator_tokens (
	id          TEXT PRIMARY KEY,
	name        TEXT NOT NULL,
	secret_hash TEXT NOT NULL,
	created_at  BIGINT NOT NULL,
	expires_at  BIGINT NOT NULL,
	revoked_at  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX operator_tokens_name ON operator_tokens(name);
`

// OperatorToken is an admin API credential. SecretHash is the SHA-256 of
// its secret; it is only filled by OperatorToken, not by lists.
type OperatorToken struct {
	ID         string
	Name       string
	SecretHash []byte
	CreatedAt  time.Time
	ExpiresAt  time.Time
	RevokedAt  time.Time // zero unless revoked
}

// AddOperatorToken stores an operator token.
func (s *Store) AddOperatorToken(ctx context.Context, t OperatorToken) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO operator_tokens (id, name, secret_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)`,
		t.ID, t.Name, hex.EncodeToString(t.SecretHash), unix(t.CreatedAt), unix(t.ExpiresAt))
	if isUnique(err) {
		return fmt.Errorf("operator token %s: %w", t.ID, ErrExists)
	}
	return err
}

// OperatorToken returns one operator token with its secret hash.
func (s *Store) OperatorToken(ctx context.Context, id string) (OperatorToken, error) {
	var t OperatorToken
	var hashHex string
	var created, expires, revoked int64
	err := s.db.QueryRowContext(ctx, `SELECT id, name, secret_hash, created_at, expires_at, revoked_at FROM operator_tokens WHERE id = $1`, id).
		Scan(&t.ID, &t.Name, &hashHex, &created, &expires, &revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return OperatorToken{}, fmt.Errorf("operator token %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return OperatorToken{}, err
	}
	if t.SecretHash, err = hex.DecodeString(hashHex); err != nil {
		return OperatorToken{}, fmt.Errorf("operator token %s: damaged secret hash: %w", id, err)
	}
	t.CreatedAt, t.ExpiresAt = fromUnix(created), fromUnix(expires)
	if revoked != 0 {
		t.RevokedAt = fromUnix(revoked)
	}
	return t, nil
}

// ListOperatorTokens returns every operator token, newest first, without
// secret hashes.
func (s *Store) ListOperatorTokens(ctx context.Context) ([]OperatorToken, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, name, created_at, expires_at, revoked_at FROM operator_tokens ORDER BY created_at DESC, id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []OperatorToken
	for rows.Next() {
		var t OperatorToken
		var created, expires, revoked int64
		if err := rows.Scan(&t.ID, &t.Name, &created, &expires, &revoked); err != nil {
			return nil, err
		}
		t.CreatedAt, t.ExpiresAt = fromUnix(created), fromUnix(expires)
		if revoked != 0 {
			t.RevokedAt = fromUnix(revoked)
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// RevokeOperatorToken marks an operator token revoked at now; revoking a
// revoked token keeps the first time.
func (s *Store) RevokeOperatorToken(ctx context.Context, id string, now time.Time) (OperatorToken, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE operator_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at = 0`, id, unix(now))
	if err != nil {
		return OperatorToken{}, err
	}
	if _, err := res.RowsAffected(); err != nil {
		return OperatorToken{}, err
	}
	return s.OperatorToken(ctx, id)
}

// DeleteToken removes a join token, so that it enrols no more agents.
func (s *Store) DeleteToken(ctx context.Context, id string) (Token, error) {
	ts, err := s.queryTokens(ctx, `SELECT id, tenant, created_at, expires_at, max_uses, uses, ca_root FROM join_tokens WHERE id = $1`, id)
	if err != nil {
		return Token{}, err
	}
	if len(ts) == 0 {
		return Token{}, fmt.Errorf("join token %s: %w", id, ErrNotFound)
	}
	if _, err := s.db.ExecContext(ctx, `DELETE FROM join_tokens WHERE id = $1`, id); err != nil {
		return Token{}, err
	}
	return ts[0], nil
}

// RemoveBackend deletes a backend credential and its grants.
func (s *Store) RemoveBackend(ctx context.Context, name string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM backends WHERE name = $1`, name)
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("backend %q: %w", name, ErrNotFound)
	}
	return nil
}
