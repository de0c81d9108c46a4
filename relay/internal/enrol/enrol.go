// Package enrol gives agents their identity: it enrols new agents with a
// join token (on the agent port's enrolment protocol) and renews the
// certificates of connected agents (on their control streams).
package enrol

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/credential"
	"github.com/tetherhq/tether/relay/internal/policy"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// Config configures enrolment and renewal.
type Config struct {
	Store     *store.Store
	Authority *trust.Authority
	Policy    *policy.Policy
	Audit     *audit.Log
	// CertLifetime is the validity of agent certificates.
	CertLifetime time.Duration
	// HandshakeTimeout bounds reading an enrolment request.
	HandshakeTimeout time.Duration
	Logger           *slog.Logger
	Now              func() time.Time
}

// Enrol enrols and renews agents. It is passive: its methods run on the
// callers' goroutines.
type Enrol struct{ cfg Config }

// New returns Enrol.
func New(cfg Config) *Enrol { return &Enrol{cfg: cfg} }

// Agent is a connected agent session, as renewal needs it.
type Agent interface {
	Identity() identity.Agent
	SessionID() string
	Logger() *slog.Logger
	// Renewed moves every session of the agent to a certificate valid
	// until notAfter, issued by CA root root.
	Renewed(notAfter time.Time, root string)
}

// Serve answers one enrolment request on a TLS connection that
// negotiated ALPNEnroll, then closes it.
func (e *Enrol) Serve(ctx context.Context, tc *tls.Conn) {
	defer tc.Close()
	remote := tc.RemoteAddr().String()
	tc.SetDeadline(time.Now().Add(e.cfg.HandshakeTimeout))
	m, err := protocol.ReadMessage(bufio.NewReader(tc))
	if err != nil {
		e.cfg.Logger.Warn("enrolment: read request", "remote", remote, "err", err)
		return
	}
	req, ok := m.(*protocol.EnrollRequest)
	if !ok {
		protocol.WriteMessage(tc, protocol.RejectFor(protocol.Errorf(protocol.CodeBadRequest, "expected an enrolment request")))
		return
	}
	resp, tok, err := e.enroll(ctx, req, tc.RemoteAddr())
	rec := audit.Record{Kind: audit.Enrol, Outcome: audit.OutcomeOK, Tenant: tok.Tenant, Actor: "agent",
		Detail: map[string]any{"remote": remote, "hostname": truncate(req.Hostname, 255), "os": truncate(req.OS, 32), "arch": truncate(req.Arch, 32), "agent_version": truncate(req.AgentVersion, 64)}}
	if tok.ID != "" {
		rec.Detail["token"] = tok.ID
	}
	if err != nil {
		e.cfg.Logger.Warn("enrolment refused", "remote", remote, "hostname", req.Hostname, "err", err)
		rec.Outcome, rec.Detail["error"] = protocol.CodeOf(err).String(), err.Error()
		e.cfg.Audit.Add(rec)
		protocol.WriteMessage(tc, protocol.RejectFor(err))
		return
	}
	rec.Agent = resp.AgentID
	e.cfg.Audit.Add(rec)
	e.cfg.Logger.Info("agent enrolled", "remote", remote, "tenant", resp.Tenant, "agent", resp.AgentID, "hostname", req.Hostname)
	if err := protocol.WriteMessage(tc, resp); err != nil {
		e.cfg.Logger.Warn("enrolment: send response", "remote", remote, "err", err)
	}
}

// enroll checks a join token and a CSR and, if both are good, registers a
// new agent in the token's tenant and signs its certificate. The tenant is
// the token's: nothing the agent sends can choose it. It returns the token
// record as far as it was found (for the audit record).
func (e *Enrol) enroll(ctx context.Context, req *protocol.EnrollRequest, remote net.Addr) (*protocol.EnrollResponse, store.Token, error) {
	tok, err := protocol.ParseJoinToken(req.Token)
	if err != nil {
		return nil, store.Token{}, err
	}
	authority := e.cfg.Authority.CA()
	switch pinned := authority.Root(protocol.FormatFingerprint(tok.CAFingerprint)); {
	case pinned == nil:
		return nil, store.Token{}, protocol.Errorf(protocol.CodeInvalidToken, "join token was issued for another relay CA")
	case !pinned.RetiredAt.IsZero():
		return nil, store.Token{}, protocol.Errorf(protocol.CodeInvalidToken, "join token pins CA root %d, retired at %s: ask the operator for a new token",
			pinned.Generation, pinned.RetiredAt.UTC().Format(time.RFC3339))
	}
	csr, err := ca.CheckCSR(req.CSR)
	if err != nil {
		return nil, store.Token{}, err
	}
	now := e.cfg.Now()
	var t store.Token
	check := func(tenant string) error { return e.enrolmentLimits(ctx, tenant, remote) }
	t, err = e.cfg.Store.ConsumeToken(ctx, tok.IDString(), tok.SecretMatches, now, check)
	var pe *protocol.Error
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrTokenSecret):
		return nil, store.Token{}, protocol.Errorf(protocol.CodeInvalidToken, "join token is not known to this relay")
	case errors.Is(err, store.ErrTokenExpired):
		return nil, t, protocol.Errorf(protocol.CodeTokenExpired, "join token %s expired: ask the operator for a new one", tok.IDString())
	case errors.Is(err, store.ErrTokenUsedUp):
		return nil, t, protocol.Errorf(protocol.CodeTokenUsedUp, "join token %s has been used up: ask the operator for a new one", tok.IDString())
	case errors.As(err, &pe):
		return nil, t, err
	case err != nil:
		return nil, t, protocol.Errorf(protocol.CodeInternal, "use join token: %v", err)
	}
	id := identity.Agent{TrustDomain: authority.TrustDomain(), Tenant: t.Tenant, ID: credential.NewID()}
	// An agent that trusts the whole bundle gets its certificate from the
	// newest root; an older one only trusts the root it found in the
	// relay's TLS chain (the serving root), and moves at its first renewal.
	root := authority.Serving()
	if slices.Contains(req.Capabilities, protocol.CapRootBundle) {
		root = authority.Signer()
	}
	cert, err := authority.SignAgent(root, csr, id, e.cfg.CertLifetime, now)
	if err != nil {
		return nil, t, protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	hostname := req.Hostname
	if len(hostname) > 255 {
		hostname = hostname[:255]
	}
	if err := e.cfg.Store.AddAgent(ctx, store.Agent{
		ID: id.ID, Tenant: id.Tenant, Hostname: hostname, CreatedAt: now,
		CertSerial: cert.SerialNumber.Text(16), CertNotAfter: cert.NotAfter, CertRoot: root.ID(),
	}); err != nil {
		return nil, t, protocol.Errorf(protocol.CodeInternal, "register agent: %v", err)
	}
	var chain bytes.Buffer
	pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	return &protocol.EnrollResponse{
		AgentID:        id.ID,
		Tenant:         id.Tenant,
		TrustDomain:    id.TrustDomain,
		Certificate:    chain.String(),
		CACertificates: string(authority.BundlePEM()),
	}, t, nil
}

