package admin

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/credential"

	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/store"
)

// Lifetimes of operator tokens (credential.NewOperatorToken).
const (
	DefaultOperatorTokenTTL = 90 * 24 * time.Hour
	MaxOperatorTokenTTL     = 366 * 24 * time.Hour
)

// OperatorTokenInfo describes an operator token without its secret.
type OperatorTokenInfo struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	Tenant    string     `json:"tenant,omitempty"`
	Role      Role       `json:"role"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt time.Time  `json:"expires_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

func operatorTokenInfo(t store.OperatorToken) OperatorTokenInfo {
	sc, err := storedScope(t.Tenant, t.Role)
	if err != nil {
		sc = Scope{Tenant: t.Tenant, Role: Role(t.Role)} // shown as stored; refused when used
	}
	info := OperatorTokenInfo{ID: t.ID, Name: t.Name, Tenant: sc.Tenant, Role: sc.Role, CreatedAt: t.CreatedAt, ExpiresAt: t.ExpiresAt}
	if !t.RevokedAt.IsZero() {
		r := t.RevokedAt
		info.RevokedAt = &r
	}
	return info
}

// checkNewScope validates the scope of a new operator credential: its
// tenant must exist.
func (a *Admin) checkNewScope(ctx context.Context, scope Scope) error {
	if err := scope.Validate(); err != nil {
		return err
	}
	if scope.Vendor() {
		return nil
	}
	if _, err := a.store.Tenant(ctx, scope.Tenant); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return notFoundf("tenant %q does not exist (create it with: tether-relay tenant add %s)", scope.Tenant, scope.Tenant)
		}
		return err
	}
	return nil
}

// scopeDetail is how audit records describe a credential's scope.
func scopeDetail(detail map[string]any, scope Scope) map[string]any {
	detail["role"] = string(scope.Role)
	if scope.Tenant != "" {
		detail["scope_tenant"] = scope.Tenant
	}
	return detail
}

// CreateOperatorToken creates an admin API token for operator name with
// scope, valid for ttl (default DefaultOperatorTokenTTL). The token string
// is returned once; only a hash of its secret is stored.
func (a *Admin) CreateOperatorToken(ctx context.Context, name string, scope Scope, ttl time.Duration) (string, OperatorTokenInfo, error) {
	if err := a.vendorOnly("operator credentials"); err != nil {
		return "", OperatorTokenInfo{}, err
	}
	if err := identity.ValidateName("operator", name); err != nil {
		return "", OperatorTokenInfo{}, invalid(err)
	}
	if ttl == 0 {
		ttl = DefaultOperatorTokenTTL
	}
	if ttl < 0 || ttl > MaxOperatorTokenTTL {
		return "", OperatorTokenInfo{}, invalidf("operator token lifetime %v is out of range (0 to %v)", ttl, MaxOperatorTokenTTL)
	}
	if err := a.checkNewScope(ctx, scope); err != nil {
		return "", OperatorTokenInfo{}, err
	}
	token, id, secret := credential.NewOperatorToken()
	now := a.now().Truncate(time.Second)
	rec := store.OperatorToken{ID: id, Name: name, SecretHash: credential.Hash(secret), Tenant: scope.Tenant, Role: string(scope.Role), CreatedAt: now, ExpiresAt: now.Add(ttl)}
	if err := a.store.AddOperatorToken(ctx, rec); err != nil {
		return "", OperatorTokenInfo{}, err
	}
	a.Record(audit.OperatorToken, scope.Tenant, "", "", scopeDetail(map[string]any{"operator": name, "token": id, "expires_at": rec.ExpiresAt}, scope))
	return token, operatorTokenInfo(rec), nil
}

// OperatorTokens lists operator tokens, newest first.
func (a *Admin) OperatorTokens(ctx context.Context) ([]OperatorTokenInfo, error) {
	if err := a.vendorOnly("operator credentials"); err != nil {
		return nil, err
	}
	ts, err := a.store.ListOperatorTokens(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]OperatorTokenInfo, len(ts))
	for i, t := range ts {
		out[i] = operatorTokenInfo(t)
	}
	return out, nil
}

