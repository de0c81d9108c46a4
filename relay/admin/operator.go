package admin

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
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
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt time.Time  `json:"expires_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

func operatorTokenInfo(t store.OperatorToken) OperatorTokenInfo {
	info := OperatorTokenInfo{ID: t.ID, Name: t.Name, CreatedAt: t.CreatedAt, ExpiresAt: t.ExpiresAt}
	if !t.RevokedAt.IsZero() {
		r := t.RevokedAt
		info.RevokedAt = &r
	}
	return info
}

// CreateOperatorToken creates an admin API token for operator name, valid
// for ttl (default DefaultOperatorTokenTTL). The token string is returned
// once; only a hash of its secret is stored.
func (a *Admin) CreateOperatorToken(ctx context.Context, name string, ttl time.Duration) (string, OperatorTokenInfo, error) {
	if err := identity.ValidateName("operator", name); err != nil {
		return "", OperatorTokenInfo{}, invalid(err)
	}
	if ttl == 0 {
		ttl = DefaultOperatorTokenTTL
	}
	if ttl < 0 || ttl > MaxOperatorTokenTTL {
		return "", OperatorTokenInfo{}, invalidf("operator token lifetime %v is out of range (0 to %v)", ttl, MaxOperatorTokenTTL)
	}
	token, id, secret := credential.NewOperatorToken()
	now := a.now().Truncate(time.Second)
	rec := store.OperatorToken{ID: id, Name: name, SecretHash: credential.Hash(secret), CreatedAt: now, ExpiresAt: now.Add(ttl)}
	if err := a.store.AddOperatorToken(ctx, rec); err != nil {
		return "", OperatorTokenInfo{}, err
	}
	a.Record(audit.OperatorToken, "", "", "", map[string]any{"operator": name, "token": id, "expires_at": rec.ExpiresAt})
	return token, operatorTokenInfo(rec), nil
}

// OperatorTokens lists operator tokens, newest first.
func (a *Admin) OperatorTokens(ctx context.Context) ([]OperatorTokenInfo, error) {
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
	t, err := a.store.RevokeOperatorToken(ctx, id, a.now())
	if errors.Is(err, store.ErrNotFound) {
		return OperatorTokenInfo{}, notFoundf("no operator token %q (list them with: tether-relay operator token list)", id)
	}
	if err != nil {
		return OperatorTokenInfo{}, err
	}
	a.Record(audit.OperatorTokenRevoke, "", "", "", map[string]any{"operator": t.Name, "token": t.ID})
	return operatorTokenInfo(t), nil
}

// ErrOperatorToken is the one answer to every bad operator token, so that
// a caller learns nothing about which part was wrong.
var ErrOperatorToken = errors.New("operator token is unknown, expired or revoked")

// CheckOperatorToken returns the token record tok names if tok is valid
// now (known, secret matches, not expired, not revoked), else
// ErrOperatorToken.
func (a *Admin) CheckOperatorToken(ctx context.Context, tok string) (store.OperatorToken, error) {
	now := a.now()
	id, secret, ok := credential.SplitOperatorToken(tok)
	if !ok {
		return store.OperatorToken{}, ErrOperatorToken
	}
	rec, err := a.store.OperatorToken(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return store.OperatorToken{}, ErrOperatorToken
	}
	if err != nil {
		return store.OperatorToken{}, err
	}
	if !credential.Matches(secret, rec.SecretHash) || !now.Before(rec.ExpiresAt) || !rec.RevokedAt.IsZero() {
		return store.OperatorToken{}, ErrOperatorToken
	}
	return rec, nil
}

// VerifyOperatorCertificate checks an operator's client certificate chain
// and returns the operator it names.
func (a *Admin) VerifyOperatorCertificate(certs []*x509.Certificate) (identity.Operator, error) {
	return a.auth.VerifyOperator(certs, a.now())
}

// maxConsoleSessions bounds the console sessions open at once.
const maxConsoleSessions = 10000

// ConsoleSession is a browser session of the admin console.
type ConsoleSession struct {
	Operator  string
	TokenID   string // the operator token it was opened with
	CSRF      string
	ExpiresAt time.Time
}

// OpenConsoleSession opens a session for the operator of token rec,
// lasting ttl, and returns its id (the cookie's value). The store keeps a
// hash of the id only, so sessions outlive a relay's restart and the
// table opens none.
func (a *Admin) OpenConsoleSession(ctx context.Context, rec store.OperatorToken, ttl time.Duration) (string, ConsoleSession, error) {
	now := a.now()
	if err := a.store.PruneConsoleSessions(ctx, now); err != nil {
		return "", ConsoleSession{}, err
	}
	n, err := a.store.CountConsoleSessions(ctx)
	if err != nil {
		return "", ConsoleSession{}, err
	}
	if n >= maxConsoleSessions {
		return "", ConsoleSession{}, errors.New("too many open sessions")
	}
	id := credential.NewSessionID()
	cs := store.ConsoleSession{IDHash: credential.Hash(id), Operator: rec.Name, TokenID: rec.ID, CSRF: credential.NewSessionID(), CreatedAt: now, ExpiresAt: now.Add(ttl)}
	if err := a.store.AddConsoleSession(ctx, cs); err != nil {
		return "", ConsoleSession{}, err
	}
	return id, ConsoleSession{Operator: cs.Operator, TokenID: cs.TokenID, CSRF: cs.CSRF, ExpiresAt: cs.ExpiresAt}, nil
}

// ErrNoSession is the class of the errors of a session id that opens no
// session.
var ErrNoSession = errors.New("session expired or unknown")

// ConsoleSession returns the session with id while it lasts and its
// operator token is valid, else an error wrapping ErrNoSession.
func (a *Admin) ConsoleSession(ctx context.Context, id string) (ConsoleSession, error) {
	now := a.now()
	cs, err := a.store.ConsoleSession(ctx, credential.Hash(id), now)
	if errors.Is(err, store.ErrNotFound) {
		return ConsoleSession{}, ErrNoSession
	}
	if err != nil {
		return ConsoleSession{}, err
	}
	// A session lives no longer than the token it was opened with.
	t, err := a.store.OperatorToken(ctx, cs.TokenID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return ConsoleSession{}, err
	}
	if err != nil || !t.RevokedAt.IsZero() || !now.Before(t.ExpiresAt) {
		a.store.DeleteConsoleSession(ctx, cs.IDHash)
		return ConsoleSession{}, &classError{class: ErrNoSession, msg: "the operator token of this session was revoked or expired"}
	}
	return ConsoleSession{Operator: cs.Operator, TokenID: cs.TokenID, CSRF: cs.CSRF, ExpiresAt: cs.ExpiresAt}, nil
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

// IssueOperatorCertificate issues a client certificate for operator name,
// accepted by the admin API (mTLS) until it expires.
func (a *Admin) IssueOperatorCertificate(name string, lifetime time.Duration) (*OperatorCertificate, error) {
	if lifetime <= 0 || lifetime > MaxOperatorTokenTTL {
		return nil, invalidf("certificate lifetime %v is out of range (0 to %v)", lifetime, MaxOperatorTokenTTL)
	}
	authority := a.auth.CA()
	id := identity.Operator{TrustDomain: authority.TrustDomain(), Name: name}
	if err := id.Validate(); err != nil {
		return nil, invalid(err)
	}
	c, err := a.issueClientCertificate(authority, "operator", id.String(), func(pub *ecdsa.PublicKey) (*x509.Certificate, error) {
		return authority.SignOperator(authority.Signer(), pub, id, lifetime, a.now())
	})
	if err != nil {
		return nil, err
	}
	a.Record(audit.OperatorCert, "", "", "", map[string]any{"operator": name, "serial": c.Serial, "not_after": c.NotAfter.UTC().Format(time.RFC3339)})
	return c, nil
}

// CABundlePEM is the relay CA's active roots (PEM): what agents, backends
// and operators trust the relay's certificates with, and what the admin
// API's default certificate chains to.
func (a *Admin) CABundlePEM() []byte { return a.auth.CA().BundlePEM() }

// Agent returns one enrolled agent.
func (a *Admin) Agent(ctx context.Context, id string) (AgentInfo, error) {
	x, err := a.store.Agent(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return AgentInfo{}, notFoundf("no agent %q", id)
	}
	if err != nil {
		return AgentInfo{}, err
	}
	return agentInfo(x), nil
}

// RevokeToken deletes join token id so that it enrols no more agents;
// agents it already enrolled are not affected.
func (a *Admin) RevokeToken(ctx context.Context, id string) (TokenInfo, error) {
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
// relay refuses its key and certificates within BackendCacheTTL; streams
// already open continue.
func (a *Admin) RemoveBackend(ctx context.Context, name string) error {
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
	t, err := a.store.Tenant(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return Tenant{}, notFoundf("no tenant %q", name)
	}
	if err != nil {
		return Tenant{}, err
	}
	return Tenant{Name: t.Name, CreatedAt: t.CreatedAt}, nil
}
