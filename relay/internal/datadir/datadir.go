// Package datadir is a relay's data directory: its layout, the lock that
// serialises changes to the CA between processes, the store and the CA
// opened from it, and the files that belong to one relay host (the roster
// of connected tenants, cached issuer keys, release copies).
package datadir

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/tetherhq/tether/relay/internal/atomicfile"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/store"
)

// Layout of the data directory.
const (
	caDir      = "ca"
	dbFile     = "tether.db"
	lockFile   = ".lock"
	rosterFile = "connected-tenants.json"
	// AuditFile is the default audit log, for the relay and for admin
	// commands on its host.
	AuditFile = "audit.log"
	// ReleasesDir holds this host's copies of release files.
	ReleasesDir = "releases"
	// JWKSCacheFile keeps the OIDC issuer's keys across restarts.
	JWKSCacheFile = "oidc-keys.json"

	resetKeyID = "quic_stateless_reset_key"
)

// Dir is an open data directory.
type Dir struct {
	Path  string
	Store *store.Store
	// ResetKey is the QUIC stateless reset key, shared by every relay
	// process on this directory's store.
	ResetKey [32]byte
}

// Open prepares the data directory path: it creates it (0700) if needed,
// creates the CA on first use (for trustDomain) and opens the store.
// Initialisation runs under an exclusive lock on the directory so that a
// relay starting and an admin command running at the same moment agree on
// one CA. It returns the CA as read.
func Open(ctx context.Context, path, trustDomain string, now time.Time) (*Dir, *ca.CA, error) {
	if path == "" {
		return nil, nil, errors.New("data directory is required")
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create data directory: %w", err)
	}
	unlock, err := lockDir(ctx, filepath.Join(path, lockFile))
	if err != nil {
		return nil, nil, fmt.Errorf("lock data directory %s: %w", path, err)
	}
	defer unlock()

	authority, _, err := ca.LoadOrCreate(filepath.Join(path, caDir), trustDomain, now)
	if err != nil {
		return nil, nil, fmt.Errorf("tenant CA: %w", err)
	}
	st, err := store.Open(ctx, filepath.Join(path, dbFile))
	if err != nil {
		return nil, nil, fmt.Errorf("open store: %w", err)
	}
	d := &Dir{Path: path, Store: st}
	var fresh [32]byte
	rand.Read(fresh[:])
	keyHex, err := st.SetSettingIfAbsent(ctx, resetKeyID, hex.EncodeToString(fresh[:]))
	if err != nil {
		st.Close()
		return nil, nil, fmt.Errorf("read QUIC reset key: %w", err)
	}
	if b, err := hex.DecodeString(keyHex); err != nil || len(b) != len(d.ResetKey) {
		st.Close()
		return nil, nil, errors.New("stored QUIC reset key is damaged")
	} else {
		copy(d.ResetKey[:], b)
	}
	return d, authority, nil
}

// Close closes the store.
func (d *Dir) Close() error { return d.Store.Close() }

// CADir is the CA's directory.
func (d *Dir) CADir() string { return filepath.Join(d.Path, caDir) }

// File is the path of name in the data directory.
func (d *Dir) File(name string) string { return filepath.Join(d.Path, name) }

// Locked runs fn holding the data directory's lock, which serialises
// changes to the CA between processes.
func (d *Dir) Locked(ctx context.Context, fn func() error) error {
	unlock, err := lockDir(ctx, filepath.Join(d.Path, lockFile))
	if err != nil {
		return fmt.Errorf("lock data directory %s: %w", d.Path, err)
	}
	defer unlock()
	return fn()
}

// roster is the file listing the tenants that had an agent connected (see
// relay/internal/route).
type roster struct {
	Tenants []string  `json:"tenants"`
	Written time.Time `json:"written"`
}

// LoadRoster reads the tenants that had agents connected when the relay
// last wrote its roster. A missing roster means none.
func (d *Dir) LoadRoster() (map[string]bool, error) {
	raw, err := os.ReadFile(d.File(rosterFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r roster
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fmt.Errorf("parse %s: %w", rosterFile, err)
	}
	m := make(map[string]bool, len(r.Tenants))
	for _, t := range r.Tenants {
		m[t] = true
	}
	return m, nil
}

// SaveRoster replaces the roster.
func (d *Dir) SaveRoster(tenants []string, now time.Time) error {
	slices.Sort(tenants)
	raw, err := json.Marshal(roster{Tenants: tenants, Written: now.UTC()})
	if err != nil {
		return err
	}
	return atomicfile.Write(d.File(rosterFile), raw, 0o600)
}