// RevokeOperatorToken revokes an operator token by id: the admin API
// refuses it from the next request on. Browser sessions opened with it end
// too.
func (a *Admin) RevokeOperatorToken(ctx context.Context, id string) (OperatorTokenInfo, error) {
	if err := a.vendorOnly("operator credentials"); err != nil {
		return OperatorTokenInfo{}, err
	}
	t, err := a.store.RevokeOperatorToken(ctx, id, a.now())
	if errors.Is(err, store.ErrNotFound) {
		return OperatorTokenInfo{}, notFoundf("no operator token %q (list them with: tether-relay operator token list)", id)
	}
	if err != nil {
		return OperatorTokenInfo{}, err
	}
	a.Record(audit.OperatorTokenRevoke, t.Tenant, "", "", map[string]any{"operator": t.Name, "token": t.ID})
	return operatorTokenInfo(t), nil
}

// Credential is an authenticated operator: by an operator token, an
// operator certificate or single sign-on (exactly one of TokenID,
// CertSerial and Subject is set).
type Credential struct {
	Name  string
	Scope Scope
	// TokenID is the operator token's id.
	TokenID string
	// CertSerial is the operator certificate's serial (OperatorCertInfo).
	CertSerial string
	// Subject is the person's immutable identity at their identity
	// provider: its issuer URL, "#", and their subject ("sub").
	Subject string
	// Issuer is the name of the configured single sign-on issuer that
	// granted the scope, with Subject. Several configured issuers may
	// have the same issuer URL (a vendor's and a tenant's, both at one
	// provider), so Subject alone does not say which one did.
	Issuer string
	// ExpiresAt is when the credential stops working; zero for single
	// sign-on.
	ExpiresAt time.Time
}

// ErrOperatorToken is the one answer to every bad operator token, so that
// a caller learns nothing about which part was wrong.
var ErrOperatorToken = errors.New("operator token is unknown, expired or revoked")

// OperatorTokenID is the id an operator token claims ("" when tok is not
// one), by which failed attempts with it are throttled.
func OperatorTokenID(tok string) string {
	id, _, ok := credential.SplitOperatorToken(tok)
	if !ok {
		return ""
	}
	return id
}

// CheckOperatorToken returns the operator tok authenticates if tok is
// valid now (known, secret matches, not expired, not revoked), else
// ErrOperatorToken.
func (a *Admin) CheckOperatorToken(ctx context.Context, tok string) (Credential, error) {
	now := a.now()
	id, secret, ok := credential.SplitOperatorToken(tok)
	if !ok {
		return Credential{}, ErrOperatorToken
	}
	rec, err := a.store.OperatorToken(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Credential{}, ErrOperatorToken
	}
	if err != nil {
		return Credential{}, err
	}
	if !credential.Matches(secret, rec.SecretHash) || !now.Before(rec.ExpiresAt) || !rec.RevokedAt.IsZero() {
		return Credential{}, ErrOperatorToken
	}
	sc, err := storedScope(rec.Tenant, rec.Role)
	if err != nil {
		return Credential{}, &classError{class: ErrOperatorToken, msg: fmt.Sprintf("operator token %s: %v", id, err)}
	}
	return Credential{Name: rec.Name, Scope: sc, TokenID: rec.ID, ExpiresAt: rec.ExpiresAt}, nil
}

// ErrOperatorCertificate is the class of every refusal of an operator's
// client certificate.
var ErrOperatorCertificate = errors.New("operator certificate refused")

func certRefused(format string, args ...any) error {
	return &classError{class: ErrOperatorCertificate, msg: fmt.Sprintf(format, args...)}
}

