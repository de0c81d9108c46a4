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
	"strings"
	"time"

	"github.com/tetherhq/tether/protocol/identity"
)

// Files in the state directory. All are written owner-only (0600).
const (
	keyFile      = "agent.key"
	certFile     = "agent.crt"
	caFile       = "ca.crt"
	identityFile = IdentityFile
)

// IdentityFile is the file in the state directory that says which agent
// it holds (id, tenant): a directory with it is an agent's.
const IdentityFile = "agent.json"

// stateFiles are the files of an identity, in the order a save moves them
// in.
var stateFiles = [...]string{keyFile, certFile, caFile, identityFile}

// An enrolment writes the new identity beside the old one, each file as
// <name>.enrol, then the marker enrol.ready, then moves the files in (save).
const (
	enrolSuffix    = ".enrol"
	enrolReadyFile = "enrol.ready"
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
// An enrolment cut short after its new identity was complete on disk is
// finished first (finishEnrolment).
func LoadState(dir string) (*State, error) {
	if err := finishEnrolment(dir); err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(dir, identityFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s has no %s (run tether-agent enroll first)", ErrNotEnrolled, dir, identityFile)
	}
	if err != nil {
		return nil, fmt.Errorf("read agent identity: %w", err)
	}
	var id identityJSON
	if err := json.Unmarshal(raw, &id); err != nil {
		return nil, fmt.Errorf("parse %s: %w; %s", filepath.Join(dir, identityFile), err, reenrolHint(dir))
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
		return nil, fmt.Errorf("the agent certificate %s names %s, but %s says tenant %q agent %q; %s",
			filepath.Join(dir, certFile), got, filepath.Join(dir, identityFile), s.Tenant, s.AgentID, reenrolHint(dir))
	}
	return s, nil
}

// reenrolHint is the way out of a state directory whose identity does not
// load.
func reenrolHint(dir string) string {
	return fmt.Sprintf("this identity cannot be used: enrol the agent again with a new join token (tether-agent enroll --force --state-dir %s …)", dir)
}

// save writes a new identity to s.Dir, replacing the one there (enroll
// --force), so that a crash at any point leaves one whole identity, the
// old or the new, never parts of both:
//
//  1. the four files are written and synced beside the old ones as
//     <name>.enrol;
//  2. the marker enrol.ready is written: from here on the new identity
//     counts;
//  3. each <name>.enrol is renamed to <name>;
//  4. the marker is removed.
//
// The directory is synced after each step. A save cut short before the
// marker leaves the old identity as it was (the .enrol files are removed
// when the save fails, and overwritten by the next save after a crash);
// one cut short after it is finished by the next LoadState or save
// (finishEnrolment).
func (s *State) save(keyPEM, certPEM, caPEM []byte) error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	id, err := json.MarshalIndent(identityJSON{AgentID: s.AgentID, Tenant: s.Tenant, TrustDomain: s.TrustDomain, Relay: s.Relay, EnrolledAt: s.EnrolledAt}, "", "  ")
	if err != nil {
		return err
	}
	// A marker of an earlier save cut short would move the files below in
	// before they are all written.
	if err := finishEnrolment(s.Dir); err != nil {
		return err
	}
	data := map[string][]byte{keyFile: keyPEM, certFile: certPEM, caFile: caPEM, identityFile: append(id, '\n')}
	discard := func() {
		for _, name := range stateFiles {
			os.Remove(filepath.Join(s.Dir, name+enrolSuffix))
		}
	}
	for _, name := range stateFiles {
		if err := writeFileAtomic(filepath.Join(s.Dir, name+enrolSuffix), data[name]); err != nil {
			discard()
			return fmt.Errorf("write %s: %w", name+enrolSuffix, err)
		}
	}
	if err := writeFileAtomic(filepath.Join(s.Dir, enrolReadyFile), []byte("agent "+s.AgentID+"\n")); err != nil {
		discard()
		return fmt.Errorf("write %s: %w", enrolReadyFile, err)
	}
	return finishEnrolment(s.Dir)
}

