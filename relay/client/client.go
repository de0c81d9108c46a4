// Package client is the Go API a SaaS backend uses to reach tenant services
// through a Tether relay:
//
//	tlsConf, err := client.RelayTLSConfig(caPEM) // from tether-relay ca export
//	d := &client.Dialer{Relay: "relay.internal:3129", TLSConfig: tlsConf, Backend: "billing", APIKey: key}
//	conn, err := d.DialContext(ctx, "tcp", "db.acme.tether:5432")
//
// DialContext has the signature of net.Dialer.DialContext, so it plugs into
// http.Transport.DialContext, pgx's DialFunc, and anything else that takes
// a dial function. Refusals come back as a *Refusal (with the relay's
// request id) wrapping a *protocol.Error, and match the sentinels
// re-exported here with errors.Is:
//
//	if errors.Is(err, client.ErrNoAgent) { … the tenant's agent is offline … }
//
// Whether the same dial may succeed later, with nobody changing anything:
// a refusal says so through its *Error's Temporary method (no_agent,
// timeout, target_unreachable, unavailable, limit_exceeded, rate_limited
// and internal are temporary; unauthenticated, not_allowed,
// unknown_tenant, unknown_service and bad_request are not), and a dial
// that reached no relay matches ErrRelayUnreachable. Neither has passed
// a byte to the service, so either may be retried:
//
//	var e *client.Error
//	retry := errors.Is(err, client.ErrRelayUnreachable) || errors.As(err, &e) && e.Temporary()
//
// The Dialer speaks HTTP CONNECT to the relay's front door: over TLS to
// its TLS door (--connect-tls-listen) with TLSConfig, in plain text to its
// CONNECT door otherwise, which listens on loopback unless told to. With
// several relays of a cluster (Relays), it moves on to the next when one
// cannot be reached, as a load balancer in front of them would:
//
//	d := &client.Dialer{Relays: []string{"relay-1:3129", "relay-2:3129", "relay-3:3129"}, TLSConfig: tlsConf, Backend: "billing", APIKey: key}
//
// Forward serves the same connections to programs that speak no proxy
// protocol (psql, pg_dump, JDBC drivers, …): it listens on a local port and
// tunnels every connection accepted there to one tenant service.
package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
)

// Sentinels for errors.Is on errors returned by DialContext.
var (
	ErrUnknownService    = protocol.ErrUnknownService
	ErrUnknownTenant     = protocol.ErrUnknownTenant
	ErrNotAllowed        = protocol.ErrNotAllowed
	ErrUnauthenticated   = protocol.ErrUnauthenticated
	ErrNoAgent           = protocol.ErrNoAgent
	ErrTargetUnreachable = protocol.ErrTargetUnreachable
	ErrTimeout           = protocol.ErrTimeout
	ErrBadRequest        = protocol.ErrBadRequest
	ErrUnavailable       = protocol.ErrUnavailable
	ErrLimitExceeded     = protocol.ErrLimitExceeded
	// ErrRateLimited: this address, or the backend name given, failed
	// authentication too often lately; the relay says when to try again
	// (Refusal.RetryAfter).
	ErrRateLimited = protocol.ErrRateLimited
)

// ErrRelayUnreachable matches (errors.Is) the error of a dial that got
// no answer from any relay: the TCP connection or the TLS handshake
// failed, or the relay closed the connection before it answered the
// request (a relay shutting down closes its doors first; so does one
// over its bound on unauthenticated connections from one address). The
// error also wraps the network error underneath. No byte of the
// connection reached a service: dialling again is safe. A refusal
// (*Refusal) never matches it.
var ErrRelayUnreachable = errors.New("tether: relay unreachable")

// Error says why a connection was refused: a code and a message.
// DialContext returns it wrapped in a *Refusal.
type Error = protocol.Error