// CertificateSerial is how operator certificates' serial numbers are
// written: lowercase hexadecimal without leading zeros.
func CertificateSerial(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// ParseCertificateSerial reads a serial number as an operator writes it:
// hexadecimal, with or without colons, leading zeros or "0x".
func ParseCertificateSerial(s string) (string, error) {
	return parseSerial(s, "operator certificate list")
}

// parseSerial is ParseCertificateSerial, its refusal naming listCmd, the
// command that lists the serials.
func parseSerial(s, listCmd string) (string, error) {
	clean := strings.ToLower(strings.NewReplacer(":", "", " ", "").Replace(strings.TrimSpace(s)))
	clean = strings.TrimPrefix(clean, "0x")
	n, ok := new(big.Int).SetString(clean, 16)
	if !ok || n.Sign() <= 0 || n.BitLen() > 160 {
		return "", invalidf("serial %q: want the hexadecimal serial number of a certificate (%s)", s, listCmd)
	}
	return n.Text(16), nil
}

// VerifyOperatorCertificate checks an operator's client certificate chain
// against the relay CA and its record: a certificate the relay did not
// record at issue (issued before it recorded them) or that was revoked is
// refused. Refusals are ErrOperatorCertificate.
func (a *Admin) VerifyOperatorCertificate(ctx context.Context, certs []*x509.Certificate) (Credential, error) {
	id, err := a.auth.VerifyOperator(certs, a.now())
	if err != nil {
		return Credential{}, certRefused("%v", err)
	}
	serial := CertificateSerial(certs[0])
	rec, err := a.store.OperatorCert(ctx, serial)
	if errors.Is(err, store.ErrNotFound) {
		return Credential{}, certRefused("operator certificate %s was not recorded when it was issued (certificates issued before the relay recorded them cannot be revoked, so they are refused): issue a new one", serial)
	}
	if err != nil {
		return Credential{}, err
	}
	if !rec.RevokedAt.IsZero() {
		return Credential{}, certRefused("operator certificate %s was revoked at %s", serial, rec.RevokedAt.Format(time.RFC3339))
	}
	if rec.Name != id.Name {
		return Credential{}, certRefused("operator certificate %s names %q, its record %q", serial, id.Name, rec.Name)
	}
	sc, err := storedScope(rec.Tenant, rec.Role)
	if err != nil {
		return Credential{}, certRefused("operator certificate %s: %v", serial, err)
	}
	return Credential{Name: id.Name, Scope: sc, CertSerial: serial, ExpiresAt: certs[0].NotAfter}, nil
}

// Bounds of the console sessions open at once. Each credential (an
// operator token, an operator certificate, a person signed in by single
// sign-on) keeps its newest maxCredentialSessions: signing in again ends
// its oldest, so that no one credential fills the table. Tenant-scoped
// operators hold at most maxTenantSessions per tenant (a tenant's own
// identity provider can make as many people as it likes) and
// maxConsoleSessions in all; vendor operators are bounded per credential
// only, so that no tenant can keep them out of the console.
const (
	maxCredentialSessions = 32
	maxTenantSessions     = 1000
	maxConsoleSessions    = 10000
)

// sessionBounds are the bounds OpenConsoleSession holds to; the zero
// value stands for the constants above (tests set smaller ones).
type sessionBounds struct{ perCredential, perTenant, scoped int }

func (b sessionBounds) orDefault() sessionBounds {
	if b == (sessionBounds{}) {
		return sessionBounds{maxCredentialSessions, maxTenantSessions, maxConsoleSessions}
	}
	return b
}

// ConsoleSession is a browser session of the admin console.
type ConsoleSession struct {
	Operator  Credential
	CSRF      string
	ExpiresAt time.Time
}

// OpenConsoleSession opens a session for the operator c, lasting ttl, and
// returns its id (the cookie's value). The store keeps a hash of the id
// only, so sessions outlive a relay's restart and the table opens none.
// The session ends early when the token or certificate it was opened with
// is revoked or expires, and when c opens its maxCredentialSessions-th
// newer one.
func (a *Admin) OpenConsoleSession(ctx context.Context, c Credential, ttl time.Duration) (string, ConsoleSession, error) {
	if err := c.Scope.Validate(); err != nil {
		return "", ConsoleSession{}, err
	}
	if c.Subject != "" && c.Issuer == "" {
		return "", ConsoleSession{}, errors.New("a single sign-on session needs the name of the issuer that granted it")
	}
	now := a.now()
	if err := a.store.PruneConsoleSessions(ctx, now); err != nil {
		return "", ConsoleSession{}, err
	}
	bounds := a.sessionBounds.orDefault()
	if _, err := a.store.TrimConsoleSessions(ctx, c.TokenID, c.CertSerial, c.Subject, bounds.perCredential-1); err != nil {
		return "", ConsoleSession{}, err
	}
	if !c.Scope.Vendor() {
		all, ofTenant, err := a.store.CountScopedConsoleSessions(ctx, c.Scope.Tenant)
		if err != nil {
			return "", ConsoleSession{}, err
		}
		if ofTenant >= bounds.perTenant || all >= bounds.scoped {
			return "", ConsoleSession{}, errors.New("too many open sessions")
		}
	}
	id := credential.NewSessionID()
	cs := store.ConsoleSession{IDHash: credential.Hash(id), Operator: c.Name, TokenID: c.TokenID, CertSerial: c.CertSerial, Subject: c.Subject, SSOIssuer: c.Issuer,
		Tenant: c.Scope.Tenant, Role: string(c.Scope.Role), CSRF: credential.NewSessionID(), CreatedAt: now, ExpiresAt: now.Add(ttl)}
	if err := a.store.AddConsoleSession(ctx, cs); err != nil {
		return "", ConsoleSession{}, err
	}
	return id, ConsoleSession{Operator: c, CSRF: cs.CSRF, ExpiresAt: cs.ExpiresAt}, nil
}

// ErrNoSession is the class of the errors of a session id that opens no
// session.
var ErrNoSession = errors.New("session expired or unknown")

// ConsoleSession returns the session with id while it lasts and the
// credential it was opened with is valid, else an error wrapping
// ErrNoSession.
func (a *Admin) ConsoleSession(ctx context.Context, id string) (ConsoleSession, error) {
	now := a.now()
	cs, err := a.store.ConsoleSession(ctx, credential.Hash(id), now)
	if errors.Is(err, store.ErrNotFound) {
		return ConsoleSession{}, ErrNoSession
	}
	if err != nil {
		return ConsoleSession{}, err
	}
	c := Credential{Name: cs.Operator, TokenID: cs.TokenID, CertSerial: cs.CertSerial, Subject: cs.Subject, Issuer: cs.SSOIssuer}
	end := func(why string) (ConsoleSession, error) {
		a.store.DeleteConsoleSession(ctx, cs.IDHash)
		return ConsoleSession{}, &classError{class: ErrNoSession, msg: why}
	}
	if c.Scope, err = storedScope(cs.Tenant, cs.Role); err != nil {
		return end(err.Error())
	}
	// A session lives no longer than the credential it was opened with.
	switch {
	case cs.TokenID != "":
		t, err := a.store.OperatorToken(ctx, cs.TokenID)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return ConsoleSession{}, err
		}
		if err != nil || !t.RevokedAt.IsZero() || !now.Before(t.ExpiresAt) {
			return end("the operator token of this session was revoked or expired")
		}
		c.ExpiresAt = t.ExpiresAt
	case cs.CertSerial != "":
		rec, err := a.store.OperatorCert(ctx, cs.CertSerial)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return ConsoleSession{}, err
		}
		if err != nil || !rec.RevokedAt.IsZero() || !now.Before(rec.NotAfter) {
			return end("the operator certificate of this session was revoked or expired")
		}
		c.ExpiresAt = rec.NotAfter
	case cs.Subject != "":
		// Whether its issuer still grants it is the console's to say
		// (it has the configuration); a session stored before sessions
		// recorded their issuer cannot be checked, and ends.
		if cs.SSOIssuer == "" {
			return end("this single sign-on session does not record which issuer granted it (it was opened before the relay recorded that)")
		}
	default:
		return end("the session names no credential")
	}
	return ConsoleSession{Operator: c, CSRF: cs.CSRF, ExpiresAt: cs.ExpiresAt}, nil
}

