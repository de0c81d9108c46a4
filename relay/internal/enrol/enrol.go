// Package enrol gives agents their identity: it enrols new agents with a
// join token (on the agent port's enrolment protocol) and renews the
// certificates of connected agents (on their control streams).
package enrol

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/credential"
	"github.com/tetherhq/tether/relay/internal/policy"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/throttle"
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
	// HandshakeTimeout bounds reading an enrolment request, and the
	// store calls of a renewal (Renew).
	HandshakeTimeout time.Duration
	// Throttle tunes the throttling of enrolments with a wrong join token
	// per source and per token id (limits.go); the zero value is the
	// throttle package's defaults (10 failures, then one every 5s).
	Throttle throttle.Config
	// RenewThrottle tunes the renewals an agent may make before its
	// certificate is due. Default: 3, then one every 20 minutes.
	RenewThrottle throttle.Config
	// CertOverlap is how long, after a renewal, the certificate it
	// replaced is still accepted, unless the new one is used first.
	// Default 5 minutes.
	CertOverlap time.Duration
	// AuditInterval is how long refusals are summed before their audit
	// record is written. Default 1 minute.
	AuditInterval time.Duration
	// Refusals, when set, counts refused enrolments and renewals
	// (tether_auth_refusals_total, doors enrol and renew).
	Refusals *prometheus.CounterVec
	Logger   *slog.Logger
	Now      func() time.Time
}

// Enrol enrols and renews agents. Its methods run on the callers'
// goroutines; Run writes the summed refusals.
type Enrol struct {
	cfg    Config
	limits *limits
}

// New returns Enrol.
func New(cfg Config) *Enrol {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CertOverlap <= 0 {
		cfg.CertOverlap = defaultCertOverlap
	}
	return &Enrol{cfg: cfg, limits: newLimits(cfg)}
}

// Agent is a connected agent session, as renewal needs it.
type Agent interface {
	Identity() identity.Agent
	SessionID() string
	Logger() *slog.Logger
	// CertSerial is the serial (hexadecimal) of the certificate the
	// session stands on; ConnectedAt is when it was admitted; Hello is
	// what the agent said then (its boot id names the agent process).
	CertSerial() string
	// RootID is the CA root (printable fingerprint) of that certificate,
	// "" when no active root issued it.
	RootID() string
	ConnectedAt() time.Time
	// NotAfter is when the session's newest certificate expires (the
	// session ends at its next heartbeat after that).
	NotAfter() time.Time
	Hello() *protocol.Hello
	// Renewed moves every session of the agent process to the
	// certificate with serial, valid until notAfter, issued by CA root
	// root.
	Renewed(serial string, notAfter time.Time, root string)
}

