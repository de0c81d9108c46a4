package trust

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/throttle"
)

// Handshakes refused for their client certificate — at the agent port,
// the CONNECT door over TLS and the relay-to-relay listener — are audited
// as the front doors' refusals are (frontdoor/authlimit.go): a source's
// first refusals (throttle.Source of the connection's address), as many
// as 10 and then one every 5 s, one by one with why and the certificate
// presented; the rest summed per door, source and reason in auth.refused
// records (throttle.Tally: one at the first refusal of each interval, one
// with the rest of the interval's count), written by the audit log every
// minute and as it stops (audit.Log.Every). A peer that completes
// handshakes with a certificate of its own making as fast as it can thus
// writes a bounded number of records, and every string its certificate
// controls is clipped to maxCertText in them, and in the error the
// listener logs.

// Doors of refused client certificates, as audited.
const (
	doorAgent      = "agent"
	doorConnectTLS = "connect-tls"
	doorPeer       = "peer"
)

// Reasons of refused client certificates, as audited and summed.
const (
	reasonNoCertificate      = "no_certificate"
	reasonUnknownAuthority   = "unknown_authority"   // not from the CA (self-signed, another CA)
	reasonRetiredRoot        = "retired_root"        // from a root of the CA retired since
	reasonExpired            = "expired"             // expired (or not yet valid)
	reasonInvalidCertificate = "invalid_certificate" // any other fault of the chain (usage, constraints)
	reasonBadIdentity        = "bad_identity"        // a good chain naming something else than the door takes
)

// Defaults of the audit of refused handshakes (as at the front doors).
const (
	refusalInterval = time.Minute
	refusalBurst    = 10
	refusalEvery    = 5 * time.Second
)

// maxCertText bounds each string from a peer's certificate (its issuer,
// serial and URI, and the verification error, which may quote them) in
// an audit record or a log line. It holds every identity this relay
// issues in full: a SPIFFE ID of the longest trust domain (255), tenant
// and agent name (63 each) is 405 bytes.
const maxCertText = 512

// refusals audits refused client certificates.
type refusals struct {
	audit *audit.Log
	now   func() time.Time
	// oneByOne is the refusals of each source audited one by one.
	oneByOne *throttle.Limiter
	tally    *throttle.Tally
}

// newRefusals returns the audit of refused client certificates into log
// (nil: none), whose sums log writes every refusalInterval while it runs.
func newRefusals(log *audit.Log, now func() time.Time) *refusals {
	r := &refusals{audit: log, now: now,
		oneByOne: throttle.New(throttle.Config{Burst: refusalBurst, Every: refusalEvery, Now: now})}
	r.tally = throttle.NewTally(throttle.TallyConfig{Record: r.recordSum, Now: now})
	if log != nil {
		log.Every(refusalInterval, r.flush)
	}
	return r
}

// flush writes the sums of the interval that ends now.
func (r *refusals) flush() {
	r.tally.Flush()
	r.oneByOne.Tidy()
}

// recordSum audits a summary of refusals.
func (r *refusals) recordSum(sm throttle.Summary) {
	r.audit.Record(audit.Record{At: r.now(), Kind: audit.AuthRefused, Outcome: protocol.CodeUnauthenticated.String(), Actor: "relay", Detail: sm.Detail()})
}

// refused audits the refusal, for err, of the client certificates certs
// that remote (nil if unknown) presented at door, and returns err with
// its text clipped, for the listener to log. rec is the record of the
// refusal when it is audited on its own; refused adds the door, remote
// address, reason, error and certificate to its detail.
func (r *refusals) refused(door string, remote net.Addr, certs []*x509.Certificate, err error, rec audit.Record) error {
	err = clipError(err)
	if r.audit == nil {
		return err
	}
	src, addr := "unknown", ""
	if remote != nil {
		addr = remote.String()
		src = throttle.Source(addr)
	}
	reason := refusalReason(certs, err)
	if r.oneByOne.Take(src) == 0 {
		if rec.Detail == nil {
			rec.Detail = map[string]any{}
		}
		rec.Detail["door"], rec.Detail["remote"], rec.Detail["reason"], rec.Detail["error"] = door, addr, reason, err.Error()
		rec.Detail = WithCertificate(rec.Detail, certs)
		rec.At = r.now()
		r.audit.Record(rec)
		return err
	}
	r.tally.Add(door, src, reason, certIdentity(certs))
	return err
}

// certIdentity is how a refused certificate is named in summed refusals:
// its first URI, or else its serial.
func certIdentity(certs []*x509.Certificate) string {
	if len(certs) == 0 {
		return ""
	}
	if leaf := certs[0]; len(leaf.URIs) > 0 {
		return protocol.Clip(leaf.URIs[0].String(), maxCertText)
	}
	return "serial " + protocol.Clip(certs[0].SerialNumber.Text(16), maxCertText)
}

// retiredRootError refuses a certificate issued by a root of the CA
// retired since.
type retiredRootError struct {
	msg string
	err error // the chain's verification error
}

func (e *retiredRootError) Error() string { return e.msg }
func (e *retiredRootError) Unwrap() error { return e.err }

// identityError refuses a certificate whose chain is good for the
// identity it names: another kind, another trust domain, or this relay's
// own.
type identityError struct{ error }

func (e identityError) Unwrap() error { return e.error }

// refusalReason is why certs were refused with err.
func refusalReason(certs []*x509.Certificate, err error) string {
	var (
		retired  *retiredRootError
		identity identityError
		unknown  x509.UnknownAuthorityError
		invalid  x509.CertificateInvalidError
	)
	switch {
	case len(certs) == 0:
		return reasonNoCertificate
	case errors.As(err, &retired):
		return reasonRetiredRoot
	case errors.As(err, &identity):
		return reasonBadIdentity
	case errors.As(err, &unknown):
		return reasonUnknownAuthority
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return reasonExpired
	}
	return reasonInvalidCertificate
}

// clippedError is an error whose text is clipped to maxCertText.
type clippedError struct {
	err  error
	text string
}

func (e *clippedError) Error() string { return e.text }
func (e *clippedError) Unwrap() error { return e.err }

// clipError returns err with its text clipped to maxCertText: a refusal's
// error may quote a peer's certificate.
func clipError(err error) error {
	if err == nil {
		return nil
	}
	if text := err.Error(); len(text) > maxCertText {
		return &clippedError{err: err, text: protocol.Clip(text, maxCertText)}
	}
	return err
}

// perConnection is the configuration of a listener that gives each
// connection one of its own, of(the connection's remote address), so
// that its VerifyConnection knows where a certificate came from. It is
// of(nil), with GetConfigForClient set.
func perConnection(of func(remote net.Addr) *tls.Config) *tls.Config {
	c := of(nil)
	c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		return of(remoteOf(hello)), nil
	}
	return c
}

// remoteOf is the remote address of the connection that sent hello, or
// nil.
func remoteOf(hello *tls.ClientHelloInfo) net.Addr {
	if hello == nil || hello.Conn == nil {
		return nil
	}
	return hello.Conn.RemoteAddr()
}
