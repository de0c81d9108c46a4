package relay

import (
	"context"
	"time"

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

// caDir is the CA's directory.
func (s *state) caDir() string { return s.CADir() }

func openState(ctx context.Context, dir, trustDomain string, now time.Time) (*state, error) {
	d, authority, err := datadir.Open(ctx, dir, trustDomain, now)
	if err != nil {
		return nil, err
	}
	s := &state{Dir: d, dir: d.Path, store: d.Store, auth: trust.NewAuthority(d.CADir(), authority)}
	return s, nil
}

func (s *state) close() error { return s.Close() }