// Serve answers one enrolment request on a TLS connection that
// negotiated ALPNEnroll, then closes it.
func (e *Enrol) Serve(ctx context.Context, tc *tls.Conn) {
	defer tc.Close()
	remote := tc.RemoteAddr().String()
	tc.SetDeadline(time.Now().Add(e.cfg.HandshakeTimeout))
	m, err := protocol.ReadMessage(bufio.NewReader(tc))
	if err != nil {
		e.logRefusal(throttle.Source(remote), "enrolment: read request", "remote", remote, "err", err)
		return
	}
	req, ok := m.(*protocol.EnrollRequest)
	if !ok {
		protocol.WriteMessage(tc, protocol.RejectFor(protocol.Errorf(protocol.CodeBadRequest, "expected an enrolment request")))
		return
	}
	resp, tok, err := e.enroll(ctx, req, tc.RemoteAddr())
	// The store may have taken the handshake's time (enroll bounds it by
	// that): the answer gets time of its own, so that an agent whose
	// token was used gets its certificate.
	tc.SetWriteDeadline(time.Now().Add(e.cfg.HandshakeTimeout))
	if reason, counts, ok := unauthenticatedEnrolment(err); ok {
		var summed bool
		if summed, err = e.refusedEnrolment(remote, tok.Tenant, req, reason, counts, err); summed {
			protocol.WriteMessage(tc, protocol.RejectFor(err))
			return
		}
	}
	rec := audit.Record{Kind: audit.Enrol, Outcome: audit.OutcomeOK, Tenant: tok.Tenant, Actor: "agent",
		Detail: map[string]any{"remote": remote, "hostname": truncate(req.Hostname, 255), "os": truncate(req.OS, 32), "arch": truncate(req.Arch, 32), "agent_version": truncate(req.AgentVersion, 64)}}
	if tok.ID != "" {
		rec.Detail["token"] = tok.ID
	}
	if err != nil {
		e.cfg.Logger.Warn("enrolment refused", "remote", remote, "hostname", req.Hostname, "err", err)
		rec.Outcome, rec.Detail["error"] = protocol.CodeOf(err).String(), err.Error()
		// A refusal is queued, not waited for: nothing was done, and a
		// stalled store would otherwise hold the answer.
		e.cfg.Audit.Record(rec)
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
	if err := pinnedRootUsable(authority, protocol.FormatFingerprint(tok.CAFingerprint)); err != nil {
		return nil, store.Token{}, err
	}
	csr, err := ca.CheckCSR(req.CSR)
	if err != nil {
		return nil, store.Token{}, err
	}
	now := e.cfg.Now()
	// The store's part — the count of the tenant's agents against its
	// limit, the token's use and the agent's record, in one transaction —
	// waits no longer than the handshake's time: a store that does not
	// answer has the agent refused as unavailable with nothing spent,
	// instead of holding the connection (and its handshake slot) for as
	// long as it stalls.
	sctx, cancel := context.WithTimeout(ctx, e.cfg.HandshakeTimeout)
	defer cancel()
	maxAgents := 0
	check := func(tenant string) (int, error) {
		var err error
		maxAgents, err = e.enrolmentLimits(tenant, remote)
		return maxAgents, err
	}
	var (
		id   identity.Agent
		cert *x509.Certificate
	)
	// An agent that trusts the whole bundle gets its certificate from the
	// newest root; an older one only trusts the root it found in the
	// relay's TLS chain (the serving root), and moves at its first renewal.
	root := authority.Serving()
	if slices.Contains(req.Capabilities, protocol.CapRootBundle) {
		root = authority.Signer()
	}
	register := func(t store.Token) (store.Agent, error) {
		// The fingerprint in the token string is the holder's to edit
		// (the secret does not cover it): the root the token was made
		// for is the one its record names. A token whose root was
		// retired enrols no more, whatever root its string names.
		if t.CARoot != "" {
			if err := pinnedRootUsable(authority, t.CARoot); err != nil {
				return store.Agent{}, err
			}
		}
		id = identity.Agent{TrustDomain: authority.TrustDomain(), Tenant: t.Tenant, ID: credential.NewID()}
		var err error
		if cert, err = authority.SignAgent(root, csr, id, e.cfg.CertLifetime, now); err != nil {
			return store.Agent{}, protocol.Errorf(protocol.CodeInternal, "%v", err)
		}
		return store.Agent{
			ID: id.ID, Tenant: id.Tenant, Hostname: truncate(req.Hostname, 255), CreatedAt: now,
			CertSerial: cert.SerialNumber.Text(16), CertNotAfter: cert.NotAfter, CertRoot: root.ID(), CertIssuedAt: now,
		}, nil
	}
	t, err := e.cfg.Store.EnrolAgent(sctx, tok.IDString(), tok.SecretMatches, now, check, register)
	var pe *protocol.Error
	switch {
	case err != nil && sctx.Err() != nil && ctx.Err() == nil:
		return nil, t, protocol.Errorf(protocol.CodeUnavailable, "enrolment: this relay's store did not answer within the handshake's %v; the join token was not used: try again, or another relay", e.cfg.HandshakeTimeout)
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrTokenSecret):
		return nil, store.Token{}, protocol.Errorf(protocol.CodeInvalidToken, "join token is not known to this relay: it was revoked or mistyped, or is for another relay")
	case errors.Is(err, store.ErrTokenExpired):
		return nil, t, protocol.Errorf(protocol.CodeTokenExpired, "join token %s expired: ask the operator for a new one", tok.IDString())
	case errors.Is(err, store.ErrTokenUsedUp):
		return nil, t, protocol.Errorf(protocol.CodeTokenUsedUp, "join token %s has been used up: ask the operator for a new one", tok.IDString())
	case errors.Is(err, store.ErrAgentLimit):
		return nil, t, protocol.Errorf(protocol.CodeLimitExceeded, "tenant %q already has %d agents enrolled, its limit: revoke one or raise the limit", t.Tenant, maxAgents)
	case errors.As(err, &pe):
		return nil, t, err
	case err != nil:
		return nil, t, protocol.Errorf(protocol.CodeInternal, "use join token and register agent: %v", err)
	}
	var chain bytes.Buffer
	pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	return &protocol.EnrollResponse{
		AgentID:        id.ID,
		Tenant:         id.Tenant,
		TrustDomain:    id.TrustDomain,
		Certificate:    chain.String(),
		CACertificates: string(authority.BundlePEM()),
		CAEndorsements: string(authority.EndorsementsPEM()),
	}, t, nil
}

