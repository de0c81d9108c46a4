// Package ca is the relay's narrow tenant CA: it issues agent certificates
// from CSRs (the agent's key never leaves the agent) and the relay's own
// server certificates. Its keys are ECDSA P-256 keys, kept in a Storage:
// the relay's data directory with owner-only permissions (Dir), or, for a
// cluster of relays, the store they share with the keys sealed under a
// key-encryption key (StoreFiles, sealed.go).
//
// # Roots and rotation
//
// The CA has one root, or two while a rotation is in progress (the
// overlap): the old root and the new one. Agent certificates, at enrolment
// and at renewal, come from the newest root (the signing root). The relay's
// own server certificate comes from the oldest (the serving root), because
// agents that have not renewed since the rotation trust only that one, and
// join tokens pin it. Agents are accepted with a certificate from any active
// root. Retiring the old root ends the overlap: the new root then both signs
// and serves, and certificates from the old one are refused.
//
// (Cross-signing the new root with the old one would let the server
// certificate move at once, but roots made before rotation existed forbid
// intermediate CAs below them — path length 0 — so it cannot be done for
// them.)
//
// # Endorsements
//
// An agent accepts a root it does not trust yet only when a root it
// trusts endorses it: otherwise whoever could answer one renewal (a relay
// leaf key on the path, without the CA's key) could add a root of their
// own, and drop the genuine one at the next. The endorsement of root n is
// a certificate for root n's subject and public key issued by the key of
// the root before it (the active root at the rotation that made root n).
// It is not used to build chains — the issuing root's path length 0
// forbids that, and agents never add it to a pool — only checked by agents
// against the roots they trust (agent/endorse.go). Rotate makes it while
// both keys exist and keeps it in roots.json with the root, in the clear
// like the certificates; renewal and enrolment answers carry the
// endorsements of the active roots (EndorsementsPEM). A CA read in an
// overlap that began before endorsements existed (no endorsement stored
// for the new root) gets one made as it is read, with the old root's key,
// and the next change to the CA stores it.
//
// # Files
//
// Root generation 1 is ca.crt and ca.key, the names a CA had before
// rotation existed, so such a directory loads unchanged; generation n > 1
// is ca-n.crt and ca-n.key. roots.json says which generations are active
// and is replaced atomically, so a reader sees the roots before or after a
// change and never half of one; without it the CA is generation 1 alone.
// Retired roots stay listed there, certificate only (their keys are
// deleted), so that a certificate one of them issued can be refused with
// the reason. Every Storage holds the same files, byte for byte, and each
// change writes them in the same order (a key before its certificate, the
// certificate before roots.json names it), so that a change cut short
// leaves the CA as it was.
//
// The functions that change the CA (LoadOrCreate, Rotate, Retire,
// SetRenewNow) leave it to their caller to run one at a time across every
// process that shares the storage: the data directory's file lock, and
// for a CA in a shared store the store's lock too (relay/internal/datadir).
package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
)

// File names in a CA's Storage.
const (
	CertFile     = "ca.crt" // root generation 1
	KeyFile      = "ca.key" // root generation 1
	ManifestFile = "roots.json"
)

// CertFileOf names the certificate file of root generation gen.
func CertFileOf(gen int) string {
	if gen == 1 {
		return CertFile
	}
	return fmt.Sprintf("ca-%d.crt", gen)
}

// KeyFileOf names the key file of root generation gen.
func KeyFileOf(gen int) string {
	if gen == 1 {
		return KeyFile
	}
	return fmt.Sprintf("ca-%d.key", gen)
}

// AgentBackdate is how long before its issue an agent certificate's
// validity begins (NotBefore), for clocks a little behind: the moment it
// was issued is its NotBefore plus AgentBackdate.
const AgentBackdate = 5 * time.Minute

// Lifetime of a newly created root.
const caLifetime = 10 * 365 * 24 * time.Hour

// Errors of Rotate and Retire.
var (
	ErrRotating    = errors.New("a CA rotation is already in progress: retire the old root first (tether-relay ca retire)")
	ErrNotRotating = errors.New("no CA rotation is in progress: the CA has a single root (start one with tether-relay ca rotate)")
)

