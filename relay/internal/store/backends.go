package store

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

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

func backendChange(name string) Change { return Change{Kind: ChangeBackend, Subject: name} }

// checkGrantTenants makes sure every tenant a grant names exactly (without
// a wildcard) exists, so a typo does not become a grant to nobody.
func checkGrantTenants(ctx context.Context, tx *sql.Tx, grants []Grant) error {
	for _, g := range grants {
		if strings.Contains(g.Tenant, "*") {
			continue
		}
		if _, err := tenant(ctx, tx, g.Tenant); err != nil {
			return err
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
	return s.write(ctx, func(tx *sql.Tx) error {
		if err := checkGrantTenants(ctx, tx, b.Grants); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO backends (name, key_hash, created_at) VALUES ($1, $2, $3)`, b.Name, hex.EncodeToString(b.KeyHash), unix(b.CreatedAt))
		if s.unique(err) {
			return fmt.Errorf("backend %q: %w", b.Name, ErrExists)
		}
		if err != nil {
			return err
		}
		return insertGrants(ctx, tx, b.Name, b.Grants)
	}, backendChange(b.Name))
}

// Grant adds grants to a backend (those it already has are kept once).
func (s *Store) Grant(ctx context.Context, backend string, grants []Grant) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		if err := backendExists(ctx, tx, backend); err != nil {
			return err
		}
		if err := checkGrantTenants(ctx, tx, grants); err != nil {
			return err
		}
		return insertGrants(ctx, tx, backend, grants)
	}, backendChange(backend))
}

// Ungrant removes grants from a backend. Removing a grant it does not have
// is an error naming it, so a mistyped pattern is not mistaken for a
// removal.
func (s *Store) Ungrant(ctx context.Context, backend string, grants []Grant) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		if err := backendExists(ctx, tx, backend); err != nil {
			return err
		}
		for _, g := range grants {
			res, err := tx.ExecContext(ctx, `DELETE FROM backend_grants WHERE backend = $1 AND tenant = $2 AND service = $3`, backend, g.Tenant, g.Service)
			if err != nil {
				return err
			}
			if n, err := affected(res); err != nil {
				return err
			} else if n == 0 {
				return fmt.Errorf("backend %q has no grant %s: %w", backend, g, ErrNotFound)
			}
		}
		return nil
	}, backendChange(backend))
}

// RemoveBackend deletes a backend credential and its grants.
func (s *Store) RemoveBackend(ctx context.Context, name string) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM backends WHERE name = $1`, name)
		if err != nil {
			return err
		}
		if n, err := affected(res); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("backend %q: %w", name, ErrNotFound)
		}
		return nil
	}, backendChange(name))
}

func backendExists(ctx context.Context, tx *sql.Tx, name string) error {
	ok, err := exists(ctx, tx, `SELECT count(*) FROM backends WHERE name = $1`, name)
	if err == nil && !ok {
		err = fmt.Errorf("backend %q: %w", name, ErrNotFound)
	}
	return err
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
