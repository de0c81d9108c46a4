package store

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Operators of the admin API and the console: tokens, certificates and
// browser sessions. An operator may be scoped to one tenant with a role;
// Tenant and Role are stored as given (the admin package gives them
// meaning; rows from before scopes existed have both empty).

// OperatorToken is an admin API credential. SecretHash is the SHA-256 of
// its secret; it is only filled by OperatorToken, not by lists.
type OperatorToken struct {
	ID         string
	Name       string
	SecretHash []byte
	Tenant     string // "" for an operator of every tenant
	Role       string
	CreatedAt  time.Time
	ExpiresAt  time.Time
	RevokedAt  time.Time // zero unless revoked
}

// AddOperatorToken stores an operator token.
func (s *Store) AddOperatorToken(ctx context.Context, t OperatorToken) error {
	_, err := s.exec(ctx, `INSERT INTO operator_tokens (id, name, secret_hash, tenant, role, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		t.ID, t.Name, hex.EncodeToString(t.SecretHash), t.Tenant, t.Role, unix(t.CreatedAt), unix(t.ExpiresAt))
	if s.unique(err) {
		return fmt.Errorf("operator token %s: %w", t.ID, ErrExists)
	}
	return err
}

// OperatorToken returns one operator token with its secret hash.
func (s *Store) OperatorToken(ctx context.Context, id string) (OperatorToken, error) {
	var t OperatorToken
	var hashHex string
	var created, expires, revoked int64
	err := s.db.QueryRowContext(ctx, `SELECT id, name, secret_hash, tenant, role, created_at, expires_at, revoked_at FROM operator_tokens WHERE id = $1`, id).
		Scan(&t.ID, &t.Name, &hashHex, &t.Tenant, &t.Role, &created, &expires, &revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return OperatorToken{}, fmt.Errorf("operator token %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return OperatorToken{}, err
	}
	if t.SecretHash, err = hex.DecodeString(hashHex); err != nil {
		return OperatorToken{}, fmt.Errorf("operator token %s: damaged secret hash: %w", id, err)
	}
	t.CreatedAt, t.ExpiresAt, t.RevokedAt = fromUnix(created), fromUnix(expires), fromUnixOrZero(revoked)
	return t, nil
}

// ListOperatorTokens returns every operator token, newest first, without
// secret hashes.
func (s *Store) ListOperatorTokens(ctx context.Context) ([]OperatorToken, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, name, tenant, role, created_at, expires_at, revoked_at FROM operator_tokens ORDER BY created_at DESC, id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []OperatorToken
	for rows.Next() {
		var t OperatorToken
		var created, expires, revoked int64
		if err := rows.Scan(&t.ID, &t.Name, &t.Tenant, &t.Role, &created, &expires, &revoked); err != nil {
			return nil, err
		}
		t.CreatedAt, t.ExpiresAt, t.RevokedAt = fromUnix(created), fromUnix(expires), fromUnixOrZero(revoked)
		out = append(out, t)
	}
	return out, rows.Err()
}

// RevokeOperatorToken marks an operator token revoked at now; revoking a
// revoked token keeps the first time. The console sessions opened with it
// are deleted in the same transaction.
func (s *Store) RevokeOperatorToken(ctx context.Context, id string, now time.Time) (OperatorToken, error) {
	err := s.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE operator_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at = 0`, id, unix(now)); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM console_sessions WHERE token_id = $1`, id)
		return err
	}, Change{Kind: ChangeOperatorToken, Subject: id})
	if err != nil {
		return OperatorToken{}, err
	}
	return s.OperatorToken(ctx, id)
}

// OperatorCert is an operator's client certificate, recorded when it was
// issued so that it can be revoked. Serial is the certificate's serial
// number in lowercase hexadecimal without leading zeros.
type OperatorCert struct {
	Serial    string
	Name      string
	Tenant    string // "" for an operator of every tenant
	Role      string
	CreatedAt time.Time
	NotAfter  time.Time
	RevokedAt time.Time // zero unless revoked
}

// AddOperatorCert records an operator certificate.
func (s *Store) AddOperatorCert(ctx context.Context, c OperatorCert) error {
	_, err := s.exec(ctx, `INSERT INTO operator_certs (serial, name, tenant, role, created_at, not_after) VALUES ($1, $2, $3, $4, $5, $6)`,
		c.Serial, c.Name, c.Tenant, c.Role, unix(c.CreatedAt), unix(c.NotAfter))
	if s.unique(err) {
		return fmt.Errorf("operator certificate %s: %w", c.Serial, ErrExists)
	}
	return err
}

const operatorCertColumns = `serial, name, tenant, role, created_at, not_after, revoked_at`

func scanOperatorCert(row interface{ Scan(...any) error }) (OperatorCert, error) {
	var c OperatorCert
	var created, notAfter, revoked int64
	if err := row.Scan(&c.Serial, &c.Name, &c.Tenant, &c.Role, &created, &notAfter, &revoked); err != nil {
		return OperatorCert{}, err
	}
	c.CreatedAt, c.NotAfter, c.RevokedAt = fromUnix(created), fromUnix(notAfter), fromUnixOrZero(revoked)
	return c, nil
}

// OperatorCert returns the operator certificate with serial.
func (s *Store) OperatorCert(ctx context.Context, serial string) (OperatorCert, error) {
	c, err := scanOperatorCert(s.db.QueryRowContext(ctx, `SELECT `+operatorCertColumns+` FROM operator_certs WHERE serial = $1`, serial))
	if errors.Is(err, sql.ErrNoRows) {
		return OperatorCert{}, fmt.Errorf("operator certificate %s: %w", serial, ErrNotFound)
	}
	return c, err
}

// ListOperatorCerts returns every operator certificate recorded, newest
// first.
func (s *Store) ListOperatorCerts(ctx context.Context) ([]OperatorCert, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+operatorCertColumns+` FROM operator_certs ORDER BY created_at DESC, serial`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []OperatorCert
	for rows.Next() {
		c, err := scanOperatorCert(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// RevokeOperatorCert marks the operator certificate with serial revoked at
// now; revoking a revoked certificate keeps the first time. The console
// sessions opened with it are deleted in the same transaction.
func (s *Store) RevokeOperatorCert(ctx context.Context, serial string, now time.Time) (OperatorCert, error) {
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE operator_certs SET revoked_at = CASE WHEN revoked_at = 0 THEN $2 ELSE revoked_at END WHERE serial = $1`, serial, unix(now))
		if err != nil {
			return err
		}
		if n, err := affected(res); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("operator certificate %s: %w", serial, ErrNotFound)
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM console_sessions WHERE cert_serial = $1`, serial)
		return err
	}, Change{Kind: ChangeOperatorCert, Subject: serial})
	if err != nil {
		return OperatorCert{}, err
	}
	return s.OperatorCert(ctx, serial)
}

// ConsoleSession is a browser session of the admin console, opened by
// signing in with an operator token (TokenID), an operator certificate
// (CertSerial) or single sign-on (Subject, and SSOIssuer). Only a hash of
// its id is stored, so the table alone opens no session.
type ConsoleSession struct {
	IDHash     []byte
	Operator   string
	TokenID    string // the operator token it was opened with, or ""
	CertSerial string // the operator certificate it was opened with, or ""
	Subject    string // the person's issuer and subject, for single sign-on, or ""
	SSOIssuer  string // the name of the configured sign-on issuer that granted it, or "" (and for sessions stored before schema 16)
	Tenant     string // "" for an operator of every tenant
	Role       string
	CSRF       string // the session's anti-forgery token
	CreatedAt  time.Time
	ExpiresAt  time.Time
}

// AddConsoleSession stores a console session.
func (s *Store) AddConsoleSession(ctx context.Context, cs ConsoleSession) error {
	_, err := s.exec(ctx, `INSERT INTO console_sessions (id_hash, operator, token_id, cert_serial, subject, sso_issuer, tenant, role, csrf, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
		hex.EncodeToString(cs.IDHash), cs.Operator, cs.TokenID, cs.CertSerial, cs.Subject, cs.SSOIssuer, cs.Tenant, cs.Role, cs.CSRF, unix(cs.CreatedAt), unix(cs.ExpiresAt))
	return err
}

