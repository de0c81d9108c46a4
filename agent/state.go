package agent

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/tetherhq/tether/protocol/identity"
)

// Files in the state directory. All are written owner-only (0600).
const (
	keyFile      = "agent.key"
	certFile     = "agent.crt"
	caFile       = "ca.crt"
	identityFile = "agent.json"
)

// State is an enrolled agent's identity as stored in its state directory.
type State struct {
	Dir         string
	AgentID     string
	Tenant      string
	TrustDomain string
	// Relay is the address the agent enrolled through.
	Relay      string
	EnrolledAt time.Time

	Cert  tls.Certificate // with Leaf set
	Roots *x509.CertPool  // the relay's CA roots (two during a CA rotation)
	// RootCerts are the certificates in Roots.
	RootCerts []*x509.Certificate
}

type identityJSON struct {
	AgentID     string    `json:"agent_id"`
	Tenant      string    `json:"tenant"`
	TrustDomain string    `json:"trust_domain"`
	Relay       string    `json:"relay"`
	EnrolledAt  time.Time `json:"enrolled_at"`
}

// ErrNotEnrolled means the state directory holds no identity yet.
var ErrNotEnrolled = errors.New("agent is not enrolled")

// LoadState reads the identity from dir and checks that its parts agree.
func LoadState(dir string) (*State, error) {
	raw, err := os.ReadFile(filepath.Join(dir, identityFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s has no %s (run tether-agent enroll first)", ErrNotEnrolled, dir, identityFile)
	}
	if err != nil {
		return nil, fmt.Errorf("read agent identity: %w", err)
	}
	var id identityJSON
	if err := json.Unmarshal(raw, &id); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, identityFile), err)
	}
	s := &State{Dir: dir, AgentID: id.AgentID, Tenant: id.Tenant, TrustDomain: id.TrustDomain, Relay: id.Relay, EnrolledAt: id.EnrolledAt}
	for _, f := range []string{keyFile, certFile} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err == nil && fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("%s has permissions %v: it must be readable by its owner only (chmod 600)", filepath.Join(dir, f), fi.Mode().Perm())
		}
	}
	s.Cert, err = loadKeyPair(dir)
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, caFile))
	if err != nil {
		return nil, fmt.Errorf("read pinned CA: %w", err)
	}
	if s.RootCerts, s.Roots, err = parseRoots(caPEM, s.TrustDomain); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, caFile), err)
	}
	got, err := identity.AgentFromCertificate(s.Cert.Leaf, s.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("agent certificate: %w", err)
	}
	if got.Tenant != s.Tenant || got.ID != s.AgentID {
		return nil, fmt.Errorf("agent certificate names %s, but %s says tenant %q agent %q", got, identityFile, s.Tenant, s.AgentID)
	}
	return s, nil
}

// save writes the state to s.Dir: key first, identity last, each file
// replaced atomically, so an interrupted save never leaves a state that
// loads but mismatches.
func (s *State) save(keyPEM, certPEM, caPEM []byte) error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	id, err := json.MarshalIndent(identityJSON{AgentID: s.AgentID, Tenant: s.Tenant, TrustDomain: s.TrustDomain, Relay: s.Relay, EnrolledAt: s.EnrolledAt}, "", "  ")
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{keyFile, keyPEM}, {certFile, certPEM}, {caFile, caPEM}, {identityFile, append(id, '\n')}} {
		if err := writeFileAtomic(filepath.Join(s.Dir, f.name), f.data); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	return nil
}

// loadKeyPair loads the agent's key and certificate. A renewal replaces
// the key first and the certificate second (replaceKeyPair); if it was
// interrupted between the two, the new certificate is still waiting next
// to the files, and the rename is finished here.
func loadKeyPair(dir string) (tls.Certificate, error) {
	crt, key := filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err == nil {
		return pair, nil
	}
	if next, nerr := tls.LoadX509KeyPair(crt+nextSuffix, key); nerr == nil {
		if rerr := os.Rename(crt+nextSuffix, crt); rerr != nil {
			return tls.Certificate{}, fmt.Errorf("finish an interrupted certificate renewal: %w", rerr)
		}
		return next, nil
	}
	return tls.Certificate{}, fmt.Errorf("load agent certificate and key: %w", err)
}

// nextSuffix names the files a renewal writes before moving them in place.
const nextSuffix = ".next"

// replaceKeyPair installs a renewed key and certificate (and the roots the
// relay sent) so that no crash leaves a state that cannot load: both new
// files are written and synced beside the old ones, then the key is moved
// in, then the certificate; loadKeyPair completes a move cut short.
func (s *State) replaceKeyPair(keyPEM, certPEM, caPEM []byte) error {
	crt, key := filepath.Join(s.Dir, certFile), filepath.Join(s.Dir, keyFile)
	if caPEM != nil {
		if err := writeFileAtomic(filepath.Join(s.Dir, caFile), caPEM); err != nil {
			return fmt.Errorf("write %s: %w", caFile, err)
		}
	}
	if err := writeFileAtomic(crt+nextSuffix, certPEM); err != nil {
		return fmt.Errorf("write new certificate: %w", err)
	}
	if err := writeFileAtomic(key, keyPEM); err != nil {
		os.Remove(crt + nextSuffix)
		return fmt.Errorf("write new key: %w", err)
	}
	if err := os.Rename(crt+nextSuffix, crt); err != nil {
		return fmt.Errorf("install new certificate: %w", err)
	}
	syncDir(s.Dir)
	return nil
}

// syncDir makes renames in dir durable where the system allows it
// (Windows cannot sync a directory; the renames are still ordered).
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// maxRoots bounds the CA roots an agent keeps (a relay sends two during a
// rotation).
const maxRoots = 8

// parseRoots reads the relay's CA roots from PEM: one or more certificates,
// each a CA of trust domain td. It returns them and a pool holding them.
func parseRoots(pemData []byte, td string) ([]*x509.Certificate, *x509.CertPool, error) {
	var certs []*x509.Certificate
	pool := x509.NewCertPool()
	for rest := pemData; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, nil, fmt.Errorf("CA roots: unexpected PEM block %q", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("CA roots: %w", err)
		}
		if !c.IsCA || len(c.URIs) != 1 || c.URIs[0].Scheme != "spiffe" || c.URIs[0].Host != td {
			return nil, nil, fmt.Errorf("CA roots: %q is not a CA of trust domain %s", c.Subject.CommonName, td)
		}
		if len(certs) == maxRoots {
			return nil, nil, fmt.Errorf("CA roots: more than %d", maxRoots)
		}
		certs = append(certs, c)
		pool.AddCert(c)
	}
	if len(certs) == 0 {
		return nil, nil, errors.New("CA roots: no certificate")
	}
	return certs, pool, nil
}

// rootsPEM encodes roots for ca.crt.
func rootsPEM(roots []*x509.Certificate) []byte {
	var b []byte
	for _, c := range roots {
		b = append(b, pemBlock("CERTIFICATE", c.Raw)...)
	}
	return b
}

// NotAfter is when the agent's certificate expires.
func (s *State) NotAfter() time.Time { return s.Cert.Leaf.NotAfter }

// writeFileAtomic writes data (mode 0600) to a temporary file next to path
// and renames it into place.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // no-op after a successful rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