// enrolmentLimits checks tenant's limits for a new agent enrolling from
// remote: its network, and the number of agents enrolled and not revoked.
func (e *Enrol) enrolmentLimits(ctx context.Context, tenant string, remote net.Addr) error {
	l := e.cfg.Policy.LimitsOf(tenant)
	if l == nil {
		return nil
	}
	if !l.Allows(remote) {
		return protocol.Errorf(protocol.CodeNotAllowed, "enrolment from %s, outside the networks tenant %q allows for its agents", remote, tenant)
	}
	if l.MaxAgents > 0 {
		n, err := e.cfg.Store.CountAgents(ctx, tenant)
		if err != nil {
			return protocol.Errorf(protocol.CodeInternal, "count agents: %v", err)
		}
		if n >= l.MaxAgents {
			return protocol.Errorf(protocol.CodeLimitExceeded, "tenant %q already has %d agents enrolled, its limit: revoke one or raise the limit", tenant, l.MaxAgents)
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// Renew answers an agent's RenewRequest on its control stream: a new
// certificate for the session's own identity, to the fresh key in the CSR.
func (e *Enrol) Renew(ctx context.Context, ac Agent, req *protocol.RenewRequest) *protocol.RenewResponse {
	id := ac.Identity()
	resp, notAfter, root, err := e.renewCert(ctx, id, req)
	rec := audit.Record{Kind: audit.Renew, Outcome: audit.OutcomeOK, Tenant: id.Tenant, Agent: id.ID, Actor: "agent",
		Detail: map[string]any{"session": ac.SessionID()}}
	if err != nil {
		ac.Logger().Warn("certificate renewal refused", "err", err)
		rec.Outcome = protocol.CodeOf(err).String()
		rec.Detail["error"] = err.Error()
		e.cfg.Audit.Add(rec)
		rep := protocol.ReplyFor(err)
		return &protocol.RenewResponse{Code: rep.Code.String(), Message: rep.Message}
	}
	// The agent's sessions now stand on the new certificate: it proved it
	// holds the new key (the CSR's signature) over a session the old one
	// authenticated. Its other sessions (it keeps two) are the same agent
	// process and move with it, so none is cut when the old one expires.
	ac.Renewed(notAfter, root.ID())
	rec.Detail["not_after"] = notAfter
	rec.Detail["ca_root"] = root.ID()
	e.cfg.Audit.Add(rec)
	ac.Logger().Info("certificate renewed", "not_after", notAfter.Format(time.RFC3339), "ca_root", root.ID())
	return resp
}

// renewCert issues the new certificate from the CA's signing root (the new
// root during a rotation) and answers with every active root, so that the
// agent trusts the relay's server certificate before and after the old
// root is retired.
func (e *Enrol) renewCert(ctx context.Context, id identity.Agent, req *protocol.RenewRequest) (*protocol.RenewResponse, time.Time, *ca.Root, error) {
	rec, err := e.cfg.Store.Agent(ctx, id.ID)
	switch {
	case errors.Is(err, store.ErrNotFound) || (err == nil && rec.Tenant != id.Tenant):
		return nil, time.Time{}, nil, protocol.Errorf(protocol.CodeUnknownAgent, "agent %s is not registered with this relay", id.ID)
	case err != nil:
		return nil, time.Time{}, nil, protocol.Errorf(protocol.CodeInternal, "look up agent: %v", err)
	case !rec.RevokedAt.IsZero():
		return nil, time.Time{}, nil, policy.RevokedError(rec)
	}
	csr, err := ca.CheckCSR(req.CSR)
	if err != nil {
		return nil, time.Time{}, nil, err
	}
	now := e.cfg.Now()
	authority := e.cfg.Authority.CA()
	root := authority.Signer()
	cert, err := authority.SignAgent(root, csr, id, e.cfg.CertLifetime, now)
	if err != nil {
		return nil, time.Time{}, nil, protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	if err := e.cfg.Store.SetAgentCert(ctx, id.ID, cert.SerialNumber.Text(16), cert.NotAfter, root.ID()); err != nil {
		return nil, time.Time{}, nil, protocol.Errorf(protocol.CodeInternal, "record certificate: %v", err)
	}
	var chain bytes.Buffer
	pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	return &protocol.RenewResponse{Certificate: chain.String(), CACertificates: string(authority.BundlePEM())}, cert.NotAfter, root, nil
}