// pinnedRootUsable refuses a join token that pins CA root id (printable
// fingerprint) unless authority still trusts that root: one of another
// CA, or one retired, enrols no more agents.
func pinnedRootUsable(authority *ca.CA, id string) error {
	switch pinned := authority.Root(id); {
	case pinned == nil:
		return protocol.Errorf(protocol.CodeInvalidToken, "join token was issued for another relay CA")
	case !pinned.RetiredAt.IsZero():
		return protocol.Errorf(protocol.CodeInvalidToken, "join token pins CA root %d, retired at %s: ask the operator for a new token",
			pinned.Generation, pinned.RetiredAt.UTC().Format(time.RFC3339))
	}
	return nil
}

// enrolmentLimits checks tenant's limits for a new agent enrolling from
// remote: its network. It returns the most agents the tenant may have
// enrolled and not revoked (0: no limit), which the store counts in the
// enrolment's transaction (store.EnrolAgent), so that enrolments at the
// same moment cannot both take the last place.
func (e *Enrol) enrolmentLimits(tenant string, remote net.Addr) (int, error) {
	l := e.cfg.Policy.LimitsOf(tenant)
	if l == nil {
		return 0, nil
	}
	if !l.Allows(remote) {
		return 0, protocol.Errorf(protocol.CodeNotAllowed, "enrolment from %s, outside the networks tenant %q allows for its agents", remote, tenant)
	}
	return l.MaxAgents, nil
}

// refusedEnrolment counts an enrolment refused before a token was
// accepted, or for a spent token (unauthenticatedEnrolment), against its
// source and the token id it claims, and returns whether it was summed
// and the refusal to answer (err, or rate_limited): a source's first
// refusals (as many as its failures may be) are left to be audited one by
// one, with why; the rest, and every rate_limited one, are logged at debug
// level and summed in auth.refused records (limits.go), in the trail of
// tenant (the spent token's; "" when no token was accepted).
func (e *Enrol) refusedEnrolment(remote, tenant string, req *protocol.EnrollRequest, reason string, counts bool, err error) (bool, error) {
	src, id := throttle.Source(remote), ""
	if tok, perr := protocol.ParseJoinToken(req.Token); perr == nil {
		id = tok.IDString()
	}
	reason, err = e.limits.refusedEnrolment(src, id, reason, counts, err)
	if !errors.Is(err, protocol.ErrRateLimited) && e.limits.logs.Take(src) == 0 {
		e.limits.tally.Count(doorEnrol, reason)
		return false, err
	}
	e.cfg.Logger.Debug("enrolment refused", "remote", remote, "hostname", protocol.Clip(req.Hostname, 255), "token", id, "err", err)
	e.limits.tally.AddFor(tenant, doorEnrol, src, reason, id)
	return true, err
}

