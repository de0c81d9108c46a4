package relay

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/policy"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/store"
)

// renew answers an agent's RenewRequest on its control stream: a new
// certificate for the session's own identity, to the fresh key in the CSR.
func (r *Relay) renew(ctx context.Context, ac *agentConn, req *protocol.RenewRequest) *protocol.RenewResponse {
	resp, notAfter, root, err := r.renewCert(ctx, ac.id, req)
	rec := audit.Record{Kind: audit.Renew, Outcome: audit.OutcomeOK, Tenant: ac.id.Tenant, Agent: ac.id.ID, Actor: "agent",
		Detail: map[string]any{"session": ac.sessionID}}
	if err != nil {
		ac.log.Warn("certificate renewal refused", "err", err)
		rec.Outcome = protocol.CodeOf(err).String()
		rec.Detail["error"] = err.Error()
		r.audit.Add(rec)
		rep := protocol.ReplyFor(err)
		return &protocol.RenewResponse{Code: rep.Code.String(), Message: rep.Message}
	}
	// The agent's sessions now stand on the new certificate: it proved it
	// holds the new key (the CSR's signature) over a session the old one
	// authenticated. Its other sessions (it keeps two) are the same agent
	// process and move with it, so none is cut when the old one expires.
	r.reg.renewed(ac.id, notAfter, root.ID())
	rec.Detail["not_after"] = notAfter
	rec.Detail["ca_root"] = root.ID()
	r.audit.Add(rec)
	ac.log.Info("certificate renewed", "not_after", notAfter.Format(time.RFC3339), "ca_root", root.ID())
	return resp
}

// renewCert issues the new certificate from the CA's signing root (the new
// root during a rotation) and answers with every active root, so that the
// agent trusts the relay's server certificate before and after the old
// root is retired.
func (r *Relay) renewCert(ctx context.Context, id identity.Agent, req *protocol.RenewRequest) (*protocol.RenewResponse, time.Time, *ca.Root, error) {
	rec, err := r.st.store.Agent(ctx, id.ID)
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
	now := r.cfg.Now()
	authority := r.st.CA()
	root := authority.Signer()
	cert, err := authority.SignAgent(root, csr, id, r.cfg.AgentCertLifetime, now)
	if err != nil {
		return nil, time.Time{}, nil, protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	if err := r.st.store.SetAgentCert(ctx, id.ID, cert.SerialNumber.Text(16), cert.NotAfter, root.ID()); err != nil {
		return nil, time.Time{}, nil, protocol.Errorf(protocol.CodeInternal, "record certificate: %v", err)
	}
	var chain bytes.Buffer
	pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	return &protocol.RenewResponse{Certificate: chain.String(), CACertificates: string(authority.BundlePEM())}, cert.NotAfter, root, nil
}