// finishEnrolment completes, in dir, the move of a new identity that save
// started: when the marker is there, every <name>.enrol still there is
// renamed to <name> (those already moved are gone), a certificate an
// interrupted renewal of the old identity left is removed, and the marker
// last. Without the marker it does nothing: .enrol files are then the
// unfinished writes of a save cut short, and the identity in place is
// whole.
func finishEnrolment(dir string) error {
	marker := filepath.Join(dir, enrolReadyFile)
	if _, err := os.Stat(marker); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("finish an interrupted enrolment: %w", err)
	}
	for _, name := range stateFiles {
		p := filepath.Join(dir, name)
		if err := os.Rename(p+enrolSuffix, p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("finish an interrupted enrolment: %w", err)
		}
		syncDir(dir)
	}
	if err := os.Remove(filepath.Join(dir, certFile+nextSuffix)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("finish an interrupted enrolment: %w", err)
	}
	if err := os.Remove(marker); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("finish an interrupted enrolment: %w", err)
	}
	syncDir(dir)
	return nil
}

// loadKeyPair loads the agent's key and certificate. A renewal replaces
// the key first and the certificate second (replaceKeyPair); if it was
// interrupted between the two, the new certificate is still waiting next
// to the files, and the rename is finished here.
func loadKeyPair(dir string) (tls.Certificate, error) {
	crt, key := filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
	pair, err := readKeyPair(crt, key)
	if err == nil {
		return pair, nil
	}
	if next, nerr := readKeyPair(crt+nextSuffix, key); nerr == nil {
		if rerr := os.Rename(crt+nextSuffix, crt); rerr != nil {
			return tls.Certificate{}, fmt.Errorf("finish an interrupted certificate renewal: %w", rerr)
		}
		syncDir(dir)
		return next, nil
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && !errors.Is(err, fs.ErrNotExist) {
		// Not the files' content (permissions, an I/O error): enrolling
		// again would not help.
		return tls.Certificate{}, fmt.Errorf("load agent certificate and key: %w", err)
	}
	return tls.Certificate{}, fmt.Errorf("load agent certificate and key: %w; %s", err, reenrolHint(dir))
}

// readKeyPair loads a key pair; its errors name the file at fault.
func readKeyPair(crtPath, keyPath string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(crtPath)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return tls.Certificate{}, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err == nil {
		return pair, nil
	}
	if b, _ := pem.Decode(certPEM); b == nil || b.Type != "CERTIFICATE" {
		return tls.Certificate{}, fmt.Errorf("%s holds no certificate (damaged or cut short): %w", crtPath, err)
	} else if _, cerr := x509.ParseCertificate(b.Bytes); cerr != nil {
		return tls.Certificate{}, fmt.Errorf("%s: unreadable certificate (damaged or cut short): %w", crtPath, cerr)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || !strings.HasSuffix(b.Type, "PRIVATE KEY") {
		return tls.Certificate{}, fmt.Errorf("%s holds no private key (damaged or cut short): %w", keyPath, err)
	}
	return tls.Certificate{}, fmt.Errorf("the key in %s does not go with the certificate in %s: %w", keyPath, crtPath, err)
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
	// writeFileAtomic syncs the directory after its rename: the new key is
	// on disk before the certificate moves, so that a power loss cannot
	// keep the certificate's rename and lose the key's.
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

// writeFileAtomic writes data (mode 0600) to a temporary file next to path,
// syncs it, renames it into place and syncs the directory: the new content
// is on disk, whole, when it returns. The temporary files of path that
// writes cut short by a crash or power loss left (each a whole copy: of
// the agent's private key, for agent.key) are removed first once older
// than staleTemp (removeStaleTemps).
func writeFileAtomic(path string, data []byte) error {
	removeStaleTemps(path, time.Now())
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
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// staleTemp is the age past which a temporary file left beside its target
// by an interrupted writeFileAtomic is removed. A younger one may be
// another process's write in progress (an update's trial runs beside the
// agent).
const staleTemp = time.Hour

// removeStaleTemps removes, best effort, the temporary files an
// interrupted writeFileAtomic of path left (.<name>.tmp followed by the
// digits os.CreateTemp chose) last modified more than staleTemp before now.
func removeStaleTemps(path string, now time.Time) {
	dir, prefix := filepath.Dir(path), "."+filepath.Base(path)+".tmp"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || rest == "" || strings.Trim(rest, "0123456789") != "" || !e.Type().IsRegular() {
			continue
		}
		if fi, err := e.Info(); err == nil && now.Sub(fi.ModTime()) > staleTemp {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}
