package client

import (
	"crypto/sha256"
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
	}, nil
}

// sessions holds the TLS sessions relays offered the Dialers of this
// process, under their client identity (scopedSessions).
var sessions = tls.NewLRUClientSessionCache(256)

// resuming returns conf for a connection to a relay: when conf has no
// ClientSessionCache of its own, a copy whose cache is the process's,
// scoped to conf's client certificate, so that the next connection to
// the same relay with the same certificate resumes the session: its
// handshake makes and checks no certificate signatures, which takes
// about a seventh off a new connection's CPU and time at both ends. A
// resumed connection is no less checked: the relay's certificate from
// the session is verified again (VerifyConnection runs on every
// handshake), and the relay verifies the backend's certificate, and that
// the backend is still registered, as on a full handshake.
//
// The scope matters: crypto/tls finds a session by the server's address
// alone, and a resumed session carries the client certificate of the
// handshake that made it, not the configuration's. So configurations
// that share one cache (Clone copies it) with different certificates
// would present each other's identity. A configuration that picks its
// certificate per handshake (GetClientCertificate) is not resumed.
func resuming(conf *tls.Config) *tls.Config {
	if conf.ClientSessionCache != nil || conf.GetClientCertificate != nil {
		return conf
	}
	h := sha256.New()
	for _, c := range conf.Certificates {
		for _, der := range c.Certificate {
			h.Write(der)
		}
		h.Write([]byte{0})
	}
	c := conf.Clone()
	c.ClientSessionCache = scopedSessions{scope: string(h.Sum(nil)), cache: sessions}
	return c
}

// scopedSessions is a ClientSessionCache that keeps its sessions in cache
// under keys of their own scope.
type scopedSessions struct {
	scope string
	cache tls.ClientSessionCache
}

func (s scopedSessions) Get(key string) (*tls.ClientSessionState, bool) {
	return s.cache.Get(s.scope + "|" + key)
}

func (s scopedSessions) Put(key string, cs *tls.ClientSessionState) {
	s.cache.Put(s.scope+"|"+key, cs)
}
