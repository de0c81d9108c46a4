package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http/httpproxy"
)

// ProxyDirect as the proxy setting connects to relays without a proxy,
// whatever the environment says.
const ProxyDirect = "direct"

// proxyConnectTimeout bounds the exchange with a proxy once the TCP
// connection to it is up: TLS to an https:// proxy, CONNECT and its answer.
const proxyConnectTimeout = 15 * time.Second

// maxProxyAnswer bounds what the agent reads of a proxy's answer to CONNECT
// (status line and headers).
const maxProxyAnswer = 64 << 10

type dialFunc = func(ctx context.Context, network, addr string) (net.Conn, error)

// egress decides how the agent reaches each relay: directly, or through an
// HTTP proxy with CONNECT.
type egress struct {
	proxy  *url.URL // nil: every relay is reached directly
	source string   // where proxy came from, for logs ("HTTPS_PROXY", "proxy in the config")
	// exempt reports whether NO_PROXY (or no_proxy in the config) or a
	// loopback address keeps a relay off the proxy.
	exempt func(relay string) bool
	// unusable is why the proxy of the environment (HTTPS_PROXY) cannot
	// be used (proxy is then nil): an error only for a relay not exempt
	// from it (check).
	unusable error
	// proxyCAs verifies an https:// proxy: nil for the system's roots,
	// else those and the certificates of caFile (proxy_ca_file). A
	// reloaded file replaces it (setProxyCAs); each connection to the
	// proxy takes the one in force when it is dialled.
	proxyCAs atomic.Pointer[proxyTrust]
	caFile   string
}

// proxyTrust is the TLS configuration for an https:// proxy and the
// certificates of proxy_ca_file it trusts besides the system's roots.
type proxyTrust struct {
	conf  *tls.Config
	certs []*x509.Certificate
}

// trustProxyCAs has an https:// proxy verified against the certificates
// of file (proxy_ca_file) as well as the system's roots; "" changes
// nothing. The file is read now; the agent's file watcher reads it again
// when it changes (setProxyCAs).
func (e *egress) trustProxyCAs(file string) error {
	if file == "" {
		return nil
	}
	certs, err := readProxyCAs(file)
	if err != nil {
		return fmt.Errorf("proxy_ca_file %s: %w", file, err)
	}
	e.caFile = file
	e.setProxyCAs(certs)
	return nil
}

// setProxyCAs has the next connections to an https:// proxy verified
// against certs (and the system's roots); connections up stay as they
// are. It reports whether certs differ from those in force.
func (e *egress) setProxyCAs(certs []*x509.Certificate) bool {
	if cur := e.proxyCAs.Load(); cur != nil && slices.EqualFunc(cur.certs, certs, (*x509.Certificate).Equal) {
		return false
	}
	e.proxyCAs.Store(&proxyTrust{conf: proxyTLSConfig(certs), certs: certs})
	return true
}

// proxyTLS is the TLS configuration for an https:// proxy now: nil for
// the system's roots alone.
func (e *egress) proxyTLS() *tls.Config {
	if t := e.proxyCAs.Load(); t != nil {
		return t.conf
	}
	return nil
}

// newEgress resolves the proxy settings: setting is the config's proxy key
// ("" for the environment, ProxyDirect for none, or a URL), noProxy the
// config's no_proxy key ("" for the environment). getenv reads the
// environment (os.Getenv outside tests).
func newEgress(setting, noProxy string, getenv func(string) string) (*egress, error) {
	e := &egress{exempt: func(string) bool { return true }}
	raw, source := setting, "proxy in the config"
	if setting == "" {
		raw, source = getenvAny(getenv, "https_proxy", "HTTPS_PROXY")
	}
	if raw == "" || raw == ProxyDirect {
		return e, nil
	}
	u, err := parseProxyURL(raw)
	if err != nil {
		// The value may hold a password: never repeat it.
		err = fmt.Errorf("%s: %w", source, err)
		if setting != "" {
			return nil, err
		}
		// A proxy of the environment (set for other programs, perhaps)
		// matters only for the relays that would go through it.
		e.unusable, e.source = err, source
	} else {
		e.proxy, e.source = u, source
	}
	if noProxy == "" {
		noProxy, _ = getenvAny(getenv, "no_proxy", "NO_PROXY")
	}
	// httpproxy applies NO_PROXY (domains, subdomains, IP addresses, CIDR
	// ranges, ports, "*") and keeps loopback addresses off the proxy. It
	// is asked about an https URL of the relay: what it answers for a
	// placeholder proxy says whether the relay is exempt.
	match := (&httpproxy.Config{HTTPSProxy: "http://proxy.invalid", NoProxy: noProxy}).ProxyFunc()
	e.exempt = func(relay string) bool {
		p, err := match(&url.URL{Scheme: "https", Host: relay})
		return err != nil || p == nil
	}
	return e, nil
}

