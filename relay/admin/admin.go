package admin

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/credential"
	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/policy"
	"github.com/tetherhq/tether/relay/internal/session"
	"github.com/tetherhq/tether/relay/internal/trust"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/store"
)

// Admin performs operator actions on a relay's state: the store (which
// every relay sharing it follows through the change feed) and the CA in
// the data directory. Offline commands open one with Open; a running relay
// makes one with New for its admin API, with a view of its live agents.
type Admin struct {
	dir   *datadir.Dir
	auth  *trust.Authority
	store *store.Store
	audit *audit.Log // records of offline commands are written before the command returns
	live  Live       // nil for offline commands
	log   *slog.Logger
	now   func() time.Time
	// certLifetime is the relay's agent certificate lifetime, which the
	// fleet view judges renewals by.
	certLifetime time.Duration
	// actor names who acts in audit records; "" means "operator" (the
	// command line on the relay host).
	actor string
	// scope is what actions may see and change (For); the zero Scope
	// allows nothing.
	scope Scope
	// relayID is the running relay's id ("" for offline commands).
	relayID string
	// sessionBounds bound the console sessions open at once (zero: the
	// defaults, maxCredentialSessions and the others).
	sessionBounds sessionBounds
	close         func() error
}

// Live is a running relay's view of, and action on, the agents connected
// to it.
type Live interface {
	// LiveAgents returns the sessions of tenant's agents ("" for all).
	LiveAgents(tenant string) []LiveAgent
	// DrainAgent tells the sessions of agent id of tenant to go away
	// and returns how many it told.
	DrainAgent(tenant, id, msg string) int
}

// LiveAgent is a snapshot of one connected agent session.
type LiveAgent = session.LiveAgent

// Config is what a running relay gives its Admin.
type Config struct {
	Dir          *datadir.Dir
	Authority    *trust.Authority
	Audit        *audit.Log
	Live         Live
	CertLifetime time.Duration
	// RelayID is the running relay's id in its cluster.
	RelayID string
	Logger  *slog.Logger
	Now     func() time.Time
}

// New returns the Admin of a running relay.
func New(cfg Config) *Admin {
	return &Admin{dir: cfg.Dir, auth: cfg.Authority, store: cfg.Dir.Store, audit: cfg.Audit, live: cfg.Live, log: cfg.Logger, now: cfg.Now,
		certLifetime: cfg.CertLifetime, scope: Unscoped, relayID: cfg.RelayID}
}

// As returns an Admin whose audit records name actor, with a's scope.
func (a *Admin) As(actor string) *Admin {
	b := *a
	b.actor = actor
	b.close = nil
	return &b
}

// For returns an Admin acting for an operator: its audit records name
// actor, and every action is checked against scope. A tenant-scoped
// operator sees only its tenant (other tenants' objects are not found),
// changes only what its role allows (ErrForbidden), and nothing that is
// not a tenant's: backends, releases, the CA, operators.
func (a *Admin) For(actor string, scope Scope) *Admin {
	b := a.As(actor)
	b.scope = scope
	if scope.Validate() != nil {
		b.scope = Scope{} // allows nothing
	}
	return b
}

// Options are an offline command's.
type Options struct {
	// DataDir is the relay's data directory. Required.
	DataDir string
	// AuditLog is the audit file the command's records are appended to
	// (as well as the store); default DataDir/audit.log, the relay's
	// default.
	AuditLog string
	// TrustDomain names the CA's trust domain if the command creates the
	// data directory; default "tether.internal".
	TrustDomain string
	// Existing refuses a data directory a relay has not initialised (no
	// CA in it), with an error of class ErrNoDataDir, instead of creating
	// one: what admin commands want, since a CA made by one would have
	// the default trust domain whatever the relay is started with, and a
	// mistyped --data-dir would silently hold a store of its own. With a
	// PostgreSQL Store, it refuses a store no relay has started on (no
	// CA in it); the data directory then only keeps the audit file.
	Existing bool
	// Store is the store of a cluster of relays (a postgres:// URL),
	// which holds the CA too; empty for the SQLite store in DataDir.
	Store string
	// CAKEK is the cluster's key-encryption key (32 bytes), which seals
	// the CA's private keys in a PostgreSQL store: required with one.
	CAKEK []byte
}

// ErrNoDataDir is the class of Open's error for a data directory that
// does not exist or holds no relay state, with Options.Existing.
var ErrNoDataDir = errors.New("no relay data directory")