// Dialer opens connections to tenant services through a relay. Its zero
// value is not usable: Relay (or Relays) and a credential are required.
type Dialer struct {
	// Relay is the address of the relay's CONNECT front door (host:port).
	Relay string
	// Relays, instead of Relay, are the CONNECT front doors of several
	// relays of a cluster, any of which reaches every tenant. Each dial
	// starts at one chosen at random and moves on to the next only when
	// that relay cannot be reached: the TCP connection or the TLS
	// handshake fails, or the relay closes the connection before it
	// answers the request (a relay shutting down closes its doors). An
	// answer is never retried elsewhere: a refusal, unavailable included,
	// is returned as it is. Set Relay or Relays, not both.
	Relays []string
	// Backend and APIKey are the backend credential created with
	// `tether-relay backend add`.
	Backend string
	APIKey  string
	// BearerToken, instead of an API key, returns a token (a JWT) from
	// the OIDC issuer the relay trusts, naming the backend; it is called
	// for every dial, so it may refresh an expiring token.
	BearerToken func(ctx context.Context) (string, error)
	// TLSConfig, when set, makes the Dialer speak TLS to the front door
	// (the relay's --connect-tls-listen). LoadCertificate builds one with
	// a backend client certificate, which then is the credential: leave
	// APIKey and BearerToken unset. RelayTLSConfig builds one without.
	// Without a ClientSessionCache of its own, the Dialer resumes TLS
	// sessions with each relay, apart for each client certificate (see
	// resuming).
	TLSConfig *tls.Config
	// Timeout bounds a dial when ctx has no deadline. Default 30s.
	Timeout time.Duration
	// NetDialer dials the relay; nil uses a net.Dialer with keep-alive.
	NetDialer *net.Dialer
}

// Dial is DialContext with a background context.
func (d *Dialer) Dial(network, addr string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, addr)
}

// DialContext connects to addr, which names a tenant service as
// "<service>.<tenant>.tether:<port>" (the port is ignored; the agent's
// allowlist holds the real address). network must be "tcp", "tcp4" or
// "tcp6". The returned connection supports CloseWrite for half-close.
//
// A refusal by the relay, or by the tenant's agent through it, is a
// *Refusal wrapping the *Error that says why.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, &net.OpError{Op: "dial", Net: network, Err: fmt.Errorf("tether: network %q not supported (use tcp)", network)}
	}
	if err := d.check(); err != nil {
		return nil, err
	}
	if _, hasDeadline := ctx.Deadline(); !hasDeadline {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.timeout())
		defer cancel()
	}
	relays := d.relays()
	first := rand.N(len(relays))
	var errs []error
	for i := range relays {
		relay := relays[(first+i)%len(relays)]
		c, err := d.dialVia(ctx, relay, addr)
		if err == nil {
			return c, nil
		}
		if len(relays) == 1 || !unreachable(err) || ctx.Err() != nil {
			return nil, err
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("tether: none of the %d relays could be reached: %w", len(relays), errors.Join(errs...))
}

// dialVia asks relay for a connection to addr.
func (d *Dialer) dialVia(ctx context.Context, relay, addr string) (*Conn, error) {
	conn, err := d.dialRelayAt(ctx, relay)
	if err != nil {
		return nil, err
	}
	return d.request(ctx, conn, addr)
}

// relays is Relays, or Relay alone.
func (d *Dialer) relays() []string {
	if len(d.Relays) > 0 {
		return d.Relays
	}
	return []string{d.Relay}
}

// unreachable reports whether err says the relay could not be reached
// or gave no answer, as opposed to an answer (a refusal, a reply that is
// not HTTP) or a local problem.
func unreachable(err error) bool {
	return errors.Is(err, ErrRelayUnreachable)
}

// noAnswer wraps err, from reaching a relay or exchanging the request
// with it, so that unreachable reports it when it is the connection
// failing: a network error, or the relay closing it.
func noAnswer(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &relayError{err}
	}
	return err
}

// tlsRefusal returns a *Refusal with code unauthenticated when err is a
// TLS alert the relay sent (crypto/tls reports one as a *net.OpError of
// Op "remote error"), else nil. The TLS door sends one when it refuses
// the client certificate: expired, issued by another CA, under a retired
// root, or not a backend's. Under TLS 1.3 the client learns of it only
// at its first read, after its side of the handshake is over, where it
// looked like the relay closing the connection before it answered. It is
// an answer, as a 407 is: every relay of a cluster would give the same
// (they share the CA), so it is neither tried on another relay nor
// retried (Forward).
func tlsRefusal(err error) error {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "remote error" {
		return nil
	}
	return &Refusal{Err: protocol.Errorf(protocol.CodeUnauthenticated,
		"the relay refused the TLS session (%v): it did not accept the client certificate (expired, issued by another CA, or not a backend's); its log and audit trail say why", op.Err)}
}

// relayError is a connection-level failure to reach a relay.
type relayError struct{ err error }

func (e *relayError) Error() string   { return e.err.Error() }
func (e *relayError) Unwrap() []error { return []error{e.err, ErrRelayUnreachable} }

// timeout is Timeout or its default.
func (d *Dialer) timeout() time.Duration {
	if d.Timeout > 0 {
		return d.Timeout
	}
	return 30 * time.Second
}

