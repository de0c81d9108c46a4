package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
)

// renewTimeout bounds one renewal round trip on the control stream.
const renewTimeout = 30 * time.Second

// renewAt is when a certificate obtained (or loaded) at got should be
// renewed: once two thirds of its life from then have passed. Counting
// from got rather than NotBefore matters because relays backdate
// NotBefore a few minutes for clock skew, which is a large part of a short
// certificate's life.
func renewAt(c *x509.Certificate, got time.Time) time.Time {
	from := got
	if c.NotBefore.After(from) {
		from = c.NotBefore
	}
	return from.Add(c.NotAfter.Sub(from) * 2 / 3)
}

// renewLoop renews the agent's certificate over a live control stream when
// two thirds of its life have passed, or earlier when a relay asks
// (RenewNow, during a CA rotation), with a fresh key each time, until ctx
// is done. Failures are retried with a growing delay, capped so that
// several attempts fit in the time left.
func (a *Agent) renewLoop(ctx context.Context) {
	failures := 0
	for {
		leaf := a.cert.Load().Leaf
		wait := time.Until(renewAt(leaf, time.Unix(0, a.certAt.Load())))
		if failures > 0 {
			left := time.Until(leaf.NotAfter)
			wait = min(a.cfg.Reconnect.Initial<<min(failures, 10), max(left/10, time.Second), 5*time.Minute)
		}
		t := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case req := <-a.renewNow:
			t.Stop()
			if a.certFromRoot(req.root) {
				continue
			}
			// Spread a fleet's renewals over the window the relay chose.
			if !sleep(ctx, mrand.N(req.spread+1)) {
				return
			}
			if a.certFromRoot(req.root) {
				continue
			}
			a.log.Info("renewing the certificate now, as the relay asked (its CA has a new root)", "ca_root", req.root)
		}
		err := a.renewOnce(ctx)
		if err == nil {
			failures = 0
			continue
		}
		if ctx.Err() != nil {
			return
		}
		failures++
		left := time.Until(leaf.NotAfter)
		level := a.log.Warn
		if errors.Is(err, protocol.ErrRevoked) || left < time.Hour {
			level = a.log.Error
		}
		level("certificate renewal failed; will retry", "err", err, "cert_not_after", leaf.NotAfter.Format(time.RFC3339), "time_left", left.Round(time.Second))
	}
}

// renewRequest is a relay's request for an early renewal.
type renewRequest struct {
	root   string // printable fingerprint of the root to move to
	spread time.Duration
}

// maxRenewSpread bounds the wait a relay may ask for before an early
// renewal.
const maxRenewSpread = 10 * time.Minute

// requestRenewal queues an early renewal the relay asked for; one queued
// request is enough (renewLoop checks the root again before renewing).
func (a *Agent) requestRenewal(m *protocol.RenewNow) {
	spread := min(max(time.Duration(m.SpreadMillis)*time.Millisecond, 0), maxRenewSpread)
	select {
	case a.renewNow <- renewRequest{root: m.Root, spread: spread}:
	default:
	}
}

// certFromRoot reports whether the agent's certificate was issued by the
// trusted root whose printable fingerprint is root.
func (a *Agent) certFromRoot(root string) bool {
	if root == "" {
		return false
	}
	leaf := a.cert.Load().Leaf
	for _, c := range *a.rootList.Load() {
		if protocol.FormatFingerprint(protocol.Fingerprint(c.Raw)) == root {
			return leaf.CheckSignatureFrom(c) == nil
		}
	}
	return false
}

// renewOnce asks a relay for a new certificate for a new key and installs
// both: on disk first, then for new connections. Sessions already up keep
// running; the relay ties them to the new certificate.
func (a *Agent) renewOnce(ctx context.Context) error {
	s := a.renewableSession()
	if s == nil {
		return errors.New("no relay connection that can renew certificates")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: a.state.AgentID}}, key)
	if err != nil {
		return fmt.Errorf("create certificate request: %w", err)
	}
	resp, err := s.renew(ctx, csr)
	if err != nil {
		return err
	}
	cert, rootList, caPEM, err := a.checkRenewal(resp, key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := a.state.replaceKeyPair(pemBlock("PRIVATE KEY", kder), pemBlock("CERTIFICATE", cert.Raw), caPEM); err != nil {
		return fmt.Errorf("save renewed certificate: %w", err)
	}
	if rootList != nil {
		roots := x509.NewCertPool()
		for _, c := range rootList {
			roots.AddCert(c)
		}
		a.rootList.Store(&rootList)
		a.roots.Store(roots)
	}
	a.cert.Store(&tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert})
	a.certAt.Store(time.Now().UnixNano())
	a.rep.change()
	a.log.Info("certificate renewed", "relay", s.relay, "not_after", cert.NotAfter.Format(time.RFC3339), "serial", cert.SerialNumber.Text(16),
		"issuer", cert.Issuer.CommonName, "trusted_roots", len(*a.rootList.Load()))
	return nil
}

