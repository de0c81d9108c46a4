package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// Setting returns a stored setting.
func (s *Store) Setting(ctx context.Context, key string) (string, error) {
	var v string
	err := s.db.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = $1`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("setting %q: %w", key, ErrNotFound)
	}
	return v, err
}

// SetSetting stores value under key, replacing any earlier value.
func (s *Store) SetSetting(ctx context.Context, key, value string) error {
	_, err := s.exec(ctx, `INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2`, key, value)
	return err
}

// SetSettingIfAbsent stores value under key unless key already has one, and
// returns the value now stored, so that racing processes agree.
func (s *Store) SetSettingIfAbsent(ctx context.Context, key, value string) (string, error) {
	if _, err := s.exec(ctx, `INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`, key, value); err != nil {
		return "", err
	}
	return s.Setting(ctx, key)
}