// Root is one root certificate of the CA.
type Root struct {
	Generation int
	Cert       *x509.Certificate
	AddedAt    time.Time
	RetiredAt  time.Time // zero while active
	// Endorsement is root's certificate issued by the root before it
	// (see Endorsements in the package comment); nil for the first root,
	// and for a root made before endorsements existed once the root
	// before it is retired.
	Endorsement *x509.Certificate

	key crypto.Signer // nil once retired
	fp  [32]byte
}

// Fingerprint is the SHA-256 of the root certificate, as carried in join
// tokens.
func (r *Root) Fingerprint() [32]byte { return r.fp }

// ID is the printable fingerprint, "sha256:<hex>"; the store records it
// for each agent certificate.
func (r *Root) ID() string { return protocol.FormatFingerprint(r.fp) }

// PEM returns the root certificate in PEM form.
func (r *Root) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Cert.Raw})
}

// issued reports whether r signed cert.
func (r *Root) issued(cert *x509.Certificate) bool {
	return bytes.Equal(cert.RawIssuer, r.Cert.RawSubject) && cert.CheckSignatureFrom(r.Cert) == nil
}

// CA is the tenant CA's roots as read at one moment. It is immutable: a
// rotation or retirement produces a new CA.
type CA struct {
	td       string
	active   []*Root // oldest first; one or two
	retired  []*Root // oldest first
	renewNow bool
	pool     *x509.CertPool
	manifest []byte // roots.json as read; nil when there is none
}

// manifest is the content of roots.json.
type manifest struct {
	// Roots are the active roots, oldest first.
	Roots   []manifestRoot `json:"roots"`
	Retired []manifestRoot `json:"retired,omitempty"`
	// RenewNow asks agents with certificates from the old root to renew
	// at once rather than at their next scheduled renewal.
	RenewNow bool `json:"renew_now,omitempty"`
}

type manifestRoot struct {
	Generation  int       `json:"generation"`
	Fingerprint string    `json:"fingerprint"`
	AddedAt     time.Time `json:"added_at"`
	RetiredAt   time.Time `json:"retired_at,omitzero"`
	// Certificate is the PEM of a retired root, whose files are gone.
	Certificate string `json:"certificate,omitempty"`
	// Endorsement is the PEM of the root's certificate issued by the root
	// before it (Root.Endorsement).
	Endorsement string `json:"endorsement,omitempty"`
}

// LoadOrCreate loads the CA from s, creating a new one for trust domain td
// when s holds none. The caller serialises calls across processes (see the
// package comment). An existing CA keeps its own trust domain; td only
// names a new one.
func LoadOrCreate(ctx context.Context, s Storage, td string, now time.Time) (*CA, bool, error) {
	c, err := Load(ctx, s)
	if err == nil {
		return c, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	if err := identity.ValidateTrustDomain(td); err != nil {
		return nil, false, err
	}
	if _, err := createRoot(ctx, s, td, 1, now); err != nil {
		return nil, false, err
	}
	c, err = Load(ctx, s)
	return c, true, err
}

// Load reads the CA from s. Only a storage with no CA at all (no
// roots.json, ca.crt or ca.key) yields an error wrapping fs.ErrNotExist;
// a CA with a file missing is an error of its own, never a reason to make
// a new one.
func Load(ctx context.Context, s Storage) (*CA, error) {
	raw, err := ReadManifest(ctx, s)
	if err != nil {
		return nil, err
	}
	var m manifest
	if raw == nil {
		_, cerr := s.ReadFile(ctx, CertFile)
		_, kerr := s.ReadFile(ctx, KeyFile)
		if errors.Is(cerr, fs.ErrNotExist) && errors.Is(kerr, fs.ErrNotExist) {
			return nil, fmt.Errorf("no CA in %v: %w", s, fs.ErrNotExist)
		}
		if errors.Is(cerr, fs.ErrNotExist) && kerr == nil {
			if err := finishCreation(ctx, s); err != nil {
				return nil, err
			}
		}
		m.Roots = []manifestRoot{{Generation: 1}}
	} else if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("parse %s: %v", where(s, ManifestFile), err)
	}
	c, err := fromManifest(ctx, s, m)
	if err != nil {
		return nil, err
	}
	c.manifest = raw
	return c, nil
}

// ReadManifest returns the content of roots.json in s, or nil when there
// is none (a CA that was never rotated). A relay compares it with
// CA.Manifest to notice a rotation made by another process.
func ReadManifest(ctx context.Context, s Storage) ([]byte, error) {
	raw, err := s.ReadFile(ctx, ManifestFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read CA roots: %w", err)
	}
	return raw, nil
}

