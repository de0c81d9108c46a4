package admin

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"

	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/atomicfile"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/store"
)

// ClientCertificate is a client certificate the relay CA issued for a
// backend or an operator, with its new key and the CA bundle its holder
// verifies the relay with.
type ClientCertificate struct {
	Identity string // spiffe://<td>/backend/<name> or …/operator/<name>
	Serial   string // hex
	NotAfter time.Time
	CertPEM  []byte
	KeyPEM   []byte
	CAPEM    []byte
	base     string // file name stem: backend or operator
}

// BackendCertificate is a backend's client certificate (WriteFiles writes
// backend.crt, backend.key and ca.crt).
type BackendCertificate = ClientCertificate

// File names a backend's ClientCertificate.WriteFiles writes.
const (
	BackendCertFile = "backend.crt"
	BackendKeyFile  = "backend.key"
	BackendCAFile   = "ca.crt"
)

// issueClientCertificate makes a key, has sign certify it and returns the
// pair with the CA bundle: every active root, as the relay's own
// certificate comes from the oldest.
func (a *Admin) issueClientCertificate(authority *ca.CA, base, identity string, sign func(pub *ecdsa.PublicKey) (*x509.Certificate, error)) (*ClientCertificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	cert, err := sign(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &ClientCertificate{
		Identity: identity,
		Serial:   cert.SerialNumber.Text(16),
		NotAfter: cert.NotAfter,
		CertPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		KeyPEM:   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		CAPEM:    authority.BundlePEM(),
		base:     base,
	}, nil
}

// WriteFiles writes <base>.crt, <base>.key (owner-only) and ca.crt into
// dir, creating it if needed.
func (c *ClientCertificate) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{{c.base + ".key", c.KeyPEM, 0o600}, {c.base + ".crt", c.CertPEM, 0o644}, {"ca.crt", c.CAPEM, 0o644}} {
		if err := atomicfile.Write(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	return nil
}

// IssueBackendCertificate issues a client certificate naming an existing
// backend, for its front-door connections over TLS (ConnectTLSListen). The
// backend's grants apply to it exactly as to its API key. Its serial is
// recorded with the backend: removing the backend deletes the record, so
// that the certificate stays refused even when a backend of the same name
// is added again.
func (a *Admin) IssueBackendCertificate(ctx context.Context, name string, lifetime time.Duration) (*BackendCertificate, error) {
	if err := a.vendorOnly("backend certificates"); err != nil {
		return nil, err
	}
	if lifetime <= 0 {
		return nil, invalidf("certificate lifetime must be positive (got %v)", lifetime)
	}
	if _, err := a.store.Backend(ctx, name); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, notFoundf("no backend %q: add it first with tether-relay backend add", name)
		}
		return nil, err
	}
	authority := a.auth.CA()
	id := identity.Backend{TrustDomain: authority.TrustDomain(), Name: name}
	now := a.now()
	c, err := a.issueClientCertificate(authority, "backend", id.String(), func(pub *ecdsa.PublicKey) (*x509.Certificate, error) {
		return authority.SignBackend(authority.Signer(), pub, id, lifetime, now)
	})
	if err != nil {
		return nil, err
	}
	rec := store.BackendCert{Serial: c.Serial, Backend: name, CreatedAt: now, NotAfter: c.NotAfter}
	if err := a.store.AddBackendCert(ctx, rec); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, notFoundf("backend %q was removed while its certificate was issued", name)
		}
		return nil, err
	}
	a.Record(audit.BackendCert, "", "", name, map[string]any{"serial": c.Serial, "not_after": c.NotAfter.UTC().Format(time.RFC3339)})
	return c, nil
}
