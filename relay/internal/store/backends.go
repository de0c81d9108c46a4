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
	// CertSerials are the serial numbers of the client certificates
	// issued to it (lowercase hexadecimal without leading zeros), recorded
	// at issue, less those expired when a later one was issued and those
	// removed (RemoveBackendCert); sorted.
	// Only Backend fills it.
	CertSerials []string
	// CertsUnrecorded is true for a backend added before the store
	// recorded backend certificates (schema version 13 and older): the
	// certificates issued to it until then are not in CertSerials.
	// RefuseUnrecordedBackendCerts clears it.
	CertsUnrecorded bool
}

// BackendCert is a backend's client certificate, recorded when it was
// issued. Serial is the certificate's serial number in lowercase
// hexadecimal without leading zeros.
type BackendCert struct {
	Serial    string
	Backend   string
	CreatedAt time.Time
	NotAfter  time.Time
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
		_, err := tx.ExecContext(ctx, `INSERT INTO backends (name, key_hash, created_at, certs_recorded) VALUES ($1, $2, $3, 1)`, b.Name, hex.EncodeToString(b.KeyHash), unix(b.CreatedAt))
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

// AddBackendCert records a certificate issued to a backend, which must
// exist, and forgets the backend's certificates expired at c.CreatedAt.
func (s *Store) AddBackendCert(ctx context.Context, c BackendCert) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		if err := backendExists(ctx, tx, c.Backend); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM backend_certs WHERE backend = $1 AND not_after <= $2`, c.Backend, unix(c.CreatedAt)); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO backend_certs (serial, backend, created_at, not_after) VALUES ($1, $2, $3, $4)`,
			c.Serial, c.Backend, unix(c.CreatedAt), unix(c.NotAfter))
		if s.unique(err) {
			return fmt.Errorf("backend certificate %s: %w", c.Serial, ErrExists)
		}
		return err
	}, backendChange(c.Backend))
}

// BackendCerts returns the certificates recorded for a backend, which
// must exist, newest first: those issued to it since the store records
// them, less those it forgot (expired at a later issue, or removed with
// RemoveBackendCert).
func (s *Store) BackendCerts(ctx context.Context, backend string) ([]BackendCert, error) {
	if ok, err := exists(ctx, s.db, `SELECT count(*) FROM backends WHERE name = $1`, backend); err != nil {
		return nil, err
	} else if !ok {
		return nil, fmt.Errorf("backend %q: %w", backend, ErrNotFound)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT serial, created_at, not_after FROM backend_certs WHERE backend = $1`, backend)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []BackendCert
	for rows.Next() {
		c := BackendCert{Backend: backend}
		var created, notAfter int64
		if err := rows.Scan(&c.Serial, &created, &notAfter); err != nil {
			return nil, err
		}
		c.CreatedAt, c.NotAfter = fromUnix(created), fromUnix(notAfter)
		out = append(out, c)
	}
	// In Go: a database's collation may order serials otherwise.
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.After(out[j].CreatedAt)
		}
		return out[i].Serial < out[j].Serial
	})
	return out, rows.Err()
}

// RemoveBackendCert deletes the record of the certificate with serial
// (lowercase hexadecimal without leading zeros) issued to backend, so that
// the front door refuses it, and returns the record. It is ErrNotFound
// when the backend does not exist or has no such certificate recorded (one
// issued to another backend included).
func (s *Store) RemoveBackendCert(ctx context.Context, backend, serial string) (BackendCert, error) {
	var c BackendCert
	err := s.write(ctx, func(tx *sql.Tx) error {
		var created, notAfter int64
		err := tx.QueryRowContext(ctx, `SELECT created_at, not_after FROM backend_certs WHERE backend = $1 AND serial = $2`, backend, serial).Scan(&created, &notAfter)
		if errors.Is(err, sql.ErrNoRows) {
			if err := backendExists(ctx, tx, backend); err != nil {
				return err
			}
			return fmt.Errorf("backend %q has no certificate %s: %w", backend, serial, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM backend_certs WHERE backend = $1 AND serial = $2`, backend, serial); err != nil {
			return err
		}
		c = BackendCert{Serial: serial, Backend: backend, CreatedAt: fromUnix(created), NotAfter: fromUnix(notAfter)}
		return nil
	}, backendChange(backend))
	if err != nil {
		return BackendCert{}, err
	}
	return c, nil
}