// Manifest is the roots.json this CA was read from (nil when there was
// none).
func (c *CA) Manifest() []byte { return c.manifest }

func fromManifest(ctx context.Context, s Storage, m manifest) (*CA, error) {
	if n := len(m.Roots); n < 1 || n > 2 {
		return nil, fmt.Errorf("%s lists %d active roots; want 1 or 2", ManifestFile, n)
	}
	c := &CA{renewNow: m.RenewNow, pool: x509.NewCertPool()}
	for i, mr := range m.Roots {
		if mr.Generation < 1 || (i > 0 && mr.Generation <= m.Roots[i-1].Generation) {
			return nil, fmt.Errorf("%s: root generations %d out of order", ManifestFile, mr.Generation)
		}
		r, err := loadRoot(ctx, s, mr.Generation)
		if err != nil {
			return nil, err
		}
		if mr.Fingerprint != "" && mr.Fingerprint != r.ID() {
			return nil, fmt.Errorf("CA root %d: %s is %s, but %s says %s", mr.Generation, CertFileOf(mr.Generation), r.ID(), ManifestFile, mr.Fingerprint)
		}
		r.AddedAt = mr.AddedAt
		if r.AddedAt.IsZero() {
			r.AddedAt = r.Cert.NotBefore.Add(5 * time.Minute) // roots are backdated by 5 minutes
		}
		if r.Endorsement, err = parseEndorsement(mr); err != nil {
			return nil, err
		}
		c.active = append(c.active, r)
		c.pool.AddCert(r.Cert)
	}
	c.td = trustDomainOf(c.active[0].Cert)
	for _, r := range c.active[1:] {
		if td := trustDomainOf(r.Cert); td != c.td {
			return nil, fmt.Errorf("CA root %d is for trust domain %q, root %d for %q", r.Generation, td, c.active[0].Generation, c.td)
		}
	}
	for _, mr := range m.Retired {
		b, _ := pem.Decode([]byte(mr.Certificate))
		if b == nil || b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: retired root %d has no PEM certificate", ManifestFile, mr.Generation)
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: retired root %d: %v", ManifestFile, mr.Generation, err)
		}
		r := &Root{Generation: mr.Generation, Cert: cert, AddedAt: mr.AddedAt, RetiredAt: mr.RetiredAt, fp: protocol.Fingerprint(cert.Raw)}
		if r.Endorsement, err = parseEndorsement(mr); err != nil {
			return nil, err
		}
		c.retired = append(c.retired, r)
	}
	if err := c.checkEndorsements(); err != nil {
		return nil, err
	}
	if len(c.active) == 2 && c.active[1].Endorsement == nil {
		// An overlap begun before endorsements existed: the old root
		// endorses the new one now, while both keys exist. Each reader
		// makes its own (ECDSA signatures differ; every one verifies);
		// the next change to the CA stores one.
		e, err := endorse(c.active[0], c.active[1])
		if err != nil {
			return nil, fmt.Errorf("CA root %d: endorse with root %d: %w", c.active[1].Generation, c.active[0].Generation, err)
		}
		c.active[1].Endorsement = e
	}
	return c, nil
}

// parseEndorsement reads the endorsement of a root of roots.json, if any.
func parseEndorsement(mr manifestRoot) (*x509.Certificate, error) {
	if mr.Endorsement == "" {
		return nil, nil
	}
	b, _ := pem.Decode([]byte(mr.Endorsement))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: the endorsement of root %d is not a PEM certificate", ManifestFile, mr.Generation)
	}
	e, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: the endorsement of root %d: %v", ManifestFile, mr.Generation, err)
	}
	return e, nil
}

// checkEndorsements checks that each endorsement kept is of its root and
// issued by the root of the generation before it, so that a damaged
// roots.json is noticed here rather than by every agent.
func (c *CA) checkEndorsements() error {
	all := append(c.Roots(), c.retired...)
	for _, r := range all {
		if r.Endorsement == nil {
			continue
		}
		var by *Root
		for _, p := range all {
			if p.Generation < r.Generation && (by == nil || p.Generation > by.Generation) {
				by = p
			}
		}
		if by == nil || !Endorses(by.Cert, r.Cert, r.Endorsement) {
			return fmt.Errorf("%s: the endorsement of CA root %d is not its certificate from the root before it", ManifestFile, r.Generation)
		}
	}
	return nil
}

