package agent

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// Bounds on the endorsements a relay's answer may carry: one per root made
// by a rotation, and a relay sends at most two roots; the rest is slack.
const (
	maxEndorsements     = maxRoots
	maxEndorsementsSize = 32 << 10
)

// parseEndorsements reads the CA endorsements of a relay's answer (PEM
// certificates, protocol.RenewResponse.CAEndorsements): at most
// maxEndorsements of them in maxEndorsementsSize bytes, each a
// certificate. They come from the network: anything else is refused, not
// skipped.
func parseEndorsements(pemData []byte) ([]*x509.Certificate, error) {
	if len(pemData) > maxEndorsementsSize {
		return nil, fmt.Errorf("CA endorsements: %d bytes, more than %d", len(pemData), maxEndorsementsSize)
	}
	var out []*x509.Certificate
	for rest := pemData; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			if len(bytes.TrimSpace(rest)) != 0 {
				return nil, errors.New("CA endorsements: not PEM")
			}
			return out, nil
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("CA endorsements: unexpected PEM block %q", b.Type)
		}
		if len(out) == maxEndorsements {
			return nil, fmt.Errorf("CA endorsements: more than %d", maxEndorsements)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA endorsements: %w", err)
		}
		out = append(out, c)
	}
}

// endorses reports whether e, valid at now, is an endorsement of root by
// the root trusted: a certificate for root's subject and ECDSA public key
// issued by trusted (the relay's CA makes one at each rotation, with the
// old root's key, for the new root).
func endorses(trusted, root, e *x509.Certificate, now time.Time) bool {
	pub, ok := e.PublicKey.(*ecdsa.PublicKey)
	return ok && pub.Equal(root.PublicKey) && bytes.Equal(e.RawSubject, root.RawSubject) &&
		bytes.Equal(e.RawIssuer, trusted.RawSubject) && e.CheckSignatureFrom(trusted) == nil &&
		!now.Before(e.NotBefore) && !now.After(e.NotAfter)
}

// checkEndorsed checks that every root of sent that the agent does not
// trust yet (not in current) is endorsed by one it trusts, directly or
// through roots of sent endorsed before it (an agent that slept through
// two rotations, the root between them still sent), with the endorsements
// in pemData. A root nothing it trusts endorses could be anyone's: the
// relay's CA endorses each new root with the old root's key, and an answer
// with a root it did not make — from whoever holds one relay's certificate
// key, say — must not widen the agent's trust.
func checkEndorsed(sent, current []*x509.Certificate, pemData []byte, now time.Time) error {
	trusted := slices.Clone(current)
	var pending []*x509.Certificate
	for _, c := range sent {
		if !slices.ContainsFunc(current, c.Equal) {
			pending = append(pending, c)
		}
	}
	if len(pending) == 0 {
		return nil
	}
	endorsements, err := parseEndorsements(pemData)
	if err != nil {
		return fmt.Errorf("the relay sent unusable CA endorsements: %w", err)
	}
	for progress := true; progress && len(pending) > 0; {
		progress = false
		for i := 0; i < len(pending); i++ {
			r := pending[i]
			ok := slices.ContainsFunc(endorsements, func(e *x509.Certificate) bool {
				return slices.ContainsFunc(trusted, func(t *x509.Certificate) bool { return endorses(t, r, e, now) })
			})
			if ok {
				trusted = append(trusted, r)
				pending = slices.Delete(pending, i, i+1)
				i--
				progress = true
			}
		}
	}
	if len(pending) > 0 {
		r := pending[0]
		return fmt.Errorf("the relay sent CA root %q (%s), which no root this agent trusts endorses",
			r.Subject.CommonName, protocol.FormatFingerprint(protocol.Fingerprint(r.Raw)))
	}
	return nil
}
