// Package release is the format of a signed agent release, shared by the
// relay (which stores and serves releases) and the agent (which verifies
// them before it lets one near its binary).
//
// A release is one agent binary for one OS, architecture and channel, and
// a manifest describing it:
//
//	{"version":"1.2.3","os":"linux","arch":"amd64","channel":"stable",
//	 "sha256":"<hex of the binary>","size":12345678,"expires":"2030-01-02T15:04:05Z"}
//
// The manifest is signed with ed25519 in minisign format (manifest.json.minisig),
// and so is the binary itself (the minisign signature minio/selfupdate's
// Verifier checks when the binary is applied). The signing key stays with
// the vendor; relays store and serve only what was signed.
package release

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"aead.dev/minisign"
	"golang.org/x/mod/semver"
)

// Limits on what a verifier reads.
const (
	MaxManifestSize  = 4 << 10   // a manifest is a few hundred bytes
	MaxSignatureSize = 4 << 10   // a minisign signature is about 300
	MaxBinarySize    = 512 << 20 // no agent binary is this large
	DefaultChannel   = "stable"
)

// Files of a signed release in a directory (what "release sign" writes and
// "release publish --signed" reads).
const (
	BinaryFile            = "tether-agent"
	BinarySignatureFile   = "tether-agent.minisig"
	ManifestFile          = "manifest.json"
	ManifestSignatureFile = "manifest.json.minisig"
)

// Manifest describes one release binary.
type Manifest struct {
	Version string    `json:"version"` // semantic version, without a "v"
	OS      string    `json:"os"`      // GOOS
	Arch    string    `json:"arch"`    // GOARCH
	Channel string    `json:"channel"` // "stable", "beta", …
	SHA256  string    `json:"sha256"`  // lower-case hex of the binary
	Size    int64     `json:"size"`    // bytes of the binary
	Expires time.Time `json:"expires"` // after this, agents refuse the manifest
}

// Refusal is why a release was refused. Reason is a short stable word
// (below) the relay records and counts; the message explains it.
type Refusal struct {
	Reason  string
	Message string
}

func (r *Refusal) Error() string { return r.Message }

// Refusal reasons.
const (
	ReasonSignature = "signature" // missing, malformed or not valid
	ReasonKey       = "key"       // signed by a key the agent does not trust
	ReasonManifest  = "manifest"  // signed, but not a valid manifest
	ReasonPlatform  = "platform"  // built for another OS or architecture
	ReasonChannel   = "channel"   // from another channel
	ReasonExpired   = "expired"   // the manifest's expiry has passed
	ReasonNotNewer  = "not_newer" // not newer than the running version
	ReasonFailed    = "failed"    // this version failed on this agent before
	ReasonSize      = "size"      // the download is not the manifest's size
	ReasonHash      = "hash"      // the download's SHA-256 is not the manifest's
	ReasonDownload  = "download"  // the download failed or took too long
	ReasonNoKeys    = "no_keys"   // the agent trusts no update key: updates are off
	ReasonApply     = "apply"     // replacing the binary failed
	ReasonBusy      = "busy"      // another update is in progress, or the agent stopped during the trial: not a verdict on the release, which is offered again
	ReasonUnhealthy = "unhealthy" // the new binary did not connect in time
	ReasonRemoved   = "removed"   // the relay no longer has the release (removed since it was offered): not a verdict on the release, which is taken again when offered again
)

