package admin

import (
	"context"
	"fmt"

	"github.com/tetherhq/tether/protocol/identity"
)

// KindInit: a data directory (or a cluster's store) was initialised by
// Init, before any relay started on it.
const KindInit = "relay.init"

// Initialised is what Init found or made.
type Initialised struct {
	// Created says that Init made the CA; false when a relay (or an
	// earlier Init) had already initialised the data directory or store.
	Created       bool   `json:"created"`
	DataDir       string `json:"data_dir"`
	TrustDomain   string `json:"trust_domain"`
	CAFingerprint string `json:"ca_fingerprint"`
}

// TrustDomainMismatchError is Init's error when the data directory's CA
// already serves another trust domain than the one asked for: a CA's
// trust domain never changes (every identity it issued names it).
type TrustDomainMismatchError struct {
	Dir, Have, Want string
	// Store says that the CA is the one in the cluster's store (which
	// Dir does not hold).
	Store bool
}

func (e *TrustDomainMismatchError) Error() string {
	where, other := e.Dir, "another data directory"
	if e.Store {
		where, other = "the cluster's store", "another store"
	}
	return fmt.Sprintf("%s is initialised already, with trust domain %q, not %q: a CA's trust domain does not change (every certificate it issued names it); "+
		"drop the trust domain from the command or the config, or initialise %s", where, e.Have, e.Want, other)
}

// Init initialises the data directory o.DataDir (with o.Store, the
// cluster's store that also holds the CA) as a relay's first start
// would — the CA of trust domain o.TrustDomain, the store, the audit log
// — so that admin commands can prepare it (tenants, join tokens,
// backends) before the relay first serves. On a data directory a relay
// or an earlier Init initialised, it changes nothing and reports what is
// there (Created false); when o.TrustDomain was given and the CA's
// trust domain is another, that is a *TrustDomainMismatchError. An empty
// o.TrustDomain makes a new CA of Open's default and accepts any CA
// already there. o.Existing is ignored.
//
// Whether Init made the CA is what the data directory's open found under
// its locks (the data directory's, and the store's CA lock for a
// cluster's store), so that of inits racing on one store (hosts of a
// cluster provisioned at once) or one data directory, only the one that
// made the CA says so and records it; the others see that CA as one
// already there, and are held to the trust domain they asked for.
func Init(ctx context.Context, o Options) (Initialised, error) {
	asked := o.TrustDomain
	if asked != "" {
		// Refused before anything is made.
		if err := identity.ValidateTrustDomain(asked); err != nil {
			return Initialised{}, err
		}
	}
	o.Existing = false
	a, err := Open(ctx, o)
	if err != nil {
		return Initialised{}, err
	}
	defer a.Close()
	res := Initialised{Created: a.dir.CACreated, DataDir: o.DataDir, TrustDomain: a.TrustDomain(), CAFingerprint: a.CAFingerprint()}
	if res.Created {
		a.Record(KindInit, "", "", "", map[string]any{"trust_domain": res.TrustDomain, "ca_fingerprint": res.CAFingerprint})
		return res, nil
	}
	if asked != "" && res.TrustDomain != asked {
		return res, &TrustDomainMismatchError{Dir: o.DataDir, Have: res.TrustDomain, Want: asked, Store: o.Store != ""}
	}
	return res, nil
}
