package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"net"
	"slices"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/credential"
	"github.com/tetherhq/tether/relay/internal/store"
)

// serveEnroll answers one enrolment request on a TLS connection that
// negotiated ALPNEnroll, then closes it.
func (r *Relay) serveEnroll(ctx context.Context, tc *tls.Conn) {
	defer tc.Close()
	remote := tc.RemoteAddr().String()
	tc.SetDeadline(time.Now().Add(r.cfg.HandshakeTimeout))
	m, err := protocol.ReadMessage(bufio.NewReader(tc))
	if err != nil {
		r.log.Warn("enrolment: read request", "remote", remote, "err", err)
		return
	}
	req, ok := m.(*protocol.EnrollRequest)
	if !ok {
		protocol.WriteMessage(tc, protocol.RejectFor(protocol.Errorf(protocol.CodeBadRequest, "expected an enrolment request")))
		return
	}
	resp, tok, err := r.enroll(ctx, req, tc.RemoteAddr())
	rec := audit.Record{Kind: audit.Enrol, Outcome: audit.OutcomeOK, Tenant: tok.Tenant, Actor: "agent",
		Detail: map[string]any{"remote": remote, "hostname": truncate(req.Hostname, 255), "os": truncate(req.OS, 32), "arch": truncate(req.Arch, 32), "agent_version": truncate(req.AgentVersion, 64)}}
	if tok.ID != "" {
		rec.Detail["token"] = tok.ID
	}
	if err != nil {
		r.log.Warn("enrolment refused", "remote", remote, "hostname", req.Hostname, "err", err)
		rec.Outcome, rec.Detail["error"] = protocol.CodeOf(err).String(), err.Error()
		r.audit.Add(rec)
		protocol.WriteMessage(tc, protocol.RejectFor(err))
		return
	}
	rec.Agent = resp.AgentID
	r.audit.Add(rec)
	r.log.Info("agent enrolled", "remote", remote, "tenant", resp.Tenant, "agent", resp.AgentID, "hostname", req.Hostname)
	if err := protocol.WriteMessage(tc, resp); err != nil {
		r.log.Warn("enrolment: send response", "remote", remote, "err", err)
	}
}

// enroll checks a join token and a CSR and, if both are good, registers a
// new agent in the token's tenant and signs its certificate. The tenant is
// the token's: nothing the agent sends can choose it. It returns the token
// record as far as it was found (for the audit record).
func (r *Relay) enroll(ctx context.Context, req *protocol.EnrollRequest, remote net.Addr) (*protocol.EnrollResponse, store.Token, error) {
	tok, err := protocol.ParseJoinToken(req.Token)
	if err != nil {
		return nil, store.Token{}, err
	}
	authority := r.st.CA()
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
	now := r.cfg.Now()
	var t store.Token
	check := func(tenant string) error { return r.enrolmentLimits(ctx, tenant, remote) }
	t, err = r.st.store.ConsumeToken(ctx, tok.IDString(), tok.SecretMatches, now, check)
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
	cert, err := authority.SignAgent(root, csr, id, r.cfg.AgentCertLifetime, now)
	if err != nil {
		return nil, t, protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	hostname := req.Hostname
	if len(hostname) > 255 {
		hostname = hostname[:255]
	}
	if err := r.st.store.AddAgent(ctx, store.Agent{
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
func (r *Relay) enrolmentLimits(ctx context.Context, tenant string, remote net.Addr) error {
	l := r.pol.LimitsOf(tenant)
	if l == nil {
		return nil
	}
	if !l.Allows(remote) {
		return protocol.Errorf(protocol.CodeNotAllowed, "enrolment from %s, outside the networks tenant %q allows for its agents", remote, tenant)
	}
	if l.MaxAgents > 0 {
		n, err := r.st.store.CountAgents(ctx, tenant)
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