// ConsoleSession returns the session whose id hashes to idHash, if it has
// not expired at now.
func (s *Store) ConsoleSession(ctx context.Context, idHash []byte, now time.Time) (ConsoleSession, error) {
	cs := ConsoleSession{IDHash: idHash}
	var created, expires int64
	err := s.db.QueryRowContext(ctx, `SELECT operator, token_id, cert_serial, subject, sso_issuer, tenant, role, csrf, created_at, expires_at FROM console_sessions
		WHERE id_hash = $1 AND expires_at > $2`, hex.EncodeToString(idHash), unix(now)).
		Scan(&cs.Operator, &cs.TokenID, &cs.CertSerial, &cs.Subject, &cs.SSOIssuer, &cs.Tenant, &cs.Role, &cs.CSRF, &created, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return ConsoleSession{}, fmt.Errorf("console session: %w", ErrNotFound)
	}
	cs.CreatedAt, cs.ExpiresAt = fromUnix(created), fromUnix(expires)
	return cs, err
}

// DeleteConsoleSession ends a session and reports whether it existed.
func (s *Store) DeleteConsoleSession(ctx context.Context, idHash []byte) (bool, error) {
	res, err := s.exec(ctx, `DELETE FROM console_sessions WHERE id_hash = $1`, hex.EncodeToString(idHash))
	if err != nil {
		return false, err
	}
	n, err := affected(res)
	return n > 0, err
}