// Endorses reports whether e is an endorsement of root by endorser: a
// certificate for root's subject and public key, issued by endorser. It
// does not look at e's validity period (agents do).
func Endorses(endorser, root, e *x509.Certificate) bool {
	pub, ok := e.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(root.PublicKey) && bytes.Equal(e.RawSubject, root.RawSubject) &&
		bytes.Equal(e.RawIssuer, endorser.RawSubject) && e.CheckSignatureFrom(endorser) == nil
}

// endorse issues with by's key the endorsement of root: a certificate for
// root's subject, public key and trust domain, valid as long as root but
// not beyond by.
func endorse(by, root *Root) (*x509.Certificate, error) {
	if by.key == nil {
		return nil, errors.New("the endorsing root has no key")
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		RawSubject:            root.Cert.RawSubject,
		NotBefore:             root.Cert.NotBefore,
		NotAfter:              root.Cert.NotAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		URIs:                  root.Cert.URIs,
		SubjectKeyId:          root.Cert.SubjectKeyId,
	}
	if tmpl.NotAfter.After(by.Cert.NotAfter) {
		tmpl.NotAfter = by.Cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, by.Cert, root.Cert.PublicKey, by.key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func trustDomainOf(c *x509.Certificate) string {
	if len(c.URIs) != 1 {
		return ""
	}
	return c.URIs[0].Host
}

// loadRoot reads root generation gen's certificate and key and checks that
// they belong together.
func loadRoot(ctx context.Context, s Storage, gen int) (*Root, error) {
	certPath, keyPath := where(s, CertFileOf(gen)), where(s, KeyFileOf(gen))
	certPEM, err := s.ReadFile(ctx, CertFileOf(gen))
	if err != nil {
		return nil, readError("CA certificate", err)
	}
	keyPEM, err := s.ReadFile(ctx, KeyFileOf(gen))
	if err != nil {
		return nil, readError("CA key", err)
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("CA certificate %s holds no PEM certificate", certPath)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate %s: %w", certPath, err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("CA key %s holds no PEM PKCS#8 private key", keyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse CA key %s: %w", keyPath, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("CA key %s cannot sign", keyPath)
	}
	if pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("CA key %s does not belong to certificate %s", keyPath, certPath)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("CA certificate %s is not a CA", certPath)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].Scheme != "spiffe" {
		return nil, errors.New("CA certificate does not name its trust domain (spiffe URI SAN)")
	}
	return &Root{Generation: gen, Cert: cert, key: signer, fp: protocol.Fingerprint(cert.Raw)}, nil
}

// readError reports a file of an existing CA that cannot be read. A
// missing one is damage, never "no CA": it does not wrap fs.ErrNotExist,
// lest the caller make a new CA over this one.
func readError(what string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %v", what, err)
	}
	return fmt.Errorf("read %s: %w", what, err)
}

// pendingSuffix names the copy of a new root's certificate that
// createRoot writes before its key (CertFileOf(gen)+pendingSuffix).
const pendingSuffix = ".pending"

// finishCreation completes the creation of the first root that a process
// stopped between writing ca.key and ca.crt (createRoot): it writes the
// certificate from its pending copy when that copy belongs to the key.
// Without one, it refuses, saying what happened and what an operator may
// do: the certificate was lost after the fact, and a new CA would cut off
// every agent enrolled with the old one.
func finishCreation(ctx context.Context, s Storage) error {
	pending := CertFile + pendingSuffix
	certPEM, err := s.ReadFile(ctx, pending)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("CA key %s exists without its certificate %s: the CA cannot be used, and the relay does not make a new one over it. "+
			"If the first start of this relay was stopped while it created its CA, and no agent was ever enrolled with it, remove %s and start again to create a new CA; "+
			"otherwise restore %s from a backup", where(s, KeyFile), where(s, CertFile), where(s, KeyFile), where(s, CertFile))
	}
	if err != nil {
		return readError("pending CA certificate", err)
	}
	// loadRoot checks that the pending certificate belongs to the key.
	if _, err := loadRoot(ctx, pendingCert{s}, 1); err != nil {
		return fmt.Errorf("finish the CA's creation, cut short, from %s: %w", where(s, pending), err)
	}
	if err := s.WriteFile(ctx, CertFile, certPEM); err != nil {
		return fmt.Errorf("finish the CA's creation, cut short: write CA certificate: %w", err)
	}
	if err := s.Remove(ctx, pending); err != nil {
		return fmt.Errorf("finish the CA's creation, cut short: %w", err)
	}
	return nil
}