// checkRenewal verifies the relay's answer before anything is replaced: the
// certificate is for the new key, names this same agent and tenant, and
// chains to the roots the agent trusts or to roots the relay sent in the
// same answer, over a session those trusted roots authenticated: that is
// how a CA rotation reaches agents. A root sent that the agent does not
// trust yet must come with an endorsement from one it trusts
// (checkEndorsed), and the roots sent must keep at least one the agent
// trusts now, so that an answer cannot cut the agent off from every relay
// it knows. It returns the roots to trust from now on (nil to
// keep the current ones) and their PEM for ca.crt.
func (a *Agent) checkRenewal(resp *protocol.RenewResponse, key *ecdsa.PrivateKey) (*x509.Certificate, []*x509.Certificate, []byte, error) {
	block, _ := pem.Decode([]byte(resp.Certificate))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, nil, nil, errors.New("renewal: relay sent no certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("renewal: parse certificate: %w", err)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return nil, nil, nil, errors.New("renewal: certificate is not for the new key")
	}
	id, err := identity.AgentFromCertificate(cert, a.state.TrustDomain)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("renewal: %w", err)
	}
	if id.ID != a.state.AgentID || id.Tenant != a.state.Tenant {
		return nil, nil, nil, fmt.Errorf("renewal: certificate names %s, not this agent", id)
	}
	roots := a.roots.Load()
	var sent []*x509.Certificate
	var caPEM []byte
	if resp.CACertificates != "" {
		if sent, roots, err = parseRoots([]byte(resp.CACertificates), a.state.TrustDomain); err != nil {
			return nil, nil, nil, fmt.Errorf("renewal: relay sent unusable CA certificates: %w", err)
		}
		current := *a.rootList.Load()
		if !slices.ContainsFunc(sent, func(c *x509.Certificate) bool { return slices.ContainsFunc(current, c.Equal) }) {
			return nil, nil, nil, errors.New("renewal: the relay sent CA roots that share none with the roots this agent trusts")
		}
		if err := checkEndorsed(sent, current, []byte(resp.CAEndorsements), time.Now()); err != nil {
			err = fmt.Errorf("%w: refused; the agent keeps the roots and certificate it has", err)
			why := clipText(err.Error())
			a.rootRefused.Store(&why)
			return nil, nil, nil, fmt.Errorf("renewal: %w", err)
		}
		caPEM = rootsPEM(sent)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, nil, nil, fmt.Errorf("renewal: certificate does not chain to the relay's CA: %w", err)
	}
	a.rootRefused.Store(nil)
	return cert, sent, caPEM, nil
}

// renewableSession returns a live session whose relay renews certificates.
func (a *Agent) renewableSession() *session {
	a.liveMu.Lock()
	defer a.liveMu.Unlock()
	for s := range a.live {
		if slices.Contains(s.welcome.Capabilities, protocol.CapRenew) {
			select {
			case <-s.t.Done():
				continue
			default:
			}
			return s
		}
	}
	return nil
}

// renew sends a RenewRequest on the control stream and waits for the
// answer, which the control reader hands over.
func (s *session) renew(ctx context.Context, csr []byte) (*protocol.RenewResponse, error) {
	s.renewMu.Lock() // one renewal at a time on a session
	defer s.renewMu.Unlock()
	select { // drop an answer that came after an earlier request gave up
	case <-s.renewed:
	default:
	}
	if err := s.send(&protocol.RenewRequest{CSR: csr}); err != nil {
		return nil, fmt.Errorf("send renewal request: %w", s.explain(err))
	}
	t := time.NewTimer(renewTimeout)
	defer t.Stop()
	select {
	case resp := <-s.renewed:
		if err := resp.Err(); err != nil {
			return nil, fmt.Errorf("relay refused to renew the certificate: %w", err)
		}
		return resp, nil
	case <-t.C:
		return nil, fmt.Errorf("relay did not answer a renewal request within %v", renewTimeout)
	case <-s.ctx.Done():
		return nil, errors.New("session closed during renewal")
	case <-s.readDone:
		return nil, errors.New("session closed during renewal")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