// logRefusal logs a refusal at warning level for the first refusals of
// key (a source or an agent) and then one every few seconds, at debug
// level for the rest: a flood does not fill the log.
func (e *Enrol) logRefusal(key, msg string, args ...any) {
	if e.limits.logs.Take(key) == 0 {
		e.cfg.Logger.Warn(msg, args...)
		return
	}
	e.cfg.Logger.Debug(msg, args...)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// Renew answers an agent's RenewRequest on its control stream: a new
// certificate for the session's own identity, to the fresh key in the CSR,
// if the session stands on the agent's newest certificate, which has not
// expired, and the renewal is due or within the agent's burst (limits.go).
//
// Its store calls share HandshakeTimeout: a store that does not answer
// has the renewal refused as unavailable, saying so (the agent tries
// again later), rather than holding the caller for as long as the store
// stalls. Once the new certificate is recorded the deadline no longer
// matters: it is answered with whatever time the audit write takes (its
// own bound).
func (e *Enrol) Renew(ctx context.Context, ac Agent, req *protocol.RenewRequest) *protocol.RenewResponse {
	id, session := ac.Identity(), ac.CertSerial()
	sctx, cancel := ctx, context.CancelFunc(func() {})
	if e.cfg.HandshakeTimeout > 0 {
		sctx, cancel = context.WithTimeout(ctx, e.cfg.HandshakeTimeout)
	}
	rn, err := e.renewCert(sctx, ac, req)
	cancel()
	rec := audit.Record{Kind: audit.Renew, Outcome: audit.OutcomeOK, Tenant: id.Tenant, Agent: id.ID, Actor: "agent",
		Detail: map[string]any{"session": ac.SessionID()}}
	var rr *renewRefusal
	if errors.As(err, &rr) {
		key := agentKey(id.Tenant, id.ID)
		if e.limits.logs.Take(key) == 0 {
			ac.Logger().Warn("certificate renewal refused", "err", err)
		} else {
			ac.Logger().Debug("certificate renewal refused", "err", err)
		}
		e.limits.renews.Add(doorRenew, key, rr.reason, session)
		rep := protocol.ReplyFor(err)
		return &protocol.RenewResponse{Code: rep.Code.String(), Message: rep.Message}
	}
	if err != nil {
		ac.Logger().Warn("certificate renewal refused", "err", err)
		rec.Outcome = protocol.CodeOf(err).String()
		rec.Detail["error"] = err.Error()
		e.cfg.Audit.Record(rec) // a refusal: queued, as at enrolment
		rep := protocol.ReplyFor(err)
		return &protocol.RenewResponse{Code: rep.Code.String(), Message: rep.Message}
	}
	// The agent's sessions now stand on the new certificate: it proved it
	// holds the new key (the CSR's signature) over a session the old one
	// authenticated. Its other sessions (it keeps two) are the same agent
	// process and move with it, so none is cut when the old one expires.
	serial, notAfter, root := rn.cert.SerialNumber.Text(16), rn.cert.NotAfter, rn.root
	ac.Renewed(serial, notAfter, root.ID())
	rec.Detail["not_after"] = notAfter
	rec.Detail["ca_root"] = root.ID()
	rec.Detail["cert_serial"] = serial
	rec.Detail["replaced_serial"] = rn.replaced
	e.cfg.Audit.Add(rec)
	ac.Logger().Info("certificate renewed", "not_after", notAfter.Format(time.RFC3339), "ca_root", root.ID())
	return rn.resp
}

// renewCert issues the new certificate from the CA's signing root (the new
// root during a rotation) and answers with every active root, so that the
// agent trusts the relay's server certificate before and after the old
// root is retired.
func (e *Enrol) renewCert(ctx context.Context, ac Agent, req *protocol.RenewRequest) (*renewal, error) {
	id := ac.Identity()
	// A session outlives its certificate until its next heartbeat: the
	// certificate that authenticated it no longer vouches for the agent,
	// which is to be enrolled again, as at the hello.
	if na := ac.NotAfter(); e.cfg.Now().After(na) {
		return nil, refuseRenewal(reasonExpired, protocol.Errorf(protocol.CodeCertExpired, "the certificate of this session expired at %s: enrol the agent again with a new join token",
			na.UTC().Format(time.RFC3339)))
	}
	rec, err := e.cfg.Store.Agent(ctx, id.ID)
	switch {
	case errors.Is(err, store.ErrNotFound) || (err == nil && rec.Tenant != id.Tenant):
		return nil, protocol.Errorf(protocol.CodeUnknownAgent, "agent %s is not registered with this relay", id.ID)
	case err != nil:
		return nil, e.storeFailed(ctx, "look up agent", err)
	case !rec.RevokedAt.IsZero():
		return nil, policy.RevokedError(rec)
	}
	// A session whose certificate's root was retired (with --force, while
	// the agent was still on it) is closed by the retirement, or by its
	// admission if it was admitted meanwhile; until then it renews
	// nothing: a certificate from the new root would carry it past the
	// retirement that was to end it. The CA is read from its storage
	// here, not taken as the change feed last applied it, which may be a
	// poll behind a retirement.
	authority, err := e.rootActive(ctx, ac)
	if err != nil {
		return nil, err
	}
	now, serial, bootID := e.cfg.Now(), ac.CertSerial(), ac.Hello().BootID
	// replaced is the certificate the agent process holds, which the new
	// one replaces: the session's, unless the process renewed since it
	// was admitted.
	replaced := serial
	switch policy.StandingOf(rec, serial, now) {
	case policy.CertSuperseded:
		return nil, refuseRenewal(reasonSuperseded, policy.SupersededError(rec, serial))
	case policy.CertReplaced:
		switch {
		case !ac.ConnectedAt().Before(rec.CertIssuedAt):
			// Admitted on the replaced certificate during the overlap:
			// the agent stopped before installing the new one.
		case bootID != "" && bootID == rec.CertBootID:
			// Admitted before the renewal, by the process that renewed
			// over another relay (this one did not move the session
			// along): it holds the newest.
			replaced = rec.CertSerial
		default:
			// Admitted before the renewal, by another process holding
			// the same key pair, which the renewal did not take along.
			return nil, refuseRenewal(reasonSuperseded, policy.SupersededError(rec, serial))
		}
	}
	if !renewDue(rec, now) {
		if w := e.limits.renewals.Take(id.ID); w > 0 {
			return nil, refuseRenewal(throttle.ReasonThrottled, protocol.Errorf(protocol.CodeRateLimited,
				"agent %s renewed its certificate too often lately, and its newest one is not due for renewal before %s: try again in %s",
				id.ID, dueAt(rec).UTC().Format(time.RFC3339), max(w.Round(time.Second), time.Second)))
		}
	}
	csr, err := ca.CheckCSR(req.CSR)
	if err != nil {
		// Summed per agent, as the other refusals the agent alone
		// causes: a due renewal spends no burst, and a refused one
		// leaves the next due too, so one agent could otherwise write
		// an audit record for each request it sends.
		return nil, refuseRenewal(reasonBadRequest, err)
	}
	root := authority.Signer()
	cert, err := authority.SignAgent(root, csr, id, e.cfg.CertLifetime, now)
	if err != nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	// The replaced certificate stays accepted during the overlap, in case
	// the agent stops before installing the new one.
	err = e.cfg.Store.RenewAgentCert(ctx, id.ID, rec.CertSerial,
		store.AgentCert{Serial: cert.SerialNumber.Text(16), NotAfter: cert.NotAfter, Root: root.ID(), IssuedAt: now, BootID: bootID}, replaced, now.Add(e.cfg.CertOverlap))
	switch {
	case errors.Is(err, store.ErrCertChanged):
		return nil, protocol.Errorf(protocol.CodeUnavailable, "another renewal of agent %s was recorded meanwhile: try again", id.ID)
	case err != nil:
		// Refused: the agent keeps the certificate it holds, and asks
		// again. A deadline that passed while the store waited on the
		// update (a lock, a hung connection) rolled it back; only one
		// that passed while the commit was on its way can leave the new
		// certificate recorded and never sent. The one the agent holds
		// is then the replaced one, still accepted for CertOverlap, and
		// the agent process's next renewal (CertReplaced, same boot id)
		// replaces the unsent one with one it gets.
		return nil, e.storeFailed(ctx, "record certificate", err)
	}
	// A forced retirement committed while the certificate was signed and
	// recorded is not outrun either: the certificate is not handed out.
	// The agent keeps the one from the retired root, which the retirement
	// ends; the record of the unsent one is never presented (as when a
	// commit's answer is lost above).
	if _, err := e.rootActive(ctx, ac); err != nil {
		return nil, err
	}
	var chain bytes.Buffer
	pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	return &renewal{resp: &protocol.RenewResponse{Certificate: chain.String(), CACertificates: string(authority.BundlePEM()),
		CAEndorsements: string(authority.EndorsementsPEM())}, cert: cert, root: root, replaced: replaced}, nil
}

// rootActive reads the CA from its storage and returns it when the root of
// ac's certificate is one of its active roots; otherwise it refuses the
// renewal, telling the agent to enrol again.
func (e *Enrol) rootActive(ctx context.Context, ac Agent) (*ca.CA, error) {
	if _, _, err := e.cfg.Authority.Reload(ctx); err != nil {
		return nil, e.storeFailed(ctx, "read the CA's roots", err)
	}
	authority := e.cfg.Authority.CA()
	root := authority.Root(ac.RootID())
	switch {
	case root == nil:
		return nil, protocol.Errorf(protocol.CodeUnauthenticated, "this session's certificate does not come from a CA root this relay trusts: enrol the agent again with a new join token")
	case !root.RetiredAt.IsZero():
		return nil, protocol.Errorf(protocol.CodeUnauthenticated, "this session's certificate comes from CA root %d (%s), retired at %s: enrol the agent again with a new join token",
			root.Generation, root.ID(), root.RetiredAt.UTC().Format(time.RFC3339))
	}
	return authority, nil
}

// storeFailed is the refusal of a renewal whose store call for what failed
// with err under ctx: unavailable when the store did not answer within
// HandshakeTimeout (policy.StoreStalled), internal otherwise.
func (e *Enrol) storeFailed(ctx context.Context, what string, err error) error {
	if stalled := policy.StoreStalled(ctx, what, e.cfg.HandshakeTimeout, err); stalled != nil {
		return stalled
	}
	return protocol.Errorf(protocol.CodeInternal, "%s: %v", what, err)
}

// renewal is a certificate issued by renewal, and the one it replaced.
type renewal struct {
	resp     *protocol.RenewResponse
	cert     *x509.Certificate
	root     *ca.Root
	replaced string
}

// renewDue reports whether agent a's newest certificate is due for
// renewal at now: past renewDueFraction of its life, or not on record.
func renewDue(a store.Agent, now time.Time) bool {
	return a.CertIssuedAt.IsZero() || !now.Before(dueAt(a))
}

// dueAt is when agent a's newest certificate is due for renewal.
func dueAt(a store.Agent) time.Time {
	return a.CertIssuedAt.Add(time.Duration(float64(a.CertNotAfter.Sub(a.CertIssuedAt)) * renewDueFraction))
}