// getenvAny returns the first non-empty variable of names and its name.
func getenvAny(getenv func(string) string, names ...string) (value, name string) {
	for _, n := range names {
		if v := getenv(n); v != "" {
			return v, n
		}
	}
	return "", ""
}

// check returns why relay cannot be reached: it would go through the
// environment's proxy, which is unusable. Nil otherwise.
func (e *egress) check(relay string) error {
	if e.unusable != nil && !e.exempt(relay) {
		return e.unusable
	}
	return nil
}

// forRelay returns the proxy through which relay is reached, or nil to dial
// it directly (or when check refuses it).
func (e *egress) forRelay(relay string) *url.URL {
	if e.proxy == nil || e.exempt(relay) {
		return nil
	}
	return e.proxy
}

// dialer returns the function that opens TCP connections to relay: forward
// itself when relay is reached directly, or a CONNECT through the proxy
// (which forward reaches) otherwise.
func (e *egress) dialer(relay string, forward dialFunc) dialFunc {
	if err := e.check(relay); err != nil {
		return func(context.Context, string, string) (net.Conn, error) { return nil, err }
	}
	p := e.forRelay(relay)
	if p == nil {
		return forward
	}
	return (&proxyDialer{proxy: p, forward: forward, tlsConf: e.proxyTLS(), caFile: e.caFile}).DialContext
}

// proxyURLForm is the form of a proxy URL, for errors.
const proxyURLForm = "want http://[user:password@]host:port; percent-encode / ? # @ : in the user name and password"

// nonHTTPProxySchemes are schemes people try as the proxy's, which an
// error may name: any other scheme is not repeated, as it is part of a
// value that may hold a password.
var nonHTTPProxySchemes = []string{"socks", "socks4", "socks4a", "socks5", "socks5h", "ftp", "ws", "wss"}

// parseProxyURL accepts http://[user:password@]host[:port] and the same
// with https:// (TLS to the proxy); a bare host:port means http. Errors
// contain no part of the URL, which may hold a password: not even the URL
// parser's error, which quotes pieces of it (a password with an unencoded
// '/' ends the host there, and the parser then reports the rest of the
// password as an invalid port).
func parseProxyURL(s string) (*url.URL, error) {
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, errors.New("not a proxy URL (" + proxyURLForm + ")")
	}
	switch u.Scheme {
	case "http", "https":
	default:
		if slices.Contains(nonHTTPProxySchemes, u.Scheme) {
			return nil, fmt.Errorf("proxy scheme %q: want http or https (the agent tunnels through HTTP proxies with CONNECT)", u.Scheme)
		}
		return nil, errors.New("proxy scheme is not http or https (the agent tunnels through HTTP proxies with CONNECT; " + proxyURLForm + ")")
	}
	if u.Hostname() == "" {
		return nil, errors.New("proxy URL has no host (" + proxyURLForm + ")")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, errors.New("proxy URL has an invalid port (" + proxyURLForm + ")")
		}
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return nil, errors.New("proxy URL must not have a path, query or fragment (" + proxyURLForm + ")")
	}
	return u, nil
}