// pendingCert is s, whose root certificates are read from their pending
// copies.
type pendingCert struct{ Storage }

func (p pendingCert) ReadFile(ctx context.Context, name string) ([]byte, error) {
	if !isKey(name) {
		name += pendingSuffix
	}
	return p.Storage.ReadFile(ctx, name)
}

// createRoot makes root generation gen in s, each file written
// atomically: the certificate under a pending name, then the key, then
// the certificate under its own name. A process stopped after the key
// leaves the pending certificate for Load to finish with (finishCreation);
// one stopped before leaves no key, so no CA. It does not touch
// roots.json.
func createRoot(ctx context.Context, s Storage, td string, gen int, now time.Time) (*Root, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	cn := "Tether tenant CA " + td
	if gen > 1 {
		// A name of its own, so that an operator (and path building) can
		// tell the roots of an overlap apart.
		cn = fmt.Sprintf("%s #%d", cn, gen)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"Tether"}},
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
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := s.WriteFile(ctx, CertFileOf(gen)+pendingSuffix, certPEM); err != nil {
		return nil, fmt.Errorf("write CA certificate: %w", err)
	}
	// Key before the certificate's own name: a certificate without its
	// key would look like a CA.
	if err := s.WriteFile(ctx, KeyFileOf(gen), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})); err != nil {
		return nil, fmt.Errorf("write CA key: %w", err)
	}
	if err := s.WriteFile(ctx, CertFileOf(gen), certPEM); err != nil {
		return nil, fmt.Errorf("write CA certificate: %w", err)
	}
	if err := s.Remove(ctx, CertFileOf(gen)+pendingSuffix); err != nil {
		return nil, fmt.Errorf("remove pending CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Root{Generation: gen, Cert: cert, AddedAt: now, key: key, fp: protocol.Fingerprint(der)}, nil
}

// Rotate adds a new root to the CA in s and returns the CA with both
// roots. renewNow asks agents to move to the new root at once. The caller
// holds the lock that serialises changes to the CA. It fails with
// ErrRotating while an earlier rotation's old root is still active.
func Rotate(ctx context.Context, s Storage, now time.Time, renewNow bool) (*CA, error) {
	c, err := Load(ctx, s)
	if err != nil {
		return nil, err
	}
	if len(c.active) > 1 {
		return nil, ErrRotating
	}
	gen := 1
	for _, r := range append(c.Roots(), c.retired...) {
		gen = max(gen, r.Generation+1)
	}
	// Files of gen left by a rotation that crashed before roots.json was
	// written are not referenced by anything and are simply replaced.
	root, err := createRoot(ctx, s, c.td, gen, now.Truncate(time.Second))
	if err != nil {
		return nil, err
	}
	// The current root endorses the new one, so that agents, which trust
	// the current root, accept the new one (and no root without it).
	e, err := endorse(c.active[0], root)
	if err != nil {
		return nil, fmt.Errorf("endorse the new CA root: %w", err)
	}
	m := c.toManifest()
	m.Roots = append(m.Roots, manifestRoot{Generation: root.Generation, Fingerprint: root.ID(), AddedAt: root.AddedAt.UTC(),
		Endorsement: string(pemCert(e))})
	m.RenewNow = renewNow
	if err := writeManifest(ctx, s, m); err != nil {
		return nil, err
	}
	return Load(ctx, s)
}

// Retire ends a rotation: the old root stops being trusted and its key is
// deleted; the new root signs and serves alone. It returns the new CA and
// the retired root. The caller holds the lock that serialises changes to
// the CA.
func Retire(ctx context.Context, s Storage, now time.Time) (*CA, *Root, error) {
	c, err := Load(ctx, s)
	if err != nil {
		return nil, nil, err
	}
	if len(c.active) < 2 {
		return nil, nil, ErrNotRotating
	}
	old := c.active[0]
	m := c.toManifest()
	retired := m.Roots[0]
	retired.RetiredAt = now.UTC().Truncate(time.Second)
	retired.Certificate = string(old.PEM())
	m.Roots = m.Roots[1:]
	m.Retired = append(m.Retired, retired)
	m.RenewNow = false
	if err := writeManifest(ctx, s, m); err != nil {
		return nil, nil, err
	}
	// roots.json no longer names the old root: its files can go. A crash
	// before this leaves them unused; the next retirement removes them.
	if err := removeRetiredFiles(ctx, s, m); err != nil {
		return nil, nil, err
	}
	nc, err := Load(ctx, s)
	if err != nil {
		return nil, nil, err
	}
	return nc, nc.retired[len(nc.retired)-1], nil
}

// SetRenewNow asks agents with certificates from the old root to renew at
// once (or stops asking). The caller holds the lock that serialises
// changes to the CA.
func SetRenewNow(ctx context.Context, s Storage, renewNow bool) (*CA, error) {
	c, err := Load(ctx, s)
	if err != nil {
		return nil, err
	}
	if len(c.active) < 2 {
		return nil, ErrNotRotating
	}
	m := c.toManifest()
	m.RenewNow = renewNow
	if err := writeManifest(ctx, s, m); err != nil {
		return nil, err
	}
	return Load(ctx, s)
}

func (c *CA) toManifest() manifest {
	m := manifest{RenewNow: c.renewNow}
	for _, r := range c.active {
		m.Roots = append(m.Roots, manifestRoot{Generation: r.Generation, Fingerprint: r.ID(), AddedAt: r.AddedAt.UTC(),
			Endorsement: string(pemCert(r.Endorsement))})
	}
	for _, r := range c.retired {
		m.Retired = append(m.Retired, manifestRoot{Generation: r.Generation, Fingerprint: r.ID(), AddedAt: r.AddedAt.UTC(),
			RetiredAt: r.RetiredAt.UTC(), Certificate: string(r.PEM()), Endorsement: string(pemCert(r.Endorsement))})
	}
	return m
}

// pemCert encodes c in PEM form; nil for nil.
func pemCert(c *x509.Certificate) []byte {
	if c == nil {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func writeManifest(ctx context.Context, s Storage, m manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := s.WriteFile(ctx, ManifestFile, append(b, '\n')); err != nil {
		return fmt.Errorf("write %s: %w", ManifestFile, err)
	}
	return nil
}

func removeRetiredFiles(ctx context.Context, s Storage, m manifest) error {
	for _, r := range m.Retired {
		for _, name := range []string{KeyFileOf(r.Generation), CertFileOf(r.Generation)} {
			if err := s.Remove(ctx, name); err != nil {
				return fmt.Errorf("remove retired CA root: %w", err)
			}
		}
	}
	return nil
}

// Roots returns the active roots, oldest first.
func (c *CA) Roots() []*Root { return append([]*Root(nil), c.active...) }

// Retired returns the retired roots, oldest first; they have no keys.
func (c *CA) Retired() []*Root { return append([]*Root(nil), c.retired...) }

// Signer is the newest root: it issues agent certificates.
func (c *CA) Signer() *Root { return c.active[len(c.active)-1] }

// Serving is the oldest active root: it issues the relay's server
// certificate, and join tokens pin it, because every agent trusts it.
func (c *CA) Serving() *Root { return c.active[0] }

// Rotating reports whether an overlap is in progress (two active roots).
func (c *CA) Rotating() bool { return len(c.active) > 1 }

// RenewNow reports whether agents still on the old root of an overlap are
// to renew at once.
func (c *CA) RenewNow() bool { return c.renewNow && c.Rotating() }

// Fingerprint is the serving root's fingerprint: the one join tokens pin.
func (c *CA) Fingerprint() [32]byte { return c.Serving().fp }

// BundlePEM returns every active root in PEM form, oldest first: what
// agents must trust to reach the relay during and after an overlap.
func (c *CA) BundlePEM() []byte {
	var b []byte
	for _, r := range c.active {
		b = append(b, r.PEM()...)
	}
	return b
}

// EndorsementsPEM returns the endorsements of the active roots in PEM
// form, oldest first (none for a CA never rotated): what lets an agent
// accept a root of BundlePEM it does not trust yet.
func (c *CA) EndorsementsPEM() []byte {
	var b []byte
	for _, r := range c.active {
		b = append(b, pemCert(r.Endorsement)...)
	}
	return b
}

// TrustDomain is the SPIFFE trust domain the CA issues identities in.
func (c *CA) TrustDomain() string { return c.td }

// Pool returns a pool holding every active root (for verifying agents).
func (c *CA) Pool() *x509.CertPool { return c.pool }

// IssuerOf returns the active root that issued cert, or nil.
func (c *CA) IssuerOf(cert *x509.Certificate) *Root {
	for _, r := range c.active {
		if r.issued(cert) {
			return r
		}
	}
	return nil
}

// RetiredIssuerOf returns the retired root that issued cert, or nil.
func (c *CA) RetiredIssuerOf(cert *x509.Certificate) *Root {
	for _, r := range c.retired {
		if r.issued(cert) {
			return r
		}
	}
	return nil
}

// Root returns the root (active or retired) with printable fingerprint id,
// or nil.
func (c *CA) Root(id string) *Root {
	for _, r := range append(c.Roots(), c.retired...) {
		if r.ID() == id {
			return r
		}
	}
	return nil
}

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

// SignAgent issues, from root (one of c's active roots, normally Signer),
// a client certificate for agent id to the key in csr (already checked with
// CheckCSR). The identity comes from the caller — nothing in the CSR's
// subject or extensions is copied.
func (c *CA) SignAgent(root *Root, csr *x509.CertificateRequest, id identity.Agent, lifetime time.Duration, now time.Time) (*x509.Certificate, error) {
	if root == nil || root.key == nil {
		return nil, errors.New("sign agent: no active root to sign with")
	}
	if id.TrustDomain != c.td {
		return nil, fmt.Errorf("sign agent: trust domain %q is not this CA's %q", id.TrustDomain, c.td)
	}
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("sign agent: %w", err)
	}
	cert, err := signClient(root, csr.PublicKey, pkix.Name{CommonName: id.ID, OrganizationalUnit: []string{id.Tenant}}, id.URI(), lifetime, now)
	if err != nil {
		return nil, fmt.Errorf("sign agent certificate: %w", err)
	}
	return cert, nil
}

// signClient issues from root a client certificate for pub naming subject
// and the SPIFFE ID uri, valid from five minutes ago (for clock skew) for
// lifetime, but never beyond the root.
func signClient(root *Root, pub crypto.PublicKey, subject pkix.Name, uri *url.URL, lifetime time.Duration, now time.Time) (*x509.Certificate, error) {
	notAfter := now.Add(lifetime)
	if notAfter.After(root.Cert.NotAfter) {
		notAfter = root.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      subject,
		NotBefore:    now.Add(-AgentBackdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{uri},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Cert, pub, root.key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// IssueRelay issues a fresh key and server certificate for the relay,
// carrying spiffe://<td>/relay, from the serving root. The returned chain
// includes that root so that enrolling agents can find the CA they pinned.
func (c *CA) IssueRelay(lifetime time.Duration, now time.Time) (*tls.Certificate, error) {
	root := c.Serving()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(root.Cert.NotAfter) {
		notAfter = root.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "Tether relay " + c.td},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		URIs:         []*url.URL{identity.RelayURI(c.td)},
		DNSNames:     []string{identity.RelayDNSName},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Cert, &key.PublicKey, root.key)
	if err != nil {
		return nil, fmt.Errorf("issue relay certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der, root.Cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return n.Add(n, big.NewInt(1))
}

// IssuePeer issues a fresh key and certificate for relay id of a cluster,
// for its relay-to-relay links: spiffe://<td>/relay/<id>, good for both
// server and client authentication, since each relay of a link may be the
// one that dials. It comes from the serving root, which every relay of the
// cluster trusts, including one that has not yet read a rotation. The
// chain holds the leaf alone: peers verify it against the CA's roots.
func (c *CA) IssuePeer(id string, lifetime time.Duration, now time.Time) (*tls.Certificate, error) {
	peer := identity.Relay{TrustDomain: c.td, ID: id}
	if err := peer.Validate(); err != nil {
		return nil, fmt.Errorf("issue relay-to-relay certificate: %w", err)
	}
	root := c.Serving()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(root.Cert.NotAfter) {
		notAfter = root.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: id, OrganizationalUnit: []string{"relay"}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{peer.URI()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Cert, &key.PublicKey, root.key)
	if err != nil {
		return nil, fmt.Errorf("issue relay-to-relay certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