// Open opens the data directory for an offline command, creating it (with
// a CA) when it does not exist yet, unless o.Existing.
func Open(ctx context.Context, o Options) (*Admin, error) {
	if o.TrustDomain == "" {
		o.TrustDomain = "tether.internal"
	}
	if o.Existing && o.Store == "" {
		if err := checkDataDir(o.DataDir); err != nil {
			return nil, err
		}
	}
	d, authority, err := datadir.Open(ctx, o.DataDir, datadir.Options{TrustDomain: o.TrustDomain, Store: o.Store, CAKEK: o.CAKEK, Existing: o.Existing}, time.Now())
	if errors.Is(err, fs.ErrNotExist) && o.Existing {
		return nil, &classError{class: ErrNoDataDir, msg: "the store holds no relay state (no CA): no relay has started on it; " +
			"give the cluster's (--store or TETHER_STORE), or initialise it first: tether-relay init --store URL --ca-kek-file FILE (or start a relay on it: tether-relay serve --store URL --ca-kek-file FILE)"}
	}
	if err != nil {
		return nil, err
	}
	if o.AuditLog == "" {
		o.AuditLog = d.File(datadir.AuditFile)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	trail, err := audit.Open(ctx, d.Store, o.AuditLog, logger)
	if err != nil {
		d.Close()
		return nil, err
	}
	a := &Admin{dir: d, auth: trust.NewAuthority(d.CAStorage(), authority), store: d.Store, audit: trail, log: logger, now: time.Now, certLifetime: DefaultCertLifetime, scope: Unscoped}
	a.close = func() error { return errors.Join(trail.Close(), d.Close()) }
	return a, nil
}

// caSubdir is the directory of the CA in a data directory
// (relay/internal/datadir): a relay's first start creates it.
const caSubdir = "ca"

// checkDataDir refuses dir unless a relay has initialised it.
func checkDataDir(dir string) error {
	if dir == "" {
		return &classError{class: ErrNoDataDir, msg: "no data directory given"}
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return &classError{class: ErrNoDataDir, msg: fmt.Sprintf("data directory %s does not exist: give the relay's (--data-dir or TETHER_DATA_DIR), "+
			"or create one: tether-relay init --data-dir %s (or start the relay on it: tether-relay serve --data-dir %s)", dir, dir, dir)}
	case err != nil:
		return fmt.Errorf("data directory: %w", err)
	case !fi.IsDir():
		return &classError{class: ErrNoDataDir, msg: fmt.Sprintf("data directory %s is not a directory: give the relay's (--data-dir or TETHER_DATA_DIR), "+
			"or create one: tether-relay init --data-dir DIR (or start the relay on it: tether-relay serve --data-dir DIR)", dir)}
	}
	if _, err := os.Stat(filepath.Join(dir, caSubdir)); errors.Is(err, os.ErrNotExist) {
		return &classError{class: ErrNoDataDir, msg: fmt.Sprintf("data directory %s holds no relay state (no CA): give the relay's (--data-dir or TETHER_DATA_DIR), "+
			"or initialise it: tether-relay init --data-dir %s (or start the relay on it once: tether-relay serve --data-dir %s)", dir, dir, dir)}
	} else if err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	return nil
}

// DefaultCertLifetime is the relay's default agent certificate lifetime.
const DefaultCertLifetime = 24 * time.Hour

// Close releases what Open opened; it does nothing on an Admin from New.
func (a *Admin) Close() error {
	if a.close == nil {
		return nil
	}
	return a.close()
}

// Record writes an audit record of an operator action, before it returns.
func (a *Admin) Record(kind, tenant, agent, backend string, detail map[string]any) {
	a.audit.Add(audit.Record{At: a.now(), Kind: kind, Outcome: audit.OutcomeOK, Tenant: tenant, Agent: agent, Backend: backend, Actor: cmp.Or(a.actor, "operator"), Detail: detail})
}

// RecordRefusal writes an audit record of something refused (outcome is
// the refusal's code), before it returns.
func (a *Admin) RecordRefusal(kind, outcome, tenant string, detail map[string]any) {
	a.audit.Add(audit.Record{At: a.now(), Kind: kind, Outcome: outcome, Tenant: tenant, Actor: cmp.Or(a.actor, "operator"), Detail: detail})
}

// RecordQueued queues an audit record without waiting for it to be
// written: for summaries of refusals, which nothing waits on.
func (a *Admin) RecordQueued(rec audit.Record) {
	if rec.At.IsZero() {
		rec.At = a.now()
	}
	a.audit.Record(rec)
}

// TrustDomain is the SPIFFE trust domain of the relay's CA.
func (a *Admin) TrustDomain() string { return a.auth.CA().TrustDomain() }

// CAFingerprint is the fingerprint agents pin, printable.
func (a *Admin) CAFingerprint() string { return protocol.FormatFingerprint(a.auth.CA().Fingerprint()) }

// Tenant describes one tenant.
type Tenant struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// AddTenant creates a tenant. Names are DNS labels because they appear in
// addresses of the form <service>.<tenant>.tether.
func (a *Admin) AddTenant(ctx context.Context, name string) error {
	if err := a.vendorOnly("adding a tenant"); err != nil {
		return err
	}
	if err := identity.ValidateName("tenant", name); err != nil {
		return invalid(err)
	}
	if err := a.store.AddTenant(ctx, name, a.now()); err != nil {
		if errors.Is(err, store.ErrExists) {
			return existsf("tenant %q already exists", name)
		}
		return err
	}
	a.Record(audit.TenantAdd, name, "", "", nil)
	return nil
}

// Tenants lists every tenant the scope sees.
func (a *Admin) Tenants(ctx context.Context) ([]Tenant, error) {
	ts, err := a.store.ListTenants(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Tenant, 0, len(ts))
	for _, t := range ts {
		if a.scope.Sees(t.Name) {
			out = append(out, Tenant{Name: t.Name, CreatedAt: t.CreatedAt})
		}
	}
	return out, nil
}

// TokenInfo describes a join token without its secret.
type TokenInfo struct {
	ID        string    `json:"id"`
	Tenant    string    `json:"tenant"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	MaxUses   int       `json:"max_uses"`
	Uses      int       `json:"uses"`
	// CARoot is the fingerprint of the CA root the token pins ("" for
	// tokens made before CA rotation existed: the first root).
	CARoot string `json:"ca_root,omitempty"`
}

// Limits on join tokens.
const (
	DefaultTokenTTL = time.Hour
	MaxTokenTTL     = 30 * 24 * time.Hour
)

// CreateToken creates a join token for tenant, valid for ttl (default 1h)
// and uses enrolments (default 1). The token string is returned once; only a
// hash of its secret is stored.
func (a *Admin) CreateToken(ctx context.Context, tenant string, ttl time.Duration, uses int) (string, TokenInfo, error) {
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	if uses == 0 {
		uses = 1
	}
	if ttl < 0 || ttl > MaxTokenTTL {
		return "", TokenInfo{}, invalidf("token lifetime %v is out of range (0 to %v)", ttl, MaxTokenTTL)
	}
	if uses < 0 || uses > 100000 {
		return "", TokenInfo{}, invalidf("token uses %d is out of range (1 to 100000)", uses)
	}
	noTenant := notFoundf("tenant %q does not exist (create it with: tether-relay tenant add %s)", tenant, tenant)
	if err := a.administer(tenant, "creating a join token", noTenant); err != nil {
		return "", TokenInfo{}, err
	}
	if _, err := a.store.Tenant(ctx, tenant); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return "", TokenInfo{}, noTenant
		}
		return "", TokenInfo{}, err
	}
	var tok protocol.JoinToken
	rand.Read(tok.ID[:])
	rand.Read(tok.Secret[:])
	// The token pins the serving root: the one the relay's TLS chain
	// carries (during a rotation, the old root; see RetireCA).
	serving := a.auth.CA().Serving()
	tok.CAFingerprint = serving.Fingerprint()
	now := a.now().Truncate(time.Second)
	rec := store.Token{
		ID: tok.IDString(), Tenant: tenant, SecretHash: tok.SecretHash(),
		CreatedAt: now, ExpiresAt: now.Add(ttl), MaxUses: uses, CARoot: serving.ID(),
	}
	if err := a.store.AddToken(ctx, rec); err != nil {
		return "", TokenInfo{}, err
	}
	a.Record(audit.TokenCreate, tenant, "", "", map[string]any{"token": rec.ID, "expires_at": rec.ExpiresAt, "max_uses": uses})
	return tok.String(), tokenInfo(rec), nil
}

// Tokens lists join tokens (of one tenant, or all the scope sees when
// tenant is ""). A tenant's tokens are for its administrators.
func (a *Admin) Tokens(ctx context.Context, tenant string) ([]TokenInfo, error) {
	tenant, err := a.scopedTenant(tenant)
	if err != nil {
		return nil, err
	}
	if !a.scope.Vendor() {
		if err := a.administer(tenant, "listing join tokens", notFoundf("no tenant %q", tenant)); err != nil {
			return nil, err
		}
	}
	ts, err := a.store.ListTokens(ctx, tenant)
	if err != nil {
		return nil, err
	}
	out := make([]TokenInfo, len(ts))
	for i, t := range ts {
		out[i] = tokenInfo(t)
	}
	return out, nil
}

func tokenInfo(t store.Token) TokenInfo {
	return TokenInfo{ID: t.ID, Tenant: t.Tenant, CreatedAt: t.CreatedAt, ExpiresAt: t.ExpiresAt, MaxUses: t.MaxUses, Uses: t.Uses, CARoot: t.CARoot}
}

// AgentInfo describes an enrolled agent.
type AgentInfo struct {
	ID           string    `json:"id"`
	Tenant       string    `json:"tenant"`
	Hostname     string    `json:"hostname"`
	EnrolledAt   time.Time `json:"enrolled_at"`
	CertNotAfter time.Time `json:"cert_not_after"`
	// CertRoot is the fingerprint of the CA root that issued the agent's
	// newest certificate ("" for certificates issued before CA rotation
	// existed: the first root).
	CertRoot string `json:"cert_root,omitempty"`
	// RevokedAt is set when the agent was revoked.
	RevokedAt     *time.Time `json:"revoked_at,omitempty"`
	RevokedReason string     `json:"revoked_reason,omitempty"`
	// LastSeen is when a relay last heard from the agent (to within about
	// a minute while it is connected); absent if never.
	LastSeen *time.Time `json:"last_seen,omitempty"`
}

func agentInfo(x store.Agent) AgentInfo {
	ai := AgentInfo{ID: x.ID, Tenant: x.Tenant, Hostname: x.Hostname, EnrolledAt: x.CreatedAt, CertNotAfter: x.CertNotAfter, CertRoot: x.CertRoot, RevokedReason: x.RevokedReason}
	if !x.RevokedAt.IsZero() {
		t := x.RevokedAt
		ai.RevokedAt = &t
	}
	if !x.LastSeen.IsZero() {
		t := x.LastSeen
		ai.LastSeen = &t
	}
	return ai
}

// Agents lists enrolled agents (of one tenant, or all the scope sees when
// tenant is "").
func (a *Admin) Agents(ctx context.Context, tenant string) ([]AgentInfo, error) {
	tenant, err := a.scopedTenant(tenant)
	if err != nil {
		return nil, err
	}
	as, err := a.store.ListAgents(ctx, tenant)
	if err != nil {
		return nil, err
	}
	out := make([]AgentInfo, len(as))
	for i, x := range as {
		out[i] = agentInfo(x)
	}
	return out, nil
}

// RevokeAgent revokes agent id: a running relay closes its live sessions
// within a second or so (the relay's change feed, Config.ChangePoll) and refuses its certificate
// from then on, across restarts. Revoking a revoked agent changes nothing.
func (a *Admin) RevokeAgent(ctx context.Context, id, reason string) (AgentInfo, error) {
	if len(reason) > 500 {
		return AgentInfo{}, invalidf("revocation reason is longer than 500 bytes")
	}
	noAgent := notFoundf("no agent %q (list them with: tether-relay agent list)", id)
	before, err := a.store.Agent(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return AgentInfo{}, a.missing(noAgent)
	}
	if err != nil {
		return AgentInfo{}, err
	}
	if err := a.administer(before.Tenant, "revoking an agent", noAgent); err != nil {
		return AgentInfo{}, err
	}
	rec, err := a.store.RevokeAgent(ctx, id, reason, a.now())
	if err != nil {
		return AgentInfo{}, err
	}
	if before.RevokedAt.IsZero() {
		a.Record(audit.Revoke, rec.Tenant, rec.ID, "", map[string]any{"reason": reason})
	}
	return agentInfo(rec), nil
}

// Limits are a tenant's bulkheads; zero fields are unlimited.
type Limits struct {
	Tenant     string   `json:"tenant"`
	MaxAgents  int      `json:"max_agents"`
	MaxStreams int      `json:"max_streams"`
	OpenRate   float64  `json:"open_rate"`
	OpenBurst  int      `json:"open_burst"`
	CIDRs      []string `json:"cidrs"`
	// Bandwidth is the tenant's bytes per second in each direction
	// (to its services, and back), shared by all its streams through
	// one relay: each relay of a cluster enforces it on its own.
	Bandwidth int64 `json:"bandwidth"`
}

// SetLimits replaces tenant's limits: fields left zero become unlimited
// (see PatchLimits to change some only). A running relay applies them
// within its change feed's poll (relay.Config.ChangePoll).
func (a *Admin) SetLimits(ctx context.Context, l Limits) error {
	return a.dir.Locked(ctx, func() error {
		clean, err := a.writeLimitsLocked(ctx, l)
		if err != nil {
			return err
		}
		a.Record(audit.LimitsSet, l.Tenant, "", "", limitsDetail(clean))
		return nil
	})
}

// LimitsPatch changes some of a tenant's limits: a nil field keeps the
// tenant's current value; a non-nil one replaces it (0, or an empty list
// of networks, means unlimited). JSON leaves out, or sends null for, the
// fields it keeps.
type LimitsPatch struct {
	MaxAgents  *int      `json:"max_agents,omitempty"`
	MaxStreams *int      `json:"max_streams,omitempty"`
	OpenRate   *float64  `json:"open_rate,omitempty"`
	OpenBurst  *int      `json:"open_burst,omitempty"`
	CIDRs      *[]string `json:"cidrs,omitempty"`
	Bandwidth  *int64    `json:"bandwidth,omitempty"`
}

// fields names the limits p changes, in JSON's names.
func (p LimitsPatch) fields() []string {
	var out []string
	for _, f := range []struct {
		name string
		set  bool
	}{{"max_agents", p.MaxAgents != nil}, {"max_streams", p.MaxStreams != nil}, {"open_rate", p.OpenRate != nil},
		{"open_burst", p.OpenBurst != nil}, {"cidrs", p.CIDRs != nil}, {"bandwidth", p.Bandwidth != nil}} {
		if f.set {
			out = append(out, f.name)
		}
	}
	return out
}

// PatchLimits changes the limits p sets of tenant and keeps the others,
// and returns the limits that result. The read and the write hold the
// data directory's lock, so patches from admin commands and the admin API
// of relays on this data directory do not undo one another. The audit
// record carries the resulting limits and the fields changed. A patch
// that changes nothing is refused (ErrInvalid).
func (a *Admin) PatchLimits(ctx context.Context, tenant string, p LimitsPatch) (Limits, error) {
	changed := p.fields()
	if len(changed) == 0 {
		return Limits{}, invalidf("no limit to change: give at least one of max_agents, max_streams, open_rate, open_burst, cidrs, bandwidth")
	}
	var out Limits
	err := a.dir.Locked(ctx, func() error {
		cur, err := a.limitsOf(ctx, tenant)
		if err != nil {
			return err
		}
		if p.MaxAgents != nil {
			cur.MaxAgents = *p.MaxAgents
		}
		if p.MaxStreams != nil {
			cur.MaxStreams = *p.MaxStreams
		}
		if p.OpenRate != nil {
			cur.OpenRate = *p.OpenRate
		}
		if p.OpenBurst != nil {
			cur.OpenBurst = *p.OpenBurst
		}
		if p.CIDRs != nil {
			cur.CIDRs = *p.CIDRs
		}
		if p.Bandwidth != nil {
			cur.Bandwidth = *p.Bandwidth
		}
		clean, err := a.writeLimitsLocked(ctx, cur)
		if err != nil {
			return err
		}
		detail := limitsDetail(clean)
		detail["changed"] = changed
		a.Record(audit.LimitsSet, tenant, "", "", detail)
		out = clean
		return nil
	})
	return out, err
}

// Limits returns tenant's limits (all zero, unlimited, when it has none).
func (a *Admin) Limits(ctx context.Context, tenant string) (Limits, error) {
	return a.limitsOf(ctx, tenant)
}

// limitsOf reads tenant's limits, checking that it exists.
func (a *Admin) limitsOf(ctx context.Context, tenant string) (Limits, error) {
	if _, err := a.Tenant(ctx, tenant); err != nil {
		return Limits{}, err
	}
	all, err := a.AllLimits(ctx)
	if err != nil {
		return Limits{}, err
	}
	if i := slices.IndexFunc(all, func(l Limits) bool { return l.Tenant == tenant }); i >= 0 {
		return all[i], nil
	}
	return Limits{Tenant: tenant, CIDRs: []string{}}, nil
}

// writeLimitsLocked validates l and stores it as its tenant's limits,
// returning it with its networks in canonical form; the caller holds the
// data directory's lock. A tenant administrator may only lower its
// tenant's limits (lowersOnly).
func (a *Admin) writeLimitsLocked(ctx context.Context, l Limits) (Limits, error) {
	if err := a.administer(l.Tenant, "changing limits", notFoundf("tenant %q does not exist", l.Tenant)); err != nil {
		return Limits{}, err
	}
	if l.MaxAgents < 0 || l.MaxStreams < 0 || l.OpenRate < 0 || l.OpenBurst < 0 || l.Bandwidth < 0 {
		return Limits{}, invalidf("limits must not be negative (0 means unlimited)")
	}
	nets, err := policy.ParseCIDRs(l.CIDRs)
	if err != nil {
		return Limits{}, invalid(err)
	}
	if !a.scope.Vendor() {
		old, err := a.limitsOf(ctx, l.Tenant)
		if err != nil {
			return Limits{}, err
		}
		if err := lowersOnly(old, l, nets); err != nil {
			return Limits{}, err
		}
	}
	clean := make([]string, len(nets))
	for i, n := range nets {
		clean[i] = n.String()
	}
	err = a.store.SetLimits(ctx, store.Limits{Tenant: l.Tenant, MaxAgents: l.MaxAgents, MaxStreams: l.MaxStreams,
		OpenRate: l.OpenRate, OpenBurst: l.OpenBurst, CIDRs: clean, Bandwidth: l.Bandwidth, UpdatedAt: a.now()})
	if errors.Is(err, store.ErrNotFound) {
		return Limits{}, notFoundf("tenant %q does not exist", l.Tenant)
	}
	if err != nil {
		return Limits{}, err
	}
	l.CIDRs = clean
	return l, nil
}

func limitsDetail(l Limits) map[string]any {
	return map[string]any{"max_agents": l.MaxAgents, "max_streams": l.MaxStreams,
		"open_rate": l.OpenRate, "open_burst": l.OpenBurst, "cidrs": l.CIDRs, "bandwidth": l.Bandwidth}
}

// AllLimits lists the tenants that have limits (those the scope sees).
func (a *Admin) AllLimits(ctx context.Context) ([]Limits, error) {
	all, err := a.store.AllLimits(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Limits, 0, len(all))
	for _, l := range all {
		if !a.scope.Sees(l.Tenant) {
			continue
		}
		out = append(out, Limits{Tenant: l.Tenant, MaxAgents: l.MaxAgents, MaxStreams: l.MaxStreams, OpenRate: l.OpenRate, OpenBurst: l.OpenBurst, CIDRs: l.CIDRs,
			Bandwidth: l.Bandwidth})
	}
	slices.SortFunc(out, func(x, y Limits) int { return strings.Compare(x.Tenant, y.Tenant) })
	return out, nil
}

// EveryTenantLimits lists the limits of every tenant the scope sees, by
// name: all zero (unlimited) for a tenant that has none.
func (a *Admin) EveryTenantLimits(ctx context.Context) ([]Limits, error) {
	ts, err := a.Tenants(ctx)
	if err != nil {
		return nil, err
	}
	some, err := a.AllLimits(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Limits, 0, len(ts))
	for _, t := range ts {
		l := Limits{Tenant: t.Name, CIDRs: []string{}}
		if i := slices.IndexFunc(some, func(l Limits) bool { return l.Tenant == t.Name }); i >= 0 {
			l = some[i]
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(x, y Limits) int { return strings.Compare(x.Tenant, y.Tenant) })
	return out, nil
}

// AuditFilter selects audit records.
type AuditFilter = store.AuditFilter

// Audit returns audit records matching f. A tenant-scoped operator sees
// only records of its tenant, and never their seq (the trail's counter,
// shared by every tenant, would tell how busy the others are): it is
// left zero, and a filter bounding seqs is refused; such an operator
// pages with AuditPage's cursors.
func (a *Admin) Audit(ctx context.Context, f AuditFilter) ([]audit.Record, error) {
	var err error
	if f.Tenant, err = a.scopedTenant(f.Tenant); err != nil {
		return nil, err
	}
	scoped := !a.scope.Vendor()
	if scoped && (f.AfterSeq != 0 || f.BeforeSeq != 0) {
		return nil, invalidf("a tenant's operator pages the audit trail by cursor, not by seq")
	}
	recs, err := a.store.ListAudit(ctx, f)
	if scoped {
		for i := range recs {
			recs[i].Seq = 0
		}
	}
	return recs, err
}

// Grant lets a backend reach services of tenants (policy.ParseGrant).
type Grant = policy.Grant

// BackendInfo describes a backend credential without its key.
type BackendInfo struct {
	Name      string    `json:"name"`
	Grants    []Grant   `json:"grants"`
	CreatedAt time.Time `json:"created_at"`
}

// AddBackend creates a backend credential with its grants (see ParseGrant:
// "acme/postgres", "acme" for all of acme's services, "*/metrics") and
// returns its API key. The key is shown once; only its hash is stored.
func (a *Admin) AddBackend(ctx context.Context, name string, grants []string) (string, error) {
	if err := a.vendorOnly("adding a backend"); err != nil {
		return "", err
	}
	if err := identity.ValidateName("backend", name); err != nil {
		return "", invalid(err)
	}
	if len(grants) == 0 {
		return "", invalidf(`a backend needs at least one grant: tenant/service, tenant (all its services), or patterns with "*"`)
	}
	gs, err := policy.ParseGrants(grants)
	if err != nil {
		return "", invalid(err)
	}
	key := credential.NewAPIKey()
	err = a.store.AddBackend(ctx, store.Backend{Name: name, KeyHash: credential.Hash(key), Grants: gs, CreatedAt: a.now()})
	switch {
	case errors.Is(err, store.ErrExists):
		return "", existsf("backend %q already exists", name)
	case errors.Is(err, store.ErrNotFound):
		return "", fmt.Errorf("add backend %q: %w (create tenants first)", name, err)
	case err != nil:
		return "", err
	}
	a.Record(audit.BackendAdd, "", "", name, map[string]any{"grants": grantStrings(gs)})
	return key, nil
}

// Grant adds grants to a backend. A running relay applies them within
// about 2 s (its change feed makes its front doors forget the backend).
func (a *Admin) Grant(ctx context.Context, name string, grants []string) error {
	return a.changeGrants(ctx, name, grants, audit.BackendGrant, func(ctx context.Context, name string, gs []Grant) error {
		err := a.store.Grant(ctx, name, gs)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("grant to backend %q: %w", name, err)
		}
		return err
	})
}

// Ungrant removes grants from a backend. A running relay refuses new
// streams they allowed within about 2 s (its change feed); streams already open
// continue.
func (a *Admin) Ungrant(ctx context.Context, name string, grants []string) error {
	return a.changeGrants(ctx, name, grants, audit.BackendUngrant, a.store.Ungrant)
}

// changeGrants parses grants, applies them to backend name with apply and
// audits the change as kind.
func (a *Admin) changeGrants(ctx context.Context, name string, grants []string, kind string, apply func(context.Context, string, []Grant) error) error {
	if err := a.vendorOnly("changing a backend's grants"); err != nil {
		return err
	}
	gs, err := policy.ParseGrants(grants)
	if err != nil {
		return invalid(err)
	}
	if len(gs) == 0 {
		return invalidf("no grant given")
	}
	if err := apply(ctx, name, gs); err != nil {
		return err
	}
	a.Record(kind, "", "", name, map[string]any{"grants": grantStrings(gs)})
	return nil
}

func grantStrings(gs []Grant) []string {
	out := make([]string, len(gs))
	for i, g := range gs {
		out[i] = g.String()
	}
	return out
}

// Backends lists backend credentials.
func (a *Admin) Backends(ctx context.Context) ([]BackendInfo, error) {
	if err := a.vendorOnly("listing backends"); err != nil {
		return nil, err
	}
	bs, err := a.store.ListBackends(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]BackendInfo, len(bs))
	for i, b := range bs {
		out[i] = BackendInfo{Name: b.Name, Grants: b.Grants, CreatedAt: b.CreatedAt}
	}
	return out, nil
}
