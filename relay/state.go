package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/store"
)

// Layout of the data directory.
const (
	caDir      = "ca"
	dbFile     = "tether.db"
	lockFile   = ".lock"
	resetKeyID = "quic_stateless_reset_key"
)

// state is what the relay server and the offline admin commands share: the
// data directory's CA and store.
type state struct {
	dir      string
	auth     atomic.Pointer[ca.CA] // replaced when the CA's roots change
	store    *store.Store
	resetKey [32]byte
}

// CA returns the tenant CA as last read.
func (s *state) CA() *ca.CA { return s.auth.Load() }

// caDir is the CA's directory.
func (s *state) caDir() string { return filepath.Join(s.dir, caDir) }

// locked runs fn holding the data directory's lock, which serialises
// changes to the CA between processes.
func (s *state) locked(ctx context.Context, fn func() error) error {
	unlock, err := lockDir(ctx, filepath.Join(s.dir, lockFile))
	if err != nil {
		return fmt.Errorf("lock data directory %s: %w", s.dir, err)
	}
	defer unlock()
	return fn()
}

// openState prepares the data directory: it creates it (0700) if needed,
// creates the CA on first use and opens the store. Initialisation runs under
// an exclusive lock on the directory so that a relay starting and an admin
// command running at the same moment agree on one CA.
func openState(ctx context.Context, dir, trustDomain string, now time.Time) (*state, error) {
	if dir == "" {
		return nil, errors.New("data directory is required")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	unlock, err := lockDir(ctx, filepath.Join(dir, lockFile))
	if err != nil {
		return nil, fmt.Errorf("lock data directory %s: %w", dir, err)
	}
	defer unlock()

	authority, _, err := ca.LoadOrCreate(filepath.Join(dir, caDir), trustDomain, now)
	if err != nil {
		return nil, fmt.Errorf("tenant CA: %w", err)
	}
	st, err := store.Open(ctx, filepath.Join(dir, dbFile))
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	var fresh [32]byte
	rand.Read(fresh[:])
	keyHex, err := st.SetSettingIfAbsent(ctx, resetKeyID, hex.EncodeToString(fresh[:]))
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("read QUIC reset key: %w", err)
	}
	s := &state{dir: dir, store: st}
	s.auth.Store(authority)
	if b, err := hex.DecodeString(keyHex); err != nil || len(b) != len(s.resetKey) {
		st.Close()
		return nil, fmt.Errorf("stored QUIC reset key is damaged")
	} else {
		copy(s.resetKey[:], b)
	}
	return s, nil
}

func (s *state) close() error { return s.store.Close() }
