// Package datadir is a relay's data directory: its layout, the lock that
// serialises changes to the CA between processes, the store and the CA
// opened from it, and the files that belong to one relay host (the roster
// of connected tenants, cached issuer keys, release copies).
//
// A relay on its own keeps its store (SQLite) and its CA (DATA/ca) in the
// data directory. Relays of a cluster share a PostgreSQL store, which then
// holds the CA too, its private keys sealed under a key-encryption key
// each relay is given (ca.StoreFiles); the data directory keeps only what
// belongs to its host.
package datadir

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
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
	// LastBackupFile holds when the newest backup of the directory was
	// taken (Backup, LastBackup): the relay keeps the rotated audit
	// files written after it, which a restore from it replays.
	LastBackupFile = "last-backup"

	resetKeyID = "quic_stateless_reset_key"
	// auditCursorKeyID names the key of the audit cursors tenant-scoped
	// operators page their audit trail with (relay/admin).
	auditCursorKeyID = "audit_cursor_key"

	// caLock is the store's lock (store.Lock) that relays sharing a
	// store take to change the CA kept in it.
	caLock = "ca"
)

// Dir is an open data directory.
type Dir struct {
	Path  string
	Store *store.Store
	// ResetKey is the QUIC stateless reset key, shared by every relay
	// process on this directory's store.
	ResetKey [32]byte
	// AuditCursorKey is the key the audit cursors given to tenant-scoped
	// operators are encrypted under (relay/admin), shared like ResetKey so
	// that a cursor one relay of a cluster gave works on every other.
	AuditCursorKey [32]byte
	// CACreated says that Open made the CA (none was there, in the data
	// directory or the store): false when it loaded one, made by this
	// process's predecessors or by another relay or command that won a
	// race to make it.
	CACreated bool

	ca       ca.Storage   // where the CA is kept
	caShared bool         // ca is in the store, shared by a cluster
	log      *slog.Logger // told of a wait for the store's CA lock

}

// Options say where a relay's state is besides its data directory.
type Options struct {
	// TrustDomain names the SPIFFE trust domain of a CA created now.
	TrustDomain string
	// Store is the store's address. Empty: SQLite in the data directory,
	// and the CA in DATA/ca (a relay on its own). A postgres:// URL: that
	// PostgreSQL database, shared by the relays of a cluster, which holds
	// the CA too, its private keys sealed with CAKEK.
	Store string
	// CAKEK is the key-encryption key (ca.KEKSize random bytes) that seals
	// the CA's private keys in a PostgreSQL store; required with one, and
	// the same on every relay of the cluster. Unused with SQLite.
	CAKEK []byte
	// Existing refuses to create a CA where there is none, with an error
	// wrapping fs.ErrNotExist.
	Existing bool
	// Logger is told of a wait for the store's CA lock (at a start, and
	// for a change to the CA: Dir.Locked), and the store warns of a
	// schema newer than this binary's to it; slog.Default() when nil
	// (admin commands, whose messages go to standard error).
	Logger *slog.Logger
}

// Open prepares the data directory path: it creates it (0700) if needed,
// opens the store o names, and creates the CA on first use (for
// o.TrustDomain) in the data directory or in a PostgreSQL store.
// Initialisation runs under an exclusive lock on the directory, and the
// creation of a CA in a shared store under the store's lock too, so that
// relays and admin commands starting at the same moment agree on one CA
// (an existing one is loaded without that lock). It returns the CA as
// read.
func Open(ctx context.Context, path string, o Options, now time.Time) (*Dir, *ca.CA, error) {
	if path == "" {
		return nil, nil, errors.New("data directory is required")
	}
	shared := o.Store != ""
	var kek *ca.KEK
	if shared {
		if !store.IsPostgres(o.Store) {
			return nil, nil, fmt.Errorf("store %q: want a postgres:// URL (without one, the store is SQLite in the data directory)", o.Store)
		}
		if len(o.CAKEK) == 0 {
			return nil, nil, fmt.Errorf("tenant CA in the store: %w", ca.ErrNoKEK)
		}
		var err error
		if kek, err = ca.NewKEK(o.CAKEK); err != nil {
			return nil, nil, fmt.Errorf("CA key-encryption key: %w", err)
		}
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create data directory: %w", err)
	}
	unlock, err := lockDir(ctx, filepath.Join(path, lockFile))
	if err != nil {
		return nil, nil, fmt.Errorf("lock data directory %s: %w", path, err)
	}
	defer unlock()

	d := &Dir{Path: path, ca: ca.Dir(filepath.Join(path, caDir)), log: o.Logger}
	if d.log == nil {
		d.log = slog.Default()
	}
	if shared {
		if d.Store, err = store.OpenDSN(ctx, o.Store, store.WithLogger(o.Logger)); err != nil {
			return nil, nil, fmt.Errorf("open store: %w", err)
		}
		d.ca, d.caShared = ca.InStore(d.Store, kek), true
	}
	authority, err := d.loadCA(ctx, o, now)
	if err != nil {
		if d.Store != nil {
			d.Store.Close()
		}
		return nil, nil, fmt.Errorf("tenant CA: %w", err)
	}
	if !shared {
		if d.Store, err = store.Open(ctx, filepath.Join(path, dbFile), store.WithLogger(o.Logger)); err != nil {
			return nil, nil, fmt.Errorf("open store: %w", err)
		}
	}
	st := d.Store
	for _, k := range []struct {
		id, what string
		key      *[32]byte
	}{
		{resetKeyID, "QUIC reset key", &d.ResetKey},
		{auditCursorKeyID, "audit cursor key", &d.AuditCursorKey},
	} {
		if err := sharedKey(ctx, st, k.id, k.what, k.key); err != nil {
			st.Close()
			return nil, nil, err
		}
	}
	return d, authority, nil
}

