package client

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/tetherhq/tether/protocol/identity"
)

// LoadCertificate returns a TLS configuration for the relay's TLS front
// door from the directory `tether-relay backend certificate NAME --out DIR`
// wrote: the backend's client certificate (backend.crt, backend.key) is
// its credential, and the relay must present a certificate from the relay
// CA (ca.crt). Files are read once; load again after reissuing.
func LoadCertificate(dir string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "backend.crt"), filepath.Join(dir, "backend.key"))
	if err != nil {
		return nil, fmt.Errorf("tether: load backend certificate: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("tether: read relay CA: %w", err)
	}
	conf, err := RelayTLSConfig(caPEM)
	if err != nil {
		return nil, err
	}
	conf.Certificates = []tls.Certificate{cert}
	return conf, nil
}

// RelayTLSConfig returns a TLS configuration that accepts only a relay
// whose certificate chains to the relay CA in caPEM (one or more PEM
// certificates) and names the CA's trust domain. Relays are recognised by
// that identity rather than by host name, so any address reaches them.
//
// It keeps the TLS sessions relays offer (a ClientSessionCache), so that
// the next connection to the same relay resumes one: no certificate
// signatures are made or checked in its handshake, which takes a third
// off the CPU of a new connection at both ends. A resumed connection is
// no less checked: the relay's certificate from the session is verified
// again against the CA (VerifyConnection runs on every handshake), and
// the relay verifies the backend's certificate, and whether the backend
// is still registered, as on a full handshake.
func RelayTLSConfig(caPEM []byte) (*tls.Config, error) {
	roots := x509.NewCertPool()
	td := ""
	for rest := caPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("tether: relay CA: %w", err)
		}
		roots.AddCert(c)
		for _, u := range c.URIs {
			if u.Scheme == "spiffe" && td == "" {
				td = u.Host
			}
		}
	}
	if td == "" {
		return nil, errors.New("tether: relay CA: no CA certificate naming a trust domain")
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		// Host-name verification is replaced by VerifyConnection.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			return identity.VerifyRelay(cs, roots, td, time.Now())
		},
		ClientSessionCache: tls.NewLRUClientSessionCache(0),
	}, nil
}
