package relay

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

	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/ca"
	"github.com/tetherhq/tether/relay/internal/store"
)

// BackendCertificate is a client certificate for a backend, with its key
// and the relay CA that the backend verifies the relay's TLS front door
// against.
type BackendCertificate struct {
	Identity string // spiffe://<td>/backend/<name>
	NotAfter time.Time
	CertPEM  []byte
	KeyPEM   []byte
	CAPEM    []byte
}

// File names BackendCertificate.WriteFiles writes.
const (
	BackendCertFile = "backend.crt"
	BackendKeyFile  = "backend.key"
	BackendCAFile   = "ca.crt"
)

// IssueBackendCertificate issues a client certificate naming an existing
// backend, for its front-door connections over TLS (ConnectTLSListen). The
// backend's grants apply to it exactly as to its API key; removing the
// backend makes the certificate useless.
func (a *Admin) IssueBackendCertificate(ctx context.Context, name string, lifetime time.Duration) (*BackendCertificate, error) {
	if lifetime <= 0 {
		return nil, invalidf("certificate lifetime must be positive (got %v)", lifetime)
	}
	if _, err := a.st.store.Backend(ctx, name); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, notFoundf("no backend %q: add it first with tether-relay backend add", name)
		}
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	authority := a.st.CA()
	id := identity.Backend{TrustDomain: authority.TrustDomain(), Name: name}
	cert, err := authority.SignBackend(authority.Signer(), &key.PublicKey, id, lifetime, a.now())
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	a.record(AuditBackendCert, "", "", name, map[string]any{"serial": cert.SerialNumber.Text(16), "not_after": cert.NotAfter.UTC().Format(time.RFC3339)})
	return &BackendCertificate{
		Identity: id.String(),
		NotAfter: cert.NotAfter,
		CertPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		KeyPEM:   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		CAPEM:    authority.BundlePEM(), // every active root: the relay's own certificate comes from the oldest
	}, nil
}

// WriteFiles writes backend.crt, backend.key (owner-only) and ca.crt into
// dir, creating it if needed.
func (c *BackendCertificate) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{{BackendKeyFile, c.KeyPEM, 0o600}, {BackendCertFile, c.CertPEM, 0o644}, {BackendCAFile, c.CAPEM, 0o644}} {
		if err := ca.WriteFileAtomic(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	return nil
}