// sharedKey reads the random key stored under the setting id into key,
// storing a fresh one first unless there is one, so that every relay
// sharing the store (and every command run on it) holds the same.
func sharedKey(ctx context.Context, st *store.Store, id, what string, key *[32]byte) error {
	var fresh [32]byte
	rand.Read(fresh[:])
	keyHex, err := st.SetSettingIfAbsent(ctx, id, hex.EncodeToString(fresh[:]))
	if err != nil {
		return fmt.Errorf("read %s: %w", what, err)
	}
	b, err := hex.DecodeString(keyHex)
	if err != nil || len(b) != len(key) {
		return fmt.Errorf("stored %s is damaged", what)
	}
	copy(key[:], b)
	return nil
}

// loadCA loads the CA, or creates it unless o.Existing; the caller holds
// the data directory's lock. A CA kept in the store is loaded without the
// store's lock, as running relays reload it: a start that only loads the
// CA does not wait for whoever holds that lock (an admin command rotating
// the CA, or one that hung, or a host that vanished holding it, which
// PostgreSQL keeps until its connection times out). The lock is taken
// only when the CA could not be loaded — none yet, or one changing
// (files of a retirement removed after a load read its list of roots) —
// and the CA read again under it, so that relays starting at once agree
// on one CA; the wait is logged.
func (d *Dir) loadCA(ctx context.Context, o Options, now time.Time) (*ca.CA, error) {
	if d.caShared {
		c, loadErr := ca.Load(ctx, d.ca)
		if loadErr == nil {
			return c, nil
		} else if ctx.Err() != nil {
			return nil, loadErr
		}
		unlock, err := d.lockCA(ctx)
		if err != nil {
			if !errors.Is(loadErr, fs.ErrNotExist) {
				// Say why the lock was needed: a CA that cannot be read
				// (a KEK other than the one that sealed it, say) is
				// the likelier fault than the lock.
				return nil, fmt.Errorf("%w (it was needed because the CA in the store could not be read: %w)", err, loadErr)
			}
			return nil, err
		}
		defer unlock()
	}
	if o.Existing {
		c, err := ca.Load(ctx, d.ca)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%v holds no CA: no relay has started on it yet (%w)", d.ca, fs.ErrNotExist)
		}
		return c, err
	}
	c, created, err := ca.LoadOrCreate(ctx, d.ca, o.TrustDomain, now)
	d.CACreated = created
	return c, err
}

// lockWaitLog is how long a wait for the store's CA lock goes before it
// is logged, and then again at each further such interval.
var lockWaitLog = 5 * time.Second

// lockCA takes the store's CA lock, telling d's logger while it waits.
func (d *Dir) lockCA(ctx context.Context) (func(), error) {
	log := d.log
	began := time.Now()
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(lockWaitLog)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				log.Warn("waiting for the store's CA lock, held by another relay or admin command (creating, rotating or retiring the CA; or one that hung or lost its host, whose lock PostgreSQL keeps until its connection times out)",
					"waited", time.Since(began).Round(time.Second))
			}
		}
	}()
	unlock, err := d.Store.Lock(ctx, caLock)
	close(stop)
	<-done
	if err != nil {
		return nil, fmt.Errorf("lock the store's CA (waited %v): %w", time.Since(began).Round(time.Millisecond), err)
	}
	return unlock, nil
}

// Close closes the store.
func (d *Dir) Close() error { return d.Store.Close() }

// CAStorage is where the CA is kept: the data directory's ca/, or the
// store a cluster shares.
func (d *Dir) CAStorage() ca.Storage { return d.ca }

// CAShared reports whether the CA is kept in the store, shared by the
// relays of a cluster.
func (d *Dir) CAShared() bool { return d.caShared }

// File is the path of name in the data directory.
func (d *Dir) File(name string) string { return filepath.Join(d.Path, name) }

// Locked runs fn holding the data directory's lock, which serialises
// changes to the CA (and other reads-then-writes of operators) between
// processes of this host, and, when the CA is in a shared store, the
// store's lock too, which serialises them across the relays of a
// cluster.
func (d *Dir) Locked(ctx context.Context, fn func() error) error {
	unlock, err := lockDir(ctx, filepath.Join(d.Path, lockFile))
	if err != nil {
		return fmt.Errorf("lock data directory %s: %w", d.Path, err)
	}
	defer unlock()
	if d.caShared {
		unlockStore, err := d.lockCA(ctx)
		if err != nil {
			return err
		}
		defer unlockStore()
	}
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