// CountScopedConsoleSessions counts the stored sessions of tenant-scoped
// operators: all of them, and those of tenant.
func (s *Store) CountScopedConsoleSessions(ctx context.Context, tenant string) (all, ofTenant int, err error) {
	err = s.db.QueryRowContext(ctx, `SELECT count(*), COALESCE(SUM(CASE WHEN tenant = $1 THEN 1 ELSE 0 END), 0) FROM console_sessions
		WHERE tenant <> ''`, tenant).Scan(&all, &ofTenant)
	return all, ofTenant, err
}

// TrimConsoleSessions ends the sessions opened with one credential (an
// operator token's id, an operator certificate's serial or a person's
// subject, the others "") but its newest keep, and reports how many it
// ended.
func (s *Store) TrimConsoleSessions(ctx context.Context, tokenID, certSerial, subject string, keep int) (int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id_hash FROM console_sessions WHERE token_id = $1 AND cert_serial = $2 AND subject = $3
		ORDER BY created_at DESC, expires_at DESC, id_hash`, tokenID, certSerial, subject)
	if err != nil {
		return 0, err
	}
	var old []string
	for i := 0; rows.Next(); i++ {
		var h string
		if err := rows.Scan(&h); err != nil {
			rows.Close()
			return 0, err
		}
		if i >= keep {
			old = append(old, h)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	n := 0
	for _, h := range old {
		res, err := s.exec(ctx, `DELETE FROM console_sessions WHERE id_hash = $1`, h)
		if err != nil {
			return n, err
		}
		k, err := affected(res)
		if err != nil {
			return n, err
		}
		n += int(k)
	}
	return n, nil
}

// PruneConsoleSessions deletes the sessions expired at now.
func (s *Store) PruneConsoleSessions(ctx context.Context, now time.Time) error {
	_, err := s.exec(ctx, `DELETE FROM console_sessions WHERE expires_at <= $1`, unix(now))
	return err
}
