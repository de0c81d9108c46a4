package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// CAFile is one file of a tenant CA kept in the store (see
// relay/internal/ca, which writes and reads them): a root's certificate or
// the manifest of roots in the clear, or a root's private key sealed under
// a key-encryption key.
type CAFile struct {
	Name string
	Data []byte
	// KEKID names the key-encryption key Data is sealed with; "" when
	// Data is in the clear.
	KEKID string
	// UpdatedAt is when the file was last written (PutCAFile sets it).
	UpdatedAt time.Time
}

// CAFile returns the CA file name, or an error wrapping ErrNotFound.
func (s *Store) CAFile(ctx context.Context, name string) (CAFile, error) {
	f := CAFile{Name: name}
	var at int64
	err := s.db.QueryRowContext(ctx, `SELECT data, kek_id, updated_at FROM ca_files WHERE name = $1`, name).Scan(&f.Data, &f.KEKID, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return CAFile{}, fmt.Errorf("CA file %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return CAFile{}, fmt.Errorf("read CA file %q: %w", name, err)
	}
	f.UpdatedAt = fromUnix(at)
	return f, nil
}

// PutCAFile writes f (all but UpdatedAt, which is now), replacing the file
// of that name if there is one. The row changes in one statement: a reader
// sees the old file or the new, as with a file renamed over another.
func (s *Store) PutCAFile(ctx context.Context, f CAFile) error {
	if f.Data == nil {
		f.Data = []byte{} // NOT NULL
	}
	_, err := s.exec(ctx, `INSERT INTO ca_files (name, data, kek_id, updated_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (name) DO UPDATE SET data = $2, kek_id = $3, updated_at = $4`, f.Name, f.Data, f.KEKID, time.Now().Unix())
	if err != nil {
		return fmt.Errorf("write CA file %q: %w", f.Name, err)
	}
	return nil
}

// RemoveCAFile deletes the CA file name; one that does not exist is not
// an error.
func (s *Store) RemoveCAFile(ctx context.Context, name string) error {
	if _, err := s.exec(ctx, `DELETE FROM ca_files WHERE name = $1`, name); err != nil {
		return fmt.Errorf("remove CA file %q: %w", name, err)
	}
	return nil
}