// CloseConsoleSession ends the session with id and reports whether it was
// open.
func (a *Admin) CloseConsoleSession(ctx context.Context, id string) (bool, error) {
	return a.store.DeleteConsoleSession(ctx, credential.Hash(id))
}

// OperatorCertificate is an operator's client certificate (WriteFiles
// writes operator.crt, operator.key and ca.crt).
type OperatorCertificate = ClientCertificate

// File names an operator's ClientCertificate.WriteFiles writes.
const (
	OperatorCertFile = "operator.crt"
	OperatorKeyFile  = "operator.key"
	OperatorCAFile   = "ca.crt"
)

// IssueOperatorCertificate issues a client certificate for operator name
// with scope, accepted by the admin API (mTLS) until it expires or is
// revoked. It is recorded (serial, name, scope, expiry) before it is
// returned: the admin API refuses certificates it has no record of.
func (a *Admin) IssueOperatorCertificate(ctx context.Context, name string, scope Scope, lifetime time.Duration) (*OperatorCertificate, error) {
	if err := a.vendorOnly("operator credentials"); err != nil {
		return nil, err
	}
	if lifetime <= 0 || lifetime > MaxOperatorTokenTTL {
		return nil, invalidf("certificate lifetime %v is out of range (0 to %v)", lifetime, MaxOperatorTokenTTL)
	}
	authority := a.auth.CA()
	id := identity.Operator{TrustDomain: authority.TrustDomain(), Name: name}
	if err := id.Validate(); err != nil {
		return nil, invalid(err)
	}
	if err := a.checkNewScope(ctx, scope); err != nil {
		return nil, err
	}
	now := a.now()
	c, err := a.issueClientCertificate(authority, "operator", id.String(), func(pub *ecdsa.PublicKey) (*x509.Certificate, error) {
		return authority.SignOperator(authority.Signer(), pub, id, lifetime, now)
	})
	if err != nil {
		return nil, err
	}
	rec := store.OperatorCert{Serial: c.Serial, Name: name, Tenant: scope.Tenant, Role: string(scope.Role), CreatedAt: now, NotAfter: c.NotAfter}
	if err := a.store.AddOperatorCert(ctx, rec); err != nil {
		return nil, fmt.Errorf("record operator certificate %s: %w", c.Serial, err)
	}
	a.Record(audit.OperatorCert, scope.Tenant, "", "", scopeDetail(map[string]any{"operator": name, "serial": c.Serial, "not_after": c.NotAfter.UTC().Format(time.RFC3339)}, scope))
	return c, nil
}