// proxyAddr is the host:port of the proxy, with the scheme's default port.
func proxyAddr(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// ProxyError is an HTTP proxy's refusal of a CONNECT request.
type ProxyError struct {
	Proxy      string // the proxy's URL, password redacted
	Target     string // host:port the agent asked for
	StatusCode int    // e.g. 407
	Status     string // e.g. "407 Proxy Authentication Required"
	Hint       string // what to do about it, when known
}

func (e *ProxyError) Error() string {
	s := fmt.Sprintf("proxy %s refused CONNECT to %s: %s", e.Proxy, e.Target, e.Status)
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

// UntrustedProxyError is an https:// proxy whose certificate the agent
// does not trust: not from a CA of the system's roots nor of
// proxy_ca_file, or not for the proxy's name.
type UntrustedProxyError struct {
	Proxy  string // the proxy's URL, password redacted
	CAFile string // proxy_ca_file; "" when not set
	err    error  // the TLS handshake's *tls.CertificateVerificationError
}

func (e *UntrustedProxyError) Error() string {
	if _, ok := errors.AsType[x509.HostnameError](e.err); ok {
		return fmt.Sprintf("TLS handshake with proxy %s: the proxy's certificate is not trusted: it is not for the name or address in the proxy URL (use the name the certificate has, or have the proxy's certificate name the one the agent uses): %v", e.Proxy, e.err)
	}
	if e.CAFile == "" {
		return fmt.Sprintf("TLS handshake with proxy %s: the proxy's certificate is not trusted (not from a CA of this machine's roots): if the proxy's certificate is from a private CA, name that CA's certificate (PEM) in proxy_ca_file in the agent config (tether-agent enroll: --proxy-ca FILE): %v", e.Proxy, e.err)
	}
	return fmt.Sprintf("TLS handshake with proxy %s: the proxy's certificate is not trusted (not from a CA of proxy_ca_file %s nor of this machine's roots): put the CA that issued the proxy's certificate in proxy_ca_file: %v", e.Proxy, e.CAFile, e.err)
}

func (e *UntrustedProxyError) Unwrap() error { return e.err }

// permanent reports whether retrying soon with the same settings will meet
// the same refusal: wrong or missing credentials, or a proxy policy.
func (e *ProxyError) permanent() bool {
	return e.StatusCode == http.StatusProxyAuthRequired || e.StatusCode == http.StatusForbidden
}

// proxyDialer opens TCP connections through an HTTP proxy with CONNECT
// (RFC 9110, section 9.3.6), sending Basic credentials when the proxy URL
// has them.
type proxyDialer struct {
	proxy   *url.URL
	forward dialFunc      // reaches the proxy
	tlsConf *tls.Config   // for an https:// proxy; nil: system roots
	caFile  string        // proxy_ca_file, whose CAs tlsConf trusts too; for errors
	timeout time.Duration // bounds the exchange with the proxy; 0: proxyConnectTimeout
}

// DialContext connects to the proxy and asks it for a tunnel to target.
// The returned connection carries the tunnel, starting with any bytes the
// proxy sent right after its answer.
func (d *proxyDialer) DialContext(ctx context.Context, network, target string) (net.Conn, error) {
	name := d.proxy.Redacted()
	if network != "tcp" {
		return nil, fmt.Errorf("proxy %s: cannot tunnel %s, only tcp", name, network)
	}
	if strings.ContainsFunc(target, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return nil, fmt.Errorf("proxy %s: invalid address %q", name, target)
	}
	conn, err := d.forward(ctx, "tcp", proxyAddr(d.proxy))
	if err != nil {
		return nil, fmt.Errorf("connect to proxy %s: %w", name, err)
	}
	timeout := d.timeout
	if timeout <= 0 {
		timeout = proxyConnectTimeout
	}
	deadline := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	conn.SetDeadline(deadline)
	timeout = time.Until(deadline)
	// A cancelled ctx interrupts the exchange at once.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	tunnel, err := d.connect(ctx, conn, target, timeout)
	if !stop() {
		conn.Close()
		return nil, fmt.Errorf("CONNECT to %s through proxy %s: %w", target, name, context.Cause(ctx))
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return tunnel, nil
}

// connect runs the exchange with the proxy on conn, under a deadline.
func (d *proxyDialer) connect(ctx context.Context, conn net.Conn, target string, timeout time.Duration) (net.Conn, error) {
	name := d.proxy.Redacted()
	if d.proxy.Scheme == "https" {
		conf := d.tlsConf.Clone()
		if conf == nil {
			conf = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		conf.ServerName = d.proxy.Hostname()
		tc := tls.Client(conn, conf)
		if err := tc.HandshakeContext(ctx); err != nil {
			if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
				return nil, &UntrustedProxyError{Proxy: name, CAFile: d.caFile, err: err}
			}
			return nil, fmt.Errorf("TLS handshake with proxy %s: %w", name, err)
		}
		conn = tc
	}
	var req strings.Builder
	fmt.Fprintf(&req, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n", target, target)
	if u := d.proxy.User; u != nil {
		pass, _ := u.Password()
		fmt.Fprintf(&req, "Proxy-Authorization: Basic %s\r\n", base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pass)))
	}
	req.WriteString("User-Agent: tether-agent\r\n\r\n")
	if _, err := io.WriteString(conn, req.String()); err != nil {
		return nil, d.readError(err, target, timeout, "send CONNECT")
	}

	// The answer is read through a limit; bytes the proxy sent after it
	// (the relay's first TLS record may share a packet with the answer)
	// stay in br and are handed to the tunnel.
	lr := &io.LimitedReader{R: conn, N: maxProxyAnswer}
	br := bufio.NewReader(lr)
	var resp *http.Response
	for informational := 0; ; informational++ {
		var err error
		resp, err = http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil {
			if lr.N == 0 {
				return nil, fmt.Errorf("proxy %s answered CONNECT to %s with more than %d KiB of headers", name, target, maxProxyAnswer>>10)
			}
			return nil, d.readError(err, target, timeout, "read the answer to CONNECT")
		}
		// 1xx answers precede the real one (101 would switch protocols,
		// which a CONNECT never asks for).
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols || informational == 4 {
			break
		}
	}
	if resp.StatusCode/100 != 2 {
		return nil, &ProxyError{Proxy: name, Target: target, StatusCode: resp.StatusCode, Status: statusText(resp), Hint: d.hint(resp)}
	}
	// Any 2xx answer opens the tunnel; its headers say nothing of a body.
	if n := br.Buffered(); n > 0 {
		early, _ := br.Peek(n)
		return &prefixConn{Conn: conn, pending: append([]byte(nil), early...)}, nil
	}
	return conn, nil
}

// readError says what went wrong while talking to the proxy.
func (d *proxyDialer) readError(err error, target string, timeout time.Duration, what string) error {
	name := d.proxy.Redacted()
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return fmt.Errorf("proxy %s closed the connection instead of answering CONNECT to %s (is it an HTTP proxy?)", name, target)
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("proxy %s did not answer CONNECT to %s within %v", name, target, timeout.Round(time.Millisecond))
	case errors.As(err, &ne):
		return fmt.Errorf("proxy %s: %s to %s: %w", name, what, target, err)
	}
	// Not an I/O error: the answer was not HTTP.
	return fmt.Errorf("proxy %s sent a malformed answer to CONNECT to %s (is it an HTTP proxy?): %w", name, target, err)
}

// statusText is "407 Proxy Authentication Required", keeping the proxy's
// reason phrase when it gave one.
func statusText(resp *http.Response) string {
	if resp.Status != "" {
		return resp.Status
	}
	return fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
}

// hint says what an operator can do about a refusal.
func (d *proxyDialer) hint(resp *http.Response) string {
	switch resp.StatusCode {
	case http.StatusProxyAuthRequired:
		var schemes []string
		basic := false
		for _, v := range resp.Header.Values("Proxy-Authenticate") {
			scheme, _, _ := strings.Cut(strings.TrimSpace(v), " ")
			schemes = append(schemes, scheme)
			basic = basic || strings.EqualFold(scheme, "Basic")
		}
		switch {
		case len(schemes) > 0 && !basic:
			return fmt.Sprintf("the proxy asks for %s authentication; the agent supports Basic only", strings.Join(schemes, ", "))
		case d.proxy.User == nil:
			return "the proxy requires credentials: put them in the proxy URL, http://user:password@host:port"
		default:
			return "the proxy did not accept the user name and password in the proxy URL"
		}
	case http.StatusForbidden:
		return "the proxy's policy forbids this destination; many proxies allow CONNECT only to port 443"
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return "the proxy could not reach the relay"
	}
	return ""
}

// prefixConn is a connection whose first reads return bytes already read
// from it.
type prefixConn struct {
	net.Conn
	pending []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// throughProxy explains err, a failure on a tunnel the proxy p opened (the
// TLS handshake with the relay, or what followed): it names the proxy,
// which the error would not otherwise, and says what a proxy does that
// ends that way.
func throughProxy(p *url.URL, err error) error {
	name := p.Redacted()
	var ne net.Error
	switch {
	case isUntrustedRelay(err):
		u, _ := errors.AsType[*untrustedRelayError](err)
		return &inspectedError{proxy: name, err: err, cause: u.err,
			otherwise: "the relay's CA may have been rotated and its old root retired while this agent was offline: enrol it again with a new join token"}
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return fmt.Errorf("through HTTP proxy %s: the proxy accepted CONNECT, then the tunnel closed before the relay answered (the proxy could not reach the relay or ended the tunnel, or the relay closed it): %w", name, err)
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("through HTTP proxy %s: the proxy accepted CONNECT, then nothing came back through the tunnel in time: %w", name, err)
	}
	return fmt.Errorf("through HTTP proxy %s: %w", name, err)
}

// inspectedError is a relay certificate the agent's check refused on a
// connection through an HTTP proxy (not from a CA root it trusts; at
// enrolment, not from the CA the join token pins): most likely the proxy
// (or a firewall behind it) inspects TLS and answered with a certificate
// of its own. It unwraps to the check's error (an *untrustedRelayError
// stays one), but does not send the operator to enrol again first.
type inspectedError struct {
	proxy     string // the proxy's URL, password redacted
	err       error
	otherwise string // what it means when the proxy does not inspect TLS
	cause     error  // what the check said
}

func (e *inspectedError) Error() string {
	return fmt.Sprintf("through HTTP proxy %s: the certificate that came back is not the relay's: the proxy, or a firewall behind it, probably inspects TLS and answered with a certificate of its own; exempt the relay's address from TLS inspection (an inspecting proxy cannot pass on the agent's own certificate). If it does not inspect TLS, %s: %v", e.proxy, e.otherwise, e.cause)
}

func (e *inspectedError) Unwrap() error { return e.err }
