package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/tetherhq/tether/protocol/identity"
)

// client calls the relay's admin API.
type client struct {
	base   *url.URL
	token  string
	http   *http.Client
	pinned bool // verifies the relay with --ca
}

// apiError is an error the API answered with.
type apiError struct {
	Status  int
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s (%s, HTTP %d)", e.Message, e.Code, e.Status)
}

// clientConfig is how tetherctl reaches the API.
type clientConfig struct {
	url, token, tokenFile, ca, cert, key string
	timeout                              time.Duration
}

func newClient(c clientConfig) (*client, error) {
	if c.url == "" {
		return nil, errors.New("no admin API address: set --url or TETHER_ADMIN_URL (e.g. https://relay.example:7446)")
	}
	u, err := url.Parse(c.url)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("admin API address %q: want https://host:port", c.url)
	}
	tok := c.token
	if tok == "" && c.tokenFile != "" {
		b, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("read token file: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.ca != "" {
		pem, err := os.ReadFile(c.ca)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", c.ca)
		}
		// The relay's own certificate names it by SPIFFE ID, not by host
		// name: with a pinned CA, a chain to it and the relay identity
		// suffice; other certificates are checked by host name too.
		tc.InsecureSkipVerify = true
		host := u.Hostname()
		tc.VerifyConnection = func(cs tls.ConnectionState) error { return verifyServer(cs, pool, host) }
	}
	if (c.cert == "") != (c.key == "") {
		return nil, errors.New("--cert and --key go together")
	}
	if c.cert != "" {
		pair, err := tls.LoadX509KeyPair(c.cert, c.key)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	if tok == "" && c.cert == "" {
		return nil, errors.New("no credential: set --token, --token-file or TETHER_ADMIN_TOKEN(_FILE), or --cert/--key (TETHER_ADMIN_CERT/KEY)")
	}
	tr := &http.Transport{TLSClientConfig: tc, Proxy: http.ProxyFromEnvironment, DialContext: (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second, ForceAttemptHTTP2: true}
	return &client{base: u, token: tok, http: &http.Client{Transport: tr, Timeout: c.timeout}, pinned: c.ca != ""}, nil
}

func verifyServer(cs tls.ConnectionState, roots *x509.CertPool, host string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the admin API presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if !isRelayCert(leaf) {
		opts.DNSName = host
	}
	if _, err := leaf.Verify(opts); err != nil {
		return &serverCertError{err: err}
	}
	return nil
}

// serverCertError is a relay certificate that does not verify with the
// CA given (--ca).
type serverCertError struct{ err error }

func (e *serverCertError) Error() string { return "admin API certificate: " + e.err.Error() }
func (e *serverCertError) Unwrap() error { return e.err }

// hintError is an error with what to do about it.
type hintError struct {
	err  error
	hint string
}

func (e *hintError) Error() string { return e.err.Error() + "; " + e.hint }
func (e *hintError) Unwrap() error { return e.err }

// explainTLS adds what to do to a TLS failure: name the relay's CA with
// --ca (exported on the relay host), export it again when the one given
// does not verify the relay, or point --url at the admin listener when
// the address did not speak TLS.
func explainTLS(err error, pinned bool) error {
	var (
		pinnedErr   *serverCertError
		verifyErr   *tls.CertificateVerificationError
		authority   x509.UnknownAuthorityError
		hostname    x509.HostnameError
		invalidCert x509.CertificateInvalidError
		plain       tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &pinnedErr):
		return &hintError{err, "the CA given with --ca (TETHER_ADMIN_CA) does not verify the relay: export the relay's CA again on its host with " +
			"tether-relay ca export --out FILE and give that FILE to --ca"}
	case errors.As(err, &verifyErr), errors.As(err, &authority), errors.As(err, &hostname), errors.As(err, &invalidCert):
		if pinned {
			return &hintError{err, "the relay's certificate does not verify with --ca (TETHER_ADMIN_CA): export its CA again on the relay host with tether-relay ca export --out FILE"}
		}
		return &hintError{err, "verify the relay with its CA: --ca FILE (or TETHER_ADMIN_CA=FILE), where FILE is written on the relay host by tether-relay ca export --out FILE"}
	case errors.As(err, &plain), errors.Is(err, http.ErrSchemeMismatch):
		// net/http reports a server that answered the ClientHello with
		// HTTP (a metrics or CONNECT listener, say) as ErrSchemeMismatch,
		// in place of the record header error.
		return &hintError{err, "the address did not answer with TLS: --url (TETHER_ADMIN_URL) must be the relay's admin listener, https://HOST:PORT of tether-relay serve --admin-listen"}
	}
	return err
}

// isRelayCert reports whether leaf carries a relay SPIFFE ID and no host
// names but the reserved identity.RelayDNSName (the certificate the relay
// issues itself from its CA).
func isRelayCert(leaf *x509.Certificate) bool {
	for _, n := range leaf.DNSNames {
		if n != identity.RelayDNSName {
			return false
		}
	}
	if len(leaf.IPAddresses) > 0 || len(leaf.URIs) != 1 {
		return false
	}
	u := leaf.URIs[0]
	return u.Scheme == "spiffe" && u.Path == "/relay"
}

// do sends a request with a JSON body (nil for none) and decodes the JSON
// answer into out (nil to discard).
func (c *client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	u := c.base.JoinPath(path)
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("admin API: %w", explainTLS(err, c.pinned))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("admin API: read answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error *apiError `json:"error"`
		}
		if json.Unmarshal(data, &e) != nil || e.Error == nil || e.Error.Code == "" {
			return fmt.Errorf("admin API answered HTTP %d without an error body", resp.StatusCode)
		}
		e.Error.Status = resp.StatusCode
		return e.Error
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("admin API: decode answer: %w", err)
	}
	return nil
}
