package protocol

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
)

// JoinTokenPrefix starts every join token, so one is recognisable in a
// config file or a secret scanner.
const JoinTokenPrefix = "tjt1_"

// JoinToken is what an operator hands a tenant to enrol one agent. It names a
// token record on the relay (ID), proves possession (Secret; the relay stores
// only its SHA-256), and pins the relay's CA (CAFingerprint, the SHA-256 of the
// CA certificate's DER) so that the agent authenticates the relay on first
// contact and enrolment cannot be intercepted.
//
// String form: "tjt1_" + base64url(no padding) of 1 version byte (1), 8 bytes
// ID, 32 bytes secret, 32 bytes CA fingerprint.
type JoinToken struct {
	ID            [8]byte
	Secret        [32]byte
	CAFingerprint [32]byte
}

const joinTokenRawLen = 1 + 8 + 32 + 32

// String encodes t. The result is a secret.
func (t JoinToken) String() string {
	raw := make([]byte, 0, joinTokenRawLen)
	raw = append(raw, 1)
	raw = append(raw, t.ID[:]...)
	raw = append(raw, t.Secret[:]...)
	raw = append(raw, t.CAFingerprint[:]...)
	return JoinTokenPrefix + base64.RawURLEncoding.EncodeToString(raw)
}

// IDString is the printable token id (it is not secret).
func (t JoinToken) IDString() string { return hex.EncodeToString(t.ID[:]) }

// SecretHash is what the relay stores in place of the secret.
func (t JoinToken) SecretHash() []byte {
	h := sha256.Sum256(t.Secret[:])
	return h[:]
}

// SecretMatches compares t's secret with a stored hash in constant time.
func (t JoinToken) SecretMatches(hash []byte) bool {
	return subtle.ConstantTimeCompare(t.SecretHash(), hash) == 1
}

// ParseJoinToken decodes a token string. Surrounding white space (a trailing
// newline from a file) is ignored.
func ParseJoinToken(s string) (JoinToken, error) {
	var t JoinToken
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, JoinTokenPrefix) {
		return t, Errorf(CodeInvalidToken, "not a join token (it should start with %q)", JoinTokenPrefix)
	}
	body := s[len(JoinTokenPrefix):]
	if i := strings.IndexFunc(body, func(r rune) bool {
		return !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}); i >= 0 {
		return t, Errorf(CodeInvalidToken, "join token is damaged: unexpected character at position %d", len(JoinTokenPrefix)+i)
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(body)
	if err != nil {
		return t, Errorf(CodeInvalidToken, "join token is damaged: %v", err)
	}
	if len(raw) != joinTokenRawLen {
		return t, Errorf(CodeInvalidToken, "join token is damaged: %d bytes, want %d", len(raw), joinTokenRawLen)
	}
	if raw[0] != 1 {
		return t, Errorf(CodeInvalidToken, "join token version %d is not supported", raw[0])
	}
	copy(t.ID[:], raw[1:9])
	copy(t.Secret[:], raw[9:41])
	copy(t.CAFingerprint[:], raw[41:])
	return t, nil
}

// Fingerprint returns the SHA-256 of a certificate's DER bytes, the form used
// for CA pinning.
func Fingerprint(der []byte) [32]byte { return sha256.Sum256(der) }

// FormatFingerprint prints a fingerprint as "sha256:<hex>".
func FormatFingerprint(fp [32]byte) string {
	return fmt.Sprintf("sha256:%x", fp[:])
}
