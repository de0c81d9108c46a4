package store

import (
	"context"
	"database/sql"
	"strings"
	"time"
)

// Limits are a tenant's bulkheads. Zero means unlimited.
type Limits struct {
	Tenant     string
	MaxAgents  int      // enrolled (and connected) agents
	MaxStreams int      // concurrent streams through the relay
	OpenRate   float64  // stream opens per second, per backend
	OpenBurst  int      // token-bucket burst for OpenRate
	CIDRs      []string // networks agents may connect from; empty: any
	Bandwidth  int64    // bytes per second, each direction, through this relay
	UpdatedAt  time.Time
}

// SetLimits stores tenant's limits, replacing earlier ones.
func (s *Store) SetLimits(ctx context.Context, l Limits) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		if _, err := tenant(ctx, tx, l.Tenant); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO tenant_limits (tenant, max_agents, max_streams, open_rate, open_burst, cidrs, bandwidth, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (tenant) DO UPDATE SET max_agents = $2, max_streams = $3, open_rate = $4, open_burst = $5, cidrs = $6, bandwidth = $7, updated_at = $8`,
			l.Tenant, l.MaxAgents, l.MaxStreams, l.OpenRate, l.OpenBurst, strings.Join(l.CIDRs, ","), l.Bandwidth, l.UpdatedAt.UnixMilli())
		return err
	}, Change{Kind: ChangeLimits, Tenant: l.Tenant})
}

// AllLimits returns the limits of every tenant that has any, by tenant.
func (s *Store) AllLimits(ctx context.Context) (map[string]Limits, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT tenant, max_agents, max_streams, open_rate, open_burst, cidrs, bandwidth, updated_at FROM tenant_limits`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]Limits{}
	for rows.Next() {
		var l Limits
		var cidrs string
		var updated int64
		if err := rows.Scan(&l.Tenant, &l.MaxAgents, &l.MaxStreams, &l.OpenRate, &l.OpenBurst, &cidrs, &l.Bandwidth, &updated); err != nil {
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
