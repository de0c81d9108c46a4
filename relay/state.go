package relay

import (
	"context"

	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// state is what the relay server and the offline admin commands share: the
// data directory's CA and store.
type state struct {
	*datadir.Dir
	dir   string
	auth  *trust.Authority
	store *store.Store
}

// CA returns the tenant CA as last read.
func (s *state) CA() *ca.CA { return s.auth.CA() }

// caStorage is where the CA is kept.
func (s *state) caStorage() ca.Storage { return s.CAStorage() }

func openState(ctx context.Context, cfg Config) (*state, error) {
	d, authority, err := datadir.Open(ctx, cfg.DataDir, datadir.Options{TrustDomain: cfg.TrustDomain, Store: cfg.Store, CAKEK: cfg.CAKEK}, cfg.Now())
	if err != nil {
		return nil, err
	}
	s := &state{Dir: d, dir: d.Path, store: d.Store, auth: trust.NewAuthority(d.CAStorage(), authority)}
	return s, nil
}

func (s *state) close() error { return s.Close() }