// OperatorCertInfo describes an operator certificate the relay issued.
type OperatorCertInfo struct {
	Serial    string     `json:"serial"`
	Name      string     `json:"name"`
	Tenant    string     `json:"tenant,omitempty"`
	Role      Role       `json:"role"`
	CreatedAt time.Time  `json:"created_at"`
	NotAfter  time.Time  `json:"not_after"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

func operatorCertInfo(c store.OperatorCert) OperatorCertInfo {
	sc, err := storedScope(c.Tenant, c.Role)
	if err != nil {
		sc = Scope{Tenant: c.Tenant, Role: Role(c.Role)}
	}
	info := OperatorCertInfo{Serial: c.Serial, Name: c.Name, Tenant: sc.Tenant, Role: sc.Role, CreatedAt: c.CreatedAt, NotAfter: c.NotAfter}
	if !c.RevokedAt.IsZero() {
		r := c.RevokedAt
		info.RevokedAt = &r
	}
	return info
}

// OperatorCertificates lists the operator certificates issued (since the
// relay records them), newest first.
func (a *Admin) OperatorCertificates(ctx context.Context) ([]OperatorCertInfo, error) {
	if err := a.vendorOnly("operator credentials"); err != nil {
		return nil, err
	}
	cs, err := a.store.ListOperatorCerts(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]OperatorCertInfo, len(cs))
	for i, c := range cs {
		out[i] = operatorCertInfo(c)
	}
	return out, nil
}

// RevokeOperatorCertificate revokes the operator certificate with serial
// (ParseCertificateSerial): every relay sharing the store refuses it from
// its next request on, and the browser sessions opened with it end.
// Revoking a revoked certificate changes nothing.
func (a *Admin) RevokeOperatorCertificate(ctx context.Context, serial string) (OperatorCertInfo, error) {
	if err := a.vendorOnly("operator credentials"); err != nil {
		return OperatorCertInfo{}, err
	}
	serial, err := ParseCertificateSerial(serial)
	if err != nil {
		return OperatorCertInfo{}, err
	}
	before, err := a.store.OperatorCert(ctx, serial)
	if errors.Is(err, store.ErrNotFound) {
		return OperatorCertInfo{}, notFoundf("no operator certificate %s (list them with: tether-relay operator certificate list)", serial)
	}
	if err != nil {
		return OperatorCertInfo{}, err
	}
	c, err := a.store.RevokeOperatorCert(ctx, serial, a.now())
	if err != nil {
		return OperatorCertInfo{}, err
	}
	if before.RevokedAt.IsZero() {
		a.Record(KindOperatorCertRevoke, c.Tenant, "", "", map[string]any{"operator": c.Name, "serial": c.Serial})
	}
	return operatorCertInfo(c), nil
}

// CABundlePEM is the relay CA's active roots (PEM): what agents, backends
// and operators trust the relay's certificates with, and what the admin
// API's default certificate chains to.
func (a *Admin) CABundlePEM() []byte { return a.auth.CA().BundlePEM() }

// Agent returns one enrolled agent.
func (a *Admin) Agent(ctx context.Context, id string) (AgentInfo, error) {
	x, err := a.store.Agent(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return AgentInfo{}, a.missing(notFoundf("no agent %q", id))
	}
	if err != nil {
		return AgentInfo{}, err
	}
	if err := a.tenantHidden(x.Tenant, notFoundf("no agent %q", id)); err != nil {
		return AgentInfo{}, err
	}
	return agentInfo(x), nil
}

// RevokeToken deletes join token id so that it enrols no more agents;
// agents it already enrolled are not affected.
func (a *Admin) RevokeToken(ctx context.Context, id string) (TokenInfo, error) {
	if !a.scope.Vendor() {
		t, err := a.store.JoinToken(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			return TokenInfo{}, a.missing(notFoundf("no join token %q", id))
		}
		if err != nil {
			return TokenInfo{}, err
		}
		if err := a.administer(t.Tenant, "revoking a join token", notFoundf("no join token %q", id)); err != nil {
			return TokenInfo{}, err
		}
	}
	t, err := a.store.DeleteToken(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return TokenInfo{}, notFoundf("no join token %q", id)
	}
	if err != nil {
		return TokenInfo{}, err
	}
	a.Record(audit.TokenRevoke, t.Tenant, "", "", map[string]any{"token": t.ID})
	return tokenInfo(t), nil
}

// RemoveBackend deletes a backend credential and its grants. A running
// relay refuses its key and certificates within about 2 s (its change feed); streams
// already open continue.
func (a *Admin) RemoveBackend(ctx context.Context, name string) error {
	if err := a.vendorOnly("removing a backend"); err != nil {
		return err
	}
	err := a.store.RemoveBackend(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return notFoundf("no backend %q", name)
	}
	if err != nil {
		return err
	}
	a.Record(audit.BackendRemove, "", "", name, nil)
	return nil
}

// Tenant returns one tenant.
func (a *Admin) Tenant(ctx context.Context, name string) (Tenant, error) {
	// The scope first: another tenant's name is refused whether it exists
	// or not.
	if err := a.tenantHidden(name, notFoundf("no tenant %q", name)); err != nil {
		return Tenant{}, err
	}
	t, err := a.store.Tenant(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return Tenant{}, notFoundf("no tenant %q", name)
	}
	if err != nil {
		return Tenant{}, err
	}
	return Tenant{Name: t.Name, CreatedAt: t.CreatedAt}, nil
}