// dialRelay opens a connection to a relay's front door (one of Relays,
// from one chosen at random to the next that can be reached): TCP, and
// the TLS handshake when TLSConfig is set. Nothing is sent on it yet, so
// it can wait (briefly: relays close a connection that sends no request
// within their handshake timeout) until request uses it.
func (d *Dialer) dialRelay(ctx context.Context) (net.Conn, error) {
	relays := d.relays()
	first := rand.N(len(relays))
	var errs []error
	for i := range relays {
		conn, err := d.dialRelayAt(ctx, relays[(first+i)%len(relays)])
		if err == nil || len(relays) == 1 || !unreachable(err) || ctx.Err() != nil {
			return conn, err
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("tether: none of the %d relays could be reached: %w", len(relays), errors.Join(errs...))
}

// dialRelayAt is dialRelay to relay.
func (d *Dialer) dialRelayAt(ctx context.Context, relay string) (net.Conn, error) {
	nd := d.NetDialer
	if nd == nil {
		nd = &net.Dialer{KeepAlive: 30 * time.Second}
	}
	raw, err := nd.DialContext(ctx, "tcp", relay)
	if err != nil {
		return nil, noAnswer(fmt.Errorf("tether: connect to relay %s: %w", relay, err))
	}
	if d.TLSConfig == nil {
		return raw, nil
	}
	tc := tls.Client(raw, resuming(d.TLSConfig))
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		if r := tlsRefusal(err); r != nil {
			return nil, r
		}
		return nil, &relayError{fmt.Errorf("tether: TLS handshake with relay %s: %w", relay, err)}
	}
	return tc, nil
}

// request asks the relay, on conn (from dialRelay), for a connection to
// addr. It owns conn: on failure conn is closed.
func (d *Dialer) request(ctx context.Context, conn net.Conn, addr string) (*Conn, error) {
	// Cancelling ctx aborts the CONNECT exchange.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	auth, err := d.authorization(ctx)
	if err != nil {
		stop()
		conn.Close()
		return nil, err
	}
	c, err := d.connect(conn, addr, auth)
	if !stop() { // ctx ended during the exchange
		conn.Close()
		return nil, fmt.Errorf("tether: dial %s: %w", addr, ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return c, nil
}

// check makes sure the Dialer has a relay and exactly one credential.
func (d *Dialer) check() error {
	switch {
	case d.Relay == "" && len(d.Relays) == 0:
		return errors.New("tether: Dialer needs Relay (or Relays)")
	case d.Relay != "" && len(d.Relays) > 0:
		return errors.New("tether: Dialer has both Relay and Relays: set one")
	case slices.Contains(d.Relays, ""):
		return errors.New("tether: Dialer.Relays holds an empty address")
	}
	n := 0
	if d.APIKey != "" {
		n++
		if d.Backend == "" {
			return errors.New("tether: Dialer has an APIKey but no Backend name")
		}
	}
	if d.BearerToken != nil {
		n++
	}
	if d.TLSConfig != nil && (len(d.TLSConfig.Certificates) > 0 || d.TLSConfig.GetClientCertificate != nil) {
		n++
	}
	switch {
	case n == 0:
		return errors.New("tether: Dialer needs a credential: Backend and APIKey, BearerToken, or a client certificate in TLSConfig")
	case n > 1:
		return errors.New("tether: Dialer has more than one credential (API key, bearer token, client certificate): set one")
	}
	return nil
}

// authorization is the Proxy-Authorization header value, or "" when a
// client certificate is the credential.
func (d *Dialer) authorization(ctx context.Context) (string, error) {
	switch {
	case d.APIKey != "":
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(d.Backend+":"+d.APIKey)), nil
	case d.BearerToken != nil:
		tok, err := d.BearerToken(ctx)
		if err != nil {
			return "", fmt.Errorf("tether: get bearer token: %w", err)
		}
		if tok == "" || strings.ContainsAny(tok, "\r\n ") {
			return "", errors.New("tether: bearer token is empty or malformed")
		}
		return "Bearer " + tok, nil
	}
	return "", nil
}

func (d *Dialer) connect(conn net.Conn, addr, auth string) (*Conn, error) {
	req := "CONNECT " + addr + " HTTP/1.1\r\nHost: " + addr + "\r\n"
	if auth != "" {
		req += "Proxy-Authorization: " + auth + "\r\n"
	}
	req += "\r\n"
	if strings.ContainsAny(addr, "\r\n ") {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "invalid address %q", addr)
	}
	if _, err := io.WriteString(conn, req); err != nil {
		if r := tlsRefusal(err); r != nil {
			return nil, r
		}
		return nil, noAnswer(fmt.Errorf("tether: send CONNECT to relay: %w", err))
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		if r := tlsRefusal(err); r != nil {
			return nil, r
		}
		if br.Buffered() == 0 {
			// Nothing of an answer came: the relay closed the
			// connection (or the network failed) before answering.
			err = noAnswer(err)
		}
		return nil, fmt.Errorf("tether: read relay response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, protocol.MaxReplyMessage+256))
		resp.Body.Close()
		return nil, refusal(resp, string(body))
	}
	return &Conn{Conn: conn, r: br, RequestID: resp.Header.Get("Tether-Request-Id")}, nil
}

// refusal turns a non-200 CONNECT response into a *Refusal.
func refusal(resp *http.Response, body string) error {
	msg := strings.TrimSpace(body)
	code, ok := protocol.ParseCode(resp.Header.Get("Tether-Error"))
	if !ok { // not a Tether relay, or an intermediary answered
		code = codeForStatus(resp.StatusCode)
		if msg == "" {
			msg = resp.Status
		}
	} else {
		// The body is "<code>: <message>".
		msg = strings.TrimPrefix(msg, code.String()+": ")
	}
	r := &Refusal{Err: &protocol.Error{Code: code, Message: msg}, RequestID: resp.Header.Get("Tether-Request-Id")}
	// Retry-After in seconds (RFC 9110 §10.2.3; the relay never sends
	// the HTTP-date form), bounded so that a hostile answer cannot
	// overflow a Duration.
	if s, err := strconv.ParseUint(strings.TrimSpace(resp.Header.Get("Retry-After")), 10, 32); err == nil && s > 0 {
		r.RetryAfter = time.Duration(min(s, 24*3600)) * time.Second
	}
	return r
}

// Refusal is the error DialContext returns when the relay answered the
// request with a refusal: its own (no grant, no agent connected, …) or the
// tenant's agent's (unknown service, target unreachable, …). It wraps the
// *Error that says why, so both errors.Is(err, ErrNoAgent) and
// errors.As(err, &e) with e a *Error work; errors.As(err, &r) with r a
// *Refusal gives the request id as well.
type Refusal struct {
	Err *Error
	// RequestID is the relay's id for the request, for finding it in the
	// relay's log and audit trail; empty when the relay sent none.
	RequestID string
	// RetryAfter is how long the relay asked the caller to wait before
	// trying again (its Retry-After header, sent with rate_limited);
	// 0 when it said nothing.
	RetryAfter time.Duration
}

func (r *Refusal) Error() string {
	if r.RequestID == "" {
		return r.Err.Error()
	}
	return r.Err.Error() + " (request " + r.RequestID + ")"
}

// Unwrap returns the *Error.
func (r *Refusal) Unwrap() error { return r.Err }

func codeForStatus(status int) protocol.Code {
	switch status {
	case http.StatusProxyAuthRequired, http.StatusUnauthorized:
		return protocol.CodeUnauthenticated
	case http.StatusForbidden:
		return protocol.CodeNotAllowed
	case http.StatusNotFound:
		return protocol.CodeUnknownService
	case http.StatusBadRequest, http.StatusMethodNotAllowed:
		return protocol.CodeBadRequest
	case http.StatusServiceUnavailable:
		return protocol.CodeUnavailable
	case http.StatusBadGateway:
		return protocol.CodeTargetUnreachable
	case http.StatusGatewayTimeout:
		return protocol.CodeTimeout
	case http.StatusTooManyRequests:
		return protocol.CodeLimitExceeded
	}
	return protocol.CodeInternal
}

// Conn is a connection to a tenant service. It reads first any bytes the
// service sent before the relay's response was fully consumed.
type Conn struct {
	net.Conn
	r *bufio.Reader
	// RequestID is the relay's id for this connection, for correlating logs.
	RequestID string
}

// Read implements net.Conn.
func (c *Conn) Read(p []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(p)
		}
		c.r = nil // drained: read the connection directly from now on
	}
	return c.Conn.Read(p)
}

// abort closes the connection with a TCP reset, over TLS without a
// close_notify: the relay takes it for a failure, not for the end of
// what the client had to send, and resets the stream to the service.
func (c *Conn) abort() { transport.Reset(c.Conn) }

// CloseWrite half-closes the connection: the service reads EOF, and
// reading its answer continues.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("tether: connection does not support half-close")
}
