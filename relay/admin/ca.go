package admin

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"

	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/store"
)

// CARoot describes one root of the tenant CA.
type CARoot struct {
	Generation  int    `json:"generation"`
	Fingerprint string `json:"fingerprint"`
	Subject     string `json:"subject"`
	// Roles: "signing" (issues agent certificates) and "serving" (issues
	// the relay's server certificate; new join tokens pin it).
	Roles     []string   `json:"roles,omitempty"`
	AddedAt   time.Time  `json:"added_at"`
	NotAfter  time.Time  `json:"not_after"`
	RetiredAt *time.Time `json:"retired_at,omitempty"`
	// Agents is how many agents (not revoked) hold a current certificate
	// from this root; Tokens how many usable join tokens pin it.
	Agents int `json:"agents"`
	Tokens int `json:"tokens"`
	// EndorsedBy is the generation of the root that endorsed this one at
	// its rotation (agents accept it with that endorsement); 0 for the
	// first root and for one rotated before endorsements whose endorser
	// was retired before any was made.
	EndorsedBy int `json:"endorsed_by,omitempty"`
}

// CAStatus describes the tenant CA: its active roots (two during a
// rotation, oldest first) and the retired ones.
type CAStatus struct {
	TrustDomain string   `json:"trust_domain"`
	Rotating    bool     `json:"rotating"`
	RenewNow    bool     `json:"renew_now"`
	Roots       []CARoot `json:"roots"`
	Retired     []CARoot `json:"retired,omitempty"`
}

// rootKeys are the values of the store's cert_root and ca_root columns
// that mean root: its fingerprint, and "" (rows from before rotation
// existed) for the first root.
func rootKeys(root *ca.Root) []string {
	if root.Generation == 1 {
		return []string{root.ID(), ""}
	}
	return []string{root.ID()}
}

// CAStatus reports the CA's roots and, for each, the agents and join
// tokens that depend on it.
func (a *Admin) CAStatus(ctx context.Context) (CAStatus, error) {
	if err := a.vendorOnly("the CA"); err != nil {
		return CAStatus{}, err
	}
	authority, err := ca.Load(ctx, a.auth.Storage())
	if err != nil {
		return CAStatus{}, err
	}
	now := a.now()
	byRoot, err := a.store.AgentsByCertRoot(ctx, now)
	if err != nil {
		return CAStatus{}, err
	}
	tokens, err := a.store.LiveTokens(ctx, now)
	if err != nil {
		return CAStatus{}, err
	}
	tokensByRoot := map[string]int{}
	for _, t := range tokens {
		tokensByRoot[t.CARoot]++
	}
	describe := func(root *ca.Root) CARoot {
		cr := CARoot{Generation: root.Generation, Fingerprint: root.ID(), Subject: root.Cert.Subject.CommonName,
			AddedAt: root.AddedAt.UTC(), NotAfter: root.Cert.NotAfter.UTC()}
		for _, k := range rootKeys(root) {
			cr.Agents += byRoot[k]
			cr.Tokens += tokensByRoot[k]
		}
		if !root.RetiredAt.IsZero() {
			t := root.RetiredAt.UTC()
			cr.RetiredAt = &t
		}
		if e := root.Endorsement; e != nil {
			for _, by := range append(authority.Roots(), authority.Retired()...) {
				if ca.Endorses(by.Cert, root.Cert, e) {
					cr.EndorsedBy = by.Generation
				}
			}
		}
		return cr
	}
	st := CAStatus{TrustDomain: authority.TrustDomain(), Rotating: authority.Rotating(), RenewNow: authority.RenewNow()}
	for _, root := range authority.Roots() {
		cr := describe(root)
		if root == authority.Signer() {
			cr.Roles = append(cr.Roles, "signing")
		}
		if root == authority.Serving() {
			cr.Roles = append(cr.Roles, "serving")
		}
		st.Roots = append(st.Roots, cr)
	}
	for _, root := range authority.Retired() {
		st.Retired = append(st.Retired, describe(root))
	}
	return st, nil
}

// caChanged makes next the CA of this process and tells running relays,
// through the change feed, to read the CA's roots again. The change is
// already where the CA is kept (the data directory, or the store a
// cluster shares): a relay that misses the notice finds it at its next
// full read.
func (a *Admin) caChanged(ctx context.Context, next *ca.CA) {
	a.auth.Replace(next)
	if err := a.store.AppendChange(ctx, store.Change{Kind: store.ChangeCA}); err != nil {
		a.log.Warn("the CA changed, but running relays could not be told through the store; restart them to apply it", "err", err)
	}
}

// RotateCA adds a new root to the CA. A running relay starts issuing agent
// certificates from it within its change poll and trusts certificates
// from both roots; its own server certificate stays on the old root until
// RetireCA, because agents that have not renewed trust only that one.
// renewNow asks connected agents to renew at once instead of at two thirds
// of their certificates' life.
func (a *Admin) RotateCA(ctx context.Context, renewNow bool) (CAStatus, error) {
	if err := a.vendorOnly("the CA"); err != nil {
		return CAStatus{}, err
	}
	var next *ca.CA
	err := a.dir.Locked(ctx, func() error {
		var err error
		next, err = ca.Rotate(ctx, a.auth.Storage(), a.now(), renewNow)
		return err
	})
	if err != nil {
		return CAStatus{}, err
	}
	a.caChanged(ctx, next)
	a.Record(audit.CARotate, "", "", "", map[string]any{"generation": next.Signer().Generation, "ca_root": next.Signer().ID(),
		"previous_root": next.Serving().ID(), "renew_now": renewNow})
	return a.CAStatus(ctx)
}

