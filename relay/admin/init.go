package admin

import (
	"context"
	"errors"
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
}

func (e *TrustDomainMismatchError) Error() string {
	return fmt.Sprintf("%s is initialised already, with trust domain %q, not %q: a CA's trust domain does not change (every certificate it issued names it); "+
		"drop the trust domain from the command or the config, or initialise another data directory", e.Dir, e.Have, e.Want)
}

// Init initialises the data directory o.DataDir (with o.Store, the
// cluster's store that also holds the CA) as a relay's first start
// would — the CA of trust domain o.TrustDomain, the store, the audit log
// — so that admin commands can prepare it (tenants, join tokens,
// backends) before the relay first serves. On a data directory a relay
// or an earlier Init initialised, it changes nothing and reports what is
// there (Created false); when strictTrustDomain and the CA's trust
// domain is not o.TrustDomain, that is a *TrustDomainMismatchError.
// o.Existing is ignored.
func Init(ctx context.Context, o Options, strictTrustDomain bool) (Initialised, error) {
	if o.TrustDomain == "" {
		o.TrustDomain = "tether.internal"
	}
	if err := identity.ValidateTrustDomain(o.TrustDomain); err != nil {
		return Initialised{}, err
	}
	o.Existing = true
	a, err := Open(ctx, o)
	created := false
	if errors.Is(err, ErrNoDataDir) {
		o.Existing = false
		a, err = Open(ctx, o)
		created = true
	}
	if err != nil {
		return Initialised{}, err
	}
	defer a.Close()
	res := Initialised{Created: created, DataDir: o.DataDir, TrustDomain: a.TrustDomain(), CAFingerprint: a.CAFingerprint()}
	if created {
		a.Record(KindInit, "", "", "", map[string]any{"trust_domain": res.TrustDomain, "ca_fingerprint": res.CAFingerprint})
		return res, nil
	}
	if strictTrustDomain && res.TrustDomain != o.TrustDomain {
		return res, &TrustDomainMismatchError{Dir: o.DataDir, Have: res.TrustDomain, Want: o.TrustDomain}
	}
	return res, nil
}