// RefuseUnrecordedBackendCerts makes a backend added before the store
// recorded backend certificates (Backend.CertsUnrecorded) accept only
// the certificates recorded with it from now on, as a backend added since
// does. It reports whether the backend accepted unrecorded certificates
// until then; one that did not is left as it is (and no change is
// written).
func (s *Store) RefuseUnrecordedBackendCerts(ctx context.Context, backend string) (bool, error) {
	var changed bool
	err := s.writeChanges(ctx, func(tx *sql.Tx) ([]Change, error) {
		changed = false
		res, err := tx.ExecContext(ctx, `UPDATE backends SET certs_recorded = 1 WHERE name = $1 AND certs_recorded = 0`, backend)
		if err != nil {
			return nil, err
		}
		n, err := affected(res)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, backendExists(ctx, tx, backend)
		}
		changed = true
		return []Change{backendChange(backend)}, nil
	})
	return changed, err
}

// RemoveBackend deletes a backend credential, its grants and the record
// of its certificates, so that none of them is accepted again, even when
// a backend of the same name is added.
func (s *Store) RemoveBackend(ctx context.Context, name string) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM backend_certs WHERE backend = $1`, name); err != nil {
			return err
		}
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

// Backend returns one backend credential (run again when its connection
// was lost: the front doors look a backend up on a cache miss).
func (s *Store) Backend(ctx context.Context, name string) (Backend, error) {
	var b Backend
	err := s.read(ctx, func() (err error) {
		b, err = s.backend(ctx, name)
		return err
	})
	return b, err
}

func (s *Store) backend(ctx context.Context, name string) (Backend, error) {
	var b Backend
	var hashHex string
	var created, recorded int64
	err := s.db.QueryRowContext(ctx, `SELECT name, key_hash, created_at, certs_recorded FROM backends WHERE name = $1`, name).Scan(&b.Name, &hashHex, &created, &recorded)
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
	b.CertsUnrecorded = recorded == 0
	if b.Grants, err = s.backendGrants(ctx, name); err != nil {
		return Backend{}, err
	}
	b.CertSerials, err = s.backendCertSerials(ctx, name)
	return b, err
}

func (s *Store) backendCertSerials(ctx context.Context, name string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT serial FROM backend_certs WHERE backend = $1`, name)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var serial string
		if err := rows.Scan(&serial); err != nil {
			return nil, err
		}
		out = append(out, serial)
	}
	sort.Strings(out) // in Go: a database's collation may order otherwise
	return out, rows.Err()
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

// BackendCredentials returns every backend as Backend does (key hash,
// grants, certificate serials), sorted by name: what a relay keeps in
// memory to authenticate backends without reading the store per request.
func (s *Store) BackendCredentials(ctx context.Context) ([]Backend, error) {
	var out []Backend
	err := s.read(ctx, func() (err error) {
		out, err = s.backendCredentials(ctx)
		return err
	})
	return out, err
}

func (s *Store) backendCredentials(ctx context.Context) ([]Backend, error) {
	byName := map[string]*Backend{}
	var names []string
	rows, err := s.db.QueryContext(ctx, `SELECT name, key_hash, created_at, certs_recorded FROM backends`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var b Backend
		var hashHex string
		var created, recorded int64
		if err := rows.Scan(&b.Name, &hashHex, &created, &recorded); err != nil {
			return nil, err
		}
		if b.KeyHash, err = hex.DecodeString(hashHex); err != nil {
			return nil, fmt.Errorf("backend %q: damaged key hash: %w", b.Name, err)
		}
		b.CreatedAt = fromUnix(created)
		b.CertsUnrecorded = recorded == 0
		byName[b.Name] = &b
		names = append(names, b.Name)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows.Close()
	grants, err := s.db.QueryContext(ctx, `SELECT backend, tenant, service FROM backend_grants`)
	if err != nil {
		return nil, err
	}
	defer grants.Close()
	for grants.Next() {
		var name string
		var g Grant
		if err := grants.Scan(&name, &g.Tenant, &g.Service); err != nil {
			return nil, err
		}
		if b := byName[name]; b != nil {
			b.Grants = append(b.Grants, g)
		}
	}
	if err := grants.Err(); err != nil {
		return nil, err
	}
	grants.Close()
	certs, err := s.db.QueryContext(ctx, `SELECT backend, serial FROM backend_certs`)
	if err != nil {
		return nil, err
	}
	defer certs.Close()
	for certs.Next() {
		var name, serial string
		if err := certs.Scan(&name, &serial); err != nil {
			return nil, err
		}
		if b := byName[name]; b != nil {
			b.CertSerials = append(b.CertSerials, serial)
		}
	}
	if err := certs.Err(); err != nil {
		return nil, err
	}
	// In Go: a database's collation may order otherwise.
	sort.Strings(names)
	out := make([]Backend, len(names))
	for i, n := range names {
		b := byName[n]
		sort.Slice(b.Grants, func(i, j int) bool {
			if b.Grants[i].Tenant != b.Grants[j].Tenant {
				return b.Grants[i].Tenant < b.Grants[j].Tenant
			}
			return b.Grants[i].Service < b.Grants[j].Service
		})
		sort.Strings(b.CertSerials)
		out[i] = *b
	}
	return out, nil
}