// RenewNowCA asks connected agents whose certificates come from the old
// root of a rotation to renew at once (and agents that connect later
// during the overlap, as soon as they do).
func (a *Admin) RenewNowCA(ctx context.Context) (CAStatus, error) {
	if err := a.vendorOnly("the CA"); err != nil {
		return CAStatus{}, err
	}
	var next *ca.CA
	err := a.dir.Locked(ctx, func() error {
		var err error
		next, err = ca.SetRenewNow(ctx, a.auth.Storage(), true)
		return err
	})
	if err != nil {
		return CAStatus{}, err
	}
	a.caChanged(ctx, next)
	a.Record(audit.CARenewNow, "", "", "", map[string]any{"ca_root": next.Signer().ID()})
	return a.CAStatus(ctx)
}

// RetireResult says what retiring a root left behind.
type RetireResult struct {
	Retired CARoot `json:"retired"`
	// Stranded are agents that still held certificates from the retired
	// root (only with force): they must enrol again.
	Stranded []AgentInfo `json:"stranded,omitempty"`
	// Tokens are usable join tokens that pinned the retired root and no
	// longer work.
	Tokens []TokenInfo `json:"tokens,omitempty"`
}

// maxStrandedListed bounds the agents named in a refusal or a result.
const maxStrandedListed = 20

// RetireCA ends a rotation: the old root is no longer trusted and its key
// is deleted. Unless force is set it refuses while agents (not revoked,
// certificate not expired) still hold certificates from the old root, and
// names them. A running relay applies it within its change poll: it
// serves a certificate from the new root and closes sessions that still
// stand on the old one.
func (a *Admin) RetireCA(ctx context.Context, force bool) (RetireResult, error) {
	if err := a.vendorOnly("the CA"); err != nil {
		return RetireResult{}, err
	}
	var res RetireResult
	err := a.dir.Locked(ctx, func() error {
		cur, err := ca.Load(ctx, a.auth.Storage())
		if err != nil {
			return err
		}
		if !cur.Rotating() {
			return ca.ErrNotRotating
		}
		old := cur.Serving()
		now := a.now()
		byRoot, err := a.store.AgentsByCertRoot(ctx, now)
		if err != nil {
			return err
		}
		n := 0
		for _, k := range rootKeys(old) {
			n += byRoot[k]
		}
		if n > 0 {
			agents, err := a.store.AgentsOnCertRoots(ctx, rootKeys(old), now, maxStrandedListed)
			if err != nil {
				return err
			}
			if !force {
				return fmt.Errorf("%d agent(s) still hold certificates from CA root %d (%s): %s; wait for them to renew "+
					"(tether-relay ca status shows progress, tether-relay ca renew-now asks connected agents to renew at once), "+
					"revoke them, or retire anyway with --force (they will have to enrol again)",
					n, old.Generation, old.ID(), describeAgents(agents, n))
			}
			for _, x := range agents {
				res.Stranded = append(res.Stranded, agentInfo(x))
			}
		}
		tokens, err := a.store.LiveTokens(ctx, now)
		if err != nil {
			return err
		}
		for _, t := range tokens {
			if slices.Contains(rootKeys(old), t.CARoot) {
				res.Tokens = append(res.Tokens, tokenInfo(t))
			}
		}
		next, retired, err := ca.Retire(ctx, a.auth.Storage(), now)
		if err != nil {
			return err
		}
		a.caChanged(ctx, next)
		res.Retired = CARoot{Generation: retired.Generation, Fingerprint: retired.ID(), Subject: retired.Cert.Subject.CommonName,
			AddedAt: retired.AddedAt.UTC(), NotAfter: retired.Cert.NotAfter.UTC(), Agents: n, Tokens: len(res.Tokens)}
		t := retired.RetiredAt.UTC()
		res.Retired.RetiredAt = &t
		a.Record(audit.CARetire, "", "", "", map[string]any{"generation": retired.Generation, "ca_root": retired.ID(),
			"signing_root": next.Signer().ID(), "forced": force, "agents_stranded": n, "tokens_invalidated": len(res.Tokens)})
		return nil
	})
	return res, err
}

// describeAgents names agents for an operator: "acme/abc (host, certificate
// until …)", with how many more there are.
func describeAgents(agents []store.Agent, total int) string {
	parts := make([]string, 0, len(agents)+1)
	for _, x := range agents {
		host := x.Hostname
		if host == "" {
			host = "unknown host"
		}
		parts = append(parts, fmt.Sprintf("%s/%s (%s, certificate until %s)", x.Tenant, x.ID, host, x.CertNotAfter.UTC().Format(time.RFC3339)))
	}
	if total > len(agents) {
		parts = append(parts, fmt.Sprintf("and %d more", total-len(agents)))
	}
	return strings.Join(parts, ", ")
}

// IsNotRotating reports whether err says there is no rotation to act on.
func IsNotRotating(err error) bool { return errors.Is(err, ca.ErrNotRotating) }