func refusef(reason, format string, args ...any) *Refusal {
	return &Refusal{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// ReasonOf returns the refusal reason of err, or "" when err is not one.
func ReasonOf(err error) string {
	var r *Refusal
	if errors.As(err, &r) {
		return r.Reason
	}
	return ""
}

// ValidVersion reports whether v is a semantic version without a "v"
// prefix (1.2.3, 1.2.3-rc.1).
func ValidVersion(v string) bool {
	return v != "" && v[0] != 'v' && semver.IsValid("v"+v) && strings.Count(v, ".") >= 2
}

// CompareVersions compares two valid versions like strings.Compare; an
// invalid version ("dev") sorts before every valid one.
func CompareVersions(a, b string) int {
	return semver.Compare("v"+a, "v"+b)
}

// Validate checks every field of m.
func (m *Manifest) Validate() error {
	var errs []error
	if !ValidVersion(m.Version) {
		errs = append(errs, fmt.Errorf("version %q is not a semantic version (1.2.3)", m.Version))
	}
	for _, f := range []struct{ name, v string }{{"os", m.OS}, {"arch", m.Arch}, {"channel", m.Channel}} {
		if !isWord(f.v) {
			errs = append(errs, fmt.Errorf("%s %q: want 1 to 32 lower-case letters, digits, hyphens", f.name, f.v))
		}
	}
	if b, err := hex.DecodeString(m.SHA256); err != nil || len(b) != 32 || strings.ToLower(m.SHA256) != m.SHA256 {
		errs = append(errs, fmt.Errorf("sha256 %q: want 64 lower-case hex digits", m.SHA256))
	}
	if m.Size <= 0 || m.Size > MaxBinarySize {
		errs = append(errs, fmt.Errorf("size %d: want 1 to %d bytes", m.Size, MaxBinarySize))
	}
	if m.Expires.IsZero() {
		errs = append(errs, errors.New("expires is missing"))
	}
	return errors.Join(errs...)
}

func isWord(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Marshal encodes m canonically (the bytes that are signed).
func (m *Manifest) Marshal() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	c := *m
	c.Expires = c.Expires.UTC().Truncate(time.Second)
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// ParseManifest decodes and validates a manifest strictly: unknown fields,
// trailing data and oversized input are errors.
func ParseManifest(b []byte) (Manifest, error) {
	var m Manifest
	if len(b) > MaxManifestSize {
		return m, fmt.Errorf("manifest: %d bytes exceeds %d", len(b), MaxManifestSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("manifest: %w", err)
	}
	if dec.More() {
		return Manifest{}, errors.New("manifest: data after the JSON object")
	}
	if err := m.Validate(); err != nil {
		return Manifest{}, fmt.Errorf("manifest: %w", err)
	}
	return m, nil
}

// GenerateKey makes a signing key pair: the private key and the public key
// in minisign's text format.
func GenerateKey() (private, public []byte, err error) {
	pub, priv, err := minisign.GenerateKey(nil)
	if err != nil {
		return nil, nil, err
	}
	if private, err = priv.MarshalText(); err != nil {
		return nil, nil, err
	}
	public, err = pub.MarshalText()
	return private, append(public, '\n'), err
}

// ParsePrivateKey reads an unencrypted minisign private key.
func ParsePrivateKey(text []byte) (minisign.PrivateKey, error) {
	var k minisign.PrivateKey
	if err := k.UnmarshalText(bytes.TrimSpace(text)); err != nil {
		return k, fmt.Errorf("release key: %w", err)
	}
	return k, nil
}

// PublicKeyOf returns the text form of the public key of k.
func PublicKeyOf(k minisign.PrivateKey) []byte {
	pub := k.Public().(minisign.PublicKey)
	b, _ := pub.MarshalText() // never fails
	return append(b, '\n')
}

// Signed is a signed release: the manifest bytes and the two signatures.
type Signed struct {
	Manifest          []byte
	ManifestSignature []byte
	BinarySignature   []byte
}

// Sign signs m (which must describe binary) and binary with key.
func Sign(key minisign.PrivateKey, m Manifest, binary []byte) (Signed, error) {
	raw, err := m.Marshal()
	if err != nil {
		return Signed{}, err
	}
	comment := fmt.Sprintf("tether-agent %s %s/%s %s expires %s", m.Version, m.OS, m.Arch, m.Channel, m.Expires.UTC().Format(time.RFC3339))
	return Signed{
		Manifest:          raw,
		ManifestSignature: minisign.SignWithComments(key, raw, comment, "signature from tether release key"),
		BinarySignature:   minisign.SignWithComments(key, binary, comment, "signature from tether release key"),
	}, nil
}

// Keys are the update keys an agent trusts.
type Keys []minisign.PublicKey

// ParseKeys parses public keys in minisign's text format (with or without
// the comment line). Empty strings are skipped.
func ParseKeys(texts []string) (Keys, error) {
	var ks Keys
	for i, t := range texts {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		var k minisign.PublicKey
		if err := k.UnmarshalText([]byte(t)); err != nil {
			return nil, fmt.Errorf("update key %d: %w", i+1, err)
		}
		ks = append(ks, k)
	}
	return ks, nil
}

// KeyID prints a minisign key id as minisign does.
func KeyID(id uint64) string { return strings.ToUpper(strconv.FormatUint(id, 16)) }

// find returns the key with id.
func (ks Keys) find(id uint64) (minisign.PublicKey, bool) {
	for _, k := range ks {
		if k.ID() == id {
			return k, true
		}
	}
	return minisign.PublicKey{}, false
}

// Verify checks that sig is a valid signature of manifest by one of ks and
// only then parses the manifest. It returns the manifest and the key that
// signed it. Errors are *Refusal.
func (ks Keys) Verify(manifest, sig []byte) (Manifest, minisign.PublicKey, error) {
	none := minisign.PublicKey{}
	if len(ks) == 0 {
		return Manifest{}, none, refusef(ReasonNoKeys, "this agent trusts no update key (update: public_keys in its config, or keys built in): updates are off")
	}
	k, err := ks.keyFor(sig)
	if err != nil {
		return Manifest{}, none, err
	}
	if len(manifest) > MaxManifestSize || !minisign.Verify(k, manifest, sig) {
		return Manifest{}, none, refusef(ReasonSignature, "the manifest's signature is not valid for key %s: the manifest was altered or the signature belongs to something else", KeyID(k.ID()))
	}
	m, err := ParseManifest(manifest)
	if err != nil {
		return Manifest{}, none, refusef(ReasonManifest, "signed manifest is not valid: %v", err)
	}
	return m, k, nil
}

// keyFor finds the trusted key a signature names.
func (ks Keys) keyFor(sig []byte) (minisign.PublicKey, error) {
	if len(sig) == 0 {
		return minisign.PublicKey{}, refusef(ReasonSignature, "the release is not signed")
	}
	if len(sig) > MaxSignatureSize {
		return minisign.PublicKey{}, refusef(ReasonSignature, "signature of %d bytes exceeds %d", len(sig), MaxSignatureSize)
	}
	var s minisign.Signature
	if err := s.UnmarshalText(sig); err != nil {
		return minisign.PublicKey{}, refusef(ReasonSignature, "the release's signature is malformed: %v", err)
	}
	k, ok := ks.find(s.KeyID)
	if !ok {
		return minisign.PublicKey{}, refusef(ReasonKey, "the release is signed by key %s, which this agent does not trust", KeyID(s.KeyID))
	}
	return k, nil
}

// Target is what an agent accepts: its own platform, channel and version.
type Target struct {
	OS, Arch, Channel string
	Version           string          // the running version
	Now               time.Time       // for the expiry
	Failed            map[string]bool // versions that failed on this agent
}

// Check refuses a verified manifest that is not for t. Errors are *Refusal.
func (t Target) Check(m Manifest) error {
	switch {
	case m.OS != t.OS || m.Arch != t.Arch:
		return refusef(ReasonPlatform, "release %s is built for %s/%s; this agent runs on %s/%s", m.Version, m.OS, m.Arch, t.OS, t.Arch)
	case m.Channel != t.Channel:
		return refusef(ReasonChannel, "release %s is on channel %q; this agent follows %q", m.Version, m.Channel, t.Channel)
	case !t.Now.Before(m.Expires):
		return refusef(ReasonExpired, "the manifest of release %s expired at %s", m.Version, m.Expires.UTC().Format(time.RFC3339))
	case ValidVersion(t.Version) && CompareVersions(m.Version, t.Version) <= 0:
		return refusef(ReasonNotNewer, "release %s is not newer than the running version %s", m.Version, t.Version)
	case t.Failed[m.Version]:
		return refusef(ReasonFailed, "release %s failed on this agent before and is not tried again", m.Version)
	}
	return nil
}

// SignFile signs the binary at binPath as described by m (whose SHA256 and
// Size are filled in from the file) and writes the four files of a signed
// release into outDir.
func SignFile(key minisign.PrivateKey, m Manifest, binPath, outDir string) (Manifest, error) {
	bin, err := readLimited(binPath, MaxBinarySize)
	if err != nil {
		return m, err
	}
	sum := sha256.Sum256(bin)
	m.SHA256, m.Size = hex.EncodeToString(sum[:]), int64(len(bin))
	s, err := Sign(key, m, bin)
	if err != nil {
		return m, err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return m, err
	}
	for name, data := range map[string][]byte{
		BinaryFile: bin, BinarySignatureFile: s.BinarySignature,
		ManifestFile: s.Manifest, ManifestSignatureFile: s.ManifestSignature,
	} {
		if err := os.WriteFile(filepath.Join(outDir, name), data, 0o644); err != nil {
			return m, err
		}
	}
	return m, nil
}

// Files are the contents of a signed release directory.
type Files struct {
	Signed
	Binary   []byte
	Manifest Manifest // parsed from Signed.Manifest, not verified
	KeyID    uint64   // the key both signatures name
}

// ReadDir reads a signed release directory and checks that it is
// consistent: a valid manifest that describes the binary, and two
// well-formed signatures by the same key. It cannot check that the key is
// the vendor's: give keys to verify the signatures too.
func ReadDir(dir string, keys Keys) (Files, error) {
	var f Files
	var err error
	read := func(name string, max int64) []byte {
		if err != nil {
			return nil
		}
		var b []byte
		b, err = readLimited(filepath.Join(dir, name), max)
		return b
	}
	f.Binary = read(BinaryFile, MaxBinarySize)
	f.Signed.Manifest = read(ManifestFile, MaxManifestSize)
	f.ManifestSignature = read(ManifestSignatureFile, MaxSignatureSize)
	f.BinarySignature = read(BinarySignatureFile, MaxSignatureSize)
	if err != nil {
		return f, err
	}
	if f.Manifest, err = ParseManifest(f.Signed.Manifest); err != nil {
		return f, err
	}
	sum := sha256.Sum256(f.Binary)
	if hex.EncodeToString(sum[:]) != f.Manifest.SHA256 || int64(len(f.Binary)) != f.Manifest.Size {
		return f, fmt.Errorf("%s does not match %s (size or SHA-256 differ)", BinaryFile, ManifestFile)
	}
	var ms, bs minisign.Signature
	if err := ms.UnmarshalText(f.ManifestSignature); err != nil {
		return f, fmt.Errorf("%s: %w", ManifestSignatureFile, err)
	}
	if err := bs.UnmarshalText(f.BinarySignature); err != nil {
		return f, fmt.Errorf("%s: %w", BinarySignatureFile, err)
	}
	if ms.KeyID != bs.KeyID {
		return f, fmt.Errorf("the manifest and the binary are signed by different keys (%s, %s)", KeyID(ms.KeyID), KeyID(bs.KeyID))
	}
	f.KeyID = ms.KeyID
	if len(keys) > 0 {
		if _, _, err := keys.Verify(f.Signed.Manifest, f.ManifestSignature); err != nil {
			return f, err
		}
		k, _ := keys.find(bs.KeyID)
		if !minisign.Verify(k, f.Binary, f.BinarySignature) {
			return f, fmt.Errorf("%s: not a valid signature of %s", BinarySignatureFile, BinaryFile)
		}
	}
	return f, nil
}

func readLimited(path string, max int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}
