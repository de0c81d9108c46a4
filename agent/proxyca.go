package agent

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
)

// maxProxyCAFile bounds the size of the proxy_ca_file: room for a few
// hundred certificates, far more than a proxy's chain of trust needs.
const maxProxyCAFile = 1 << 20

// readProxyCAs reads the PEM file of proxy_ca_file: one or more
// CERTIFICATE blocks, each a certificate that parses. Text outside the
// blocks (the comments of a CA bundle) is allowed; any other kind of PEM
// block (a private key put there by mistake) is an error, and so is a
// file without a certificate. The file is read within maxProxyCAFile and
// must be a regular file (or a link to one): a device or a named pipe
// would block or never end. Errors never quote the file's contents.
func readProxyCAs(path string) ([]*x509.Certificate, error) {
	data, err := readProxyCAFile(path)
	if err != nil {
		return nil, err
	}
	return parseProxyCAs(data)
}

// readProxyCAFile reads the contents of a proxy CA file, with the limits
// readProxyCAs says.
func readProxyCAFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if fi.Size() > maxProxyCAFile {
		return nil, fmt.Errorf("larger than %d KiB: want a PEM file of the proxy's CA certificates", maxProxyCAFile>>10)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// The file may have changed since Stat: check what was opened.
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	data, err := io.ReadAll(io.LimitReader(f, maxProxyCAFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxProxyCAFile {
		return nil, fmt.Errorf("larger than %d KiB: want a PEM file of the proxy's CA certificates", maxProxyCAFile>>10)
	}
	return data, nil
}

// parseProxyCAs parses the contents of a proxy CA file (readProxyCAs).
func parseProxyCAs(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for n := 1; ; n++ {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			// The type is at most a line of the file's own header, but
			// a key file's contents must never reach a log: say which
			// block, not what it holds.
			return nil, fmt.Errorf("PEM block %d is not a CERTIFICATE: the file must hold the proxy's CA certificates only", n)
		}
		if len(b.Headers) != 0 {
			return nil, fmt.Errorf("PEM block %d has headers: want a plain CERTIFICATE block", n)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d does not parse: %w", n, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		if len(bytes.TrimSpace(data)) == 0 {
			return nil, errors.New("empty: want the proxy's CA certificates in PEM")
		}
		return nil, errors.New("no PEM certificate in it: want one or more -----BEGIN CERTIFICATE----- blocks (convert a DER file with openssl x509 -inform der -in FILE -out FILE.pem)")
	}
	// pem.Decode skips a block it cannot decode (a line cut short, a
	// missing END, a cut-off last block of a copy in progress): none is
	// silently dropped.
	if begins := bytes.Count(data, []byte("-----BEGIN ")); begins != len(certs) {
		return nil, fmt.Errorf("%d of its %d PEM blocks are incomplete or malformed", begins-len(certs), begins)
	}
	return certs, nil
}

// proxyTLSConfig is the TLS configuration for an https:// proxy: the
// system's roots and certs, which the proxy's certificate must chain to
// (one of them, for a proxy whose certificate is its own, self-signed).
// The relay's connection never uses it: relays are verified against the
// relay's CA alone (tlsConfig, identity.EnrollClientConfig).
func proxyTLSConfig(certs []*x509.Certificate) *tls.Config {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for _, c := range certs {
		pool.AddCert(c)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
}
