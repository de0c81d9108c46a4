// Package ca is the relay's narrow tenant CA: it issues agent certificates
// from CSRs (the agent's key never leaves the agent) and the relay's own
// server certificates. The CA key is an ECDSA P-256 key kept in the relay's
// data directory with owner-only permissions.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
)

// File names inside the CA directory.
const (
	CertFile = "ca.crt"
	KeyFile  = "ca.key"
)

// Lifetime of a newly created CA.
const caLifetime = 10 * 365 * 24 * time.Hour

// CA holds the tenant CA's certificate and key.
type CA struct {
	cert *x509.Certificate
	key  crypto.Signer
	td   string
	pool *x509.CertPool
}

// LoadOrCreate loads the CA from dir, creating a new one for trust domain td
// when dir holds none. The caller serialises calls across processes (the
// relay holds a lock on its data directory). An existing CA keeps its own
// trust domain; td only names a new one.
func LoadOrCreate(dir, td string, now time.Time) (*CA, bool, error) {
	c, err := Load(dir)
	if err == nil {
		return c, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	if err := identity.ValidateTrustDomain(td); err != nil {
		return nil, false, err
	}
	if err := create(dir, td, now); err != nil {
		return nil, false, err
	}
	c, err = Load(dir)
	return c, true, err
}

// Load reads the CA from dir. A missing CA yields an error wrapping
// fs.ErrNotExist.
func Load(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, KeyFile)); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("CA key %s has permissions %v: it must be readable by its owner only (chmod 600)", filepath.Join(dir, KeyFile), fi.Mode().Perm())
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, errors.New("CA certificate file holds no PEM certificate")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "PRIVATE KEY" {
		return nil, errors.New("CA key file holds no PEM PKCS#8 private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse CA key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("CA key cannot sign")
	}
	if len(cert.URIs) != 1 || cert.URIs[0].Scheme != "spiffe" {
		return nil, errors.New("CA certificate does not name its trust domain (spiffe URI SAN)")
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{cert: cert, key: signer, td: cert.URIs[0].Host, pool: pool}, nil
}

func create(dir, td string, now time.Time) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create CA directory: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "Tether tenant CA " + td, Organization: []string{"Tether"}},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(caLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		URIs:                  []*url.URL{identity.TrustDomainURI(td)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("create CA certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	// Key first: a certificate without its key would look like a CA.
	if err := WriteFileAtomic(filepath.Join(dir, KeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, CertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// Certificate returns the CA certificate.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// CertificatePEM returns the CA certificate in PEM form.
func (c *CA) CertificatePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw})
}

// Fingerprint is the SHA-256 of the CA certificate, as carried in join tokens.
func (c *CA) Fingerprint() [32]byte { return protocol.Fingerprint(c.cert.Raw) }

// TrustDomain is the SPIFFE trust domain the CA issues identities in.
func (c *CA) TrustDomain() string { return c.td }

// Pool returns a pool holding the CA certificate (for verifying agents).
func (c *CA) Pool() *x509.CertPool { return c.pool }

// CheckCSR parses a DER CSR, verifies its self-signature, and accepts only
// key types and sizes fit for an agent identity.
func CheckCSR(der []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "parse certificate request: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "certificate request signature: %v", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, protocol.Errorf(protocol.CodeBadRequest, "certificate request: ECDSA curve %s not accepted (use P-256 or P-384)", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 8192 {
			return nil, protocol.Errorf(protocol.CodeBadRequest, "certificate request: RSA key of %d bits not accepted (2048 to 8192)", n)
		}
	default:
		return nil, protocol.Errorf(protocol.CodeBadRequest, "certificate request: key type %T not accepted", k)
	}
	return csr, nil
}

// SignAgent issues a client certificate for agent id to the key in csr
// (already checked with CheckCSR). The identity comes from the caller —
// nothing in the CSR's subject or extensions is copied.
func (c *CA) SignAgent(csr *x509.CertificateRequest, id identity.Agent, lifetime time.Duration, now time.Time) (*x509.Certificate, error) {
	if id.TrustDomain != c.td {
		return nil, fmt.Errorf("sign agent: trust domain %q is not this CA's %q", id.TrustDomain, c.td)
	}
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("sign agent: %w", err)
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: id.ID, OrganizationalUnit: []string{id.Tenant}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URI()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, csr.PublicKey, c.key)
	if err != nil {
		return nil, fmt.Errorf("sign agent certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// IssueRelay issues a fresh key and server certificate for the relay,
// carrying spiffe://<td>/relay. The returned chain includes the CA
// certificate so that enrolling agents can find the CA they pinned.
func (c *CA) IssueRelay(lifetime time.Duration, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "Tether relay " + c.td},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		URIs:         []*url.URL{identity.RelayURI(c.td)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return nil, fmt.Errorf("issue relay certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der, c.cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return n.Add(n, big.NewInt(1))
}

// WriteFileAtomic writes data to a temporary file in the same directory and
// renames it over path, so readers never see a partial file.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	return nil
}
