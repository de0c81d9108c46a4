package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Tenant is one tenant.
type Tenant struct {
	Name      string
	CreatedAt time.Time
}

// AddTenant creates a tenant.
func (s *Store) AddTenant(ctx context.Context, name string, now time.Time) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO tenants (name, created_at) VALUES ($1, $2)`, name, unix(now))
		return err
	}, Change{Kind: ChangeTenant, Tenant: name})
	if s.unique(err) {
		return fmt.Errorf("tenant %q: %w", name, ErrExists)
	}
	return err
}

// Tenant returns one tenant.
func (s *Store) Tenant(ctx context.Context, name string) (Tenant, error) {
	return tenant(ctx, s.db, name)
}

func tenant(ctx context.Context, q queryRower, name string) (Tenant, error) {
	var t Tenant
	var created int64
	err := q.QueryRowContext(ctx, `SELECT name, created_at FROM tenants WHERE name = $1`, name).Scan(&t.Name, &created)
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
