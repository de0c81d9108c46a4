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
// recorded with the backend, and the front door accepts only a recorded
// certificate: RevokeBackendCertificate deletes the record of one;
// removing the backend deletes them all, so that the certificate stays
// refused even when a backend of the same name is added again.
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

// BackendCertInfo is a certificate the relay issued to a backend, as it
// recorded it.
type BackendCertInfo struct {
	Serial    string    `json:"serial"`     // lowercase hexadecimal, as ClientCertificate.Serial
	CreatedAt time.Time `json:"created_at"` // issued
	NotAfter  time.Time `json:"not_after"`
	Expired   bool      `json:"expired"` // at the time of the answer
}

// BackendCertList is what the relay knows of a backend's certificates.
type BackendCertList struct {
	Backend string `json:"backend"`
	// Certificates are those recorded, newest first: the front door
	// accepts these (until they expire) and no others, but for
	// AcceptsUnrecorded. An expired certificate is forgotten at the
	// backend's next issue.
	Certificates []BackendCertInfo `json:"certificates"`
	// AcceptsUnrecorded is true for a backend added before the relay
	// recorded backend certificates (store schema version 13 and older):
	// the front door also accepts the certificates issued to it since it
	// was added that are not recorded, none of them listed here, until
	// RevokeUnrecordedBackendCertificates.
	AcceptsUnrecorded bool `json:"accepts_unrecorded"`
}

// BackendCertificates lists the certificates recorded for a backend.
func (a *Admin) BackendCertificates(ctx context.Context, name string) (BackendCertList, error) {
	if err := a.vendorOnly("backend certificates"); err != nil {
		return BackendCertList{}, err
	}
	b, err := a.store.Backend(ctx, name)
	var cs []store.BackendCert
	if err == nil {
		cs, err = a.store.BackendCerts(ctx, name)
	}
	if errors.Is(err, store.ErrNotFound) {
		return BackendCertList{}, notFoundf("no backend %q", name)
	}
	if err != nil {
		return BackendCertList{}, err
	}
	now := a.now()
	out := BackendCertList{Backend: name, AcceptsUnrecorded: b.CertsUnrecorded, Certificates: make([]BackendCertInfo, len(cs))}
	for i, c := range cs {
		out.Certificates[i] = backendCertInfo(c, now)
	}
	return out, nil
}

func backendCertInfo(c store.BackendCert, now time.Time) BackendCertInfo {
	return BackendCertInfo{Serial: c.Serial, CreatedAt: c.CreatedAt, NotAfter: c.NotAfter, Expired: !now.Before(c.NotAfter)}
}

// RevokeBackendCertificate deletes the record of the certificate with
// serial (hexadecimal, as IssueBackendCertificate gives it, in either
// case, with or without colons) issued to backend name: the front doors
// of every relay sharing the store refuse it once the store's change feed
// tells them (within about 2 s), as they do a removed backend's;
// connections already open continue. The backend's key and other
// certificates are untouched. A serial not recorded for the backend is
// ErrNotFound.
func (a *Admin) RevokeBackendCertificate(ctx context.Context, name, serial string) (BackendCertInfo, error) {
	if err := a.vendorOnly("revoking a backend certificate"); err != nil {
		return BackendCertInfo{}, err
	}
	serial, err := parseSerial(serial, "tether-relay backend certificates "+name)
	if err != nil {
		return BackendCertInfo{}, err
	}
	c, err := a.store.RemoveBackendCert(ctx, name, serial)
	if errors.Is(err, store.ErrNotFound) {
		b, berr := a.store.Backend(ctx, name)
		switch {
		case errors.Is(berr, store.ErrNotFound):
			return BackendCertInfo{}, notFoundf("no backend %q", name)
		case berr == nil && b.CertsUnrecorded:
			return BackendCertInfo{}, notFoundf("backend %q has no certificate %s recorded (list them with: tether-relay backend certificates %s); "+
				"if it was issued before the relay recorded backend certificates, refuse every such one with: tether-relay backend revoke-certificate %s --unrecorded", name, serial, name, name)
		}
		return BackendCertInfo{}, notFoundf("backend %q has no certificate %s recorded (list them with: tether-relay backend certificates %s)", name, serial, name)
	}
	if err != nil {
		return BackendCertInfo{}, err
	}
	a.Record(audit.BackendCertRevoke, "", "", name, map[string]any{"serial": c.Serial, "not_after": c.NotAfter.UTC().Format(time.RFC3339)})
	return backendCertInfo(c, a.now()), nil
}

// RevokeUnrecordedBackendCertificates makes the front doors refuse, once
// the change feed tells them (within about 2 s), the certificates of
// backend name that the relay has no record of: those issued before it
// recorded backend certificates (store schema version 13 and older),
// which a backend added before then still accepts
// (BackendCertList.AcceptsUnrecorded). Its recorded certificates and its
// key are untouched. It reports whether the backend accepted them until
// now; revoking them again changes nothing and is not audited.
func (a *Admin) RevokeUnrecordedBackendCertificates(ctx context.Context, name string) (bool, error) {
	if err := a.vendorOnly("revoking a backend certificate"); err != nil {
		return false, err
	}
	changed, err := a.store.RefuseUnrecordedBackendCerts(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return false, notFoundf("no backend %q", name)
	}
	if err != nil {
		return false, err
	}
	if changed {
		a.Record(audit.BackendCertRevoke, "", "", name, map[string]any{"unrecorded": true})
	}
	return changed, nil
}
