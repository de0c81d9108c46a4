// Package credential holds the formats of the secrets the relay issues and
// checks: backend API keys, operator tokens and console session ids, and
// the random identifiers of agents and requests. Every secret is stored as
// Hash of its text and compared with Matches, in constant time.
package credential

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"fmt"
	mrand "math/rand/v2"
	"strings"
)

// Hash is how every secret the relay issues is kept at rest: the SHA-256
// of its text. The secrets are 32 random bytes, so a plain hash is as good
// as a slow one.
func Hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// Matches reports, in constant time, whether secret hashes to hash.
func Matches(secret string, hash []byte) bool {
	return subtle.ConstantTimeCompare(Hash(secret), hash) == 1
}

// randomText returns 32 random bytes as base64url without padding (43
// characters).
func randomText() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// APIKeyPrefix starts every backend API key.
const APIKeyPrefix = "tbk1_"

// NewAPIKey returns a new backend API key: APIKeyPrefix and 32 random
// bytes.
func NewAPIKey() string { return APIKeyPrefix + randomText() }

// NewSessionID returns a new console session id (also used for the
// session's anti-forgery token).
func NewSessionID() string { return randomText() }

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// NewID returns a random id of 16 lower-case base32 characters (80 bits):
// agent ids and operator token ids.
func NewID() string {
	var b [10]byte
	rand.Read(b[:])
	return strings.ToLower(idEncoding.EncodeToString(b[:]))
}

// NewRequestID returns the id that names one stream in logs, audit
// records and replies: 16 hex digits. It needs to be unique, not secret.
func NewRequestID() string { return fmt.Sprintf("%016x", mrand.Uint64()) }

// Operator tokens authenticate people and tools at the admin API. A token
// is OperatorTokenPrefix, a 16-character id (NewID), "." and a
// 43-character secret (32 random bytes, base64url); the store keeps the id
// and Hash of the secret.
const (
	OperatorTokenPrefix = "top1_"
	operatorIDLen       = 16
	operatorSecretLen   = 43
)

// NewOperatorToken returns a new operator token with its id and secret.
func NewOperatorToken() (token, id, secret string) {
	id, secret = NewID(), randomText()
	return OperatorTokenPrefix + id + "." + secret, id, secret
}

// SplitOperatorToken splits a token string into its id and secret, or
// reports that it is malformed.
func SplitOperatorToken(s string) (id, secret string, ok bool) {
	rest, found := strings.CutPrefix(s, OperatorTokenPrefix)
	if !found || len(rest) != operatorIDLen+1+operatorSecretLen || rest[operatorIDLen] != '.' {
		return "", "", false
	}
	id, secret = rest[:operatorIDLen], rest[operatorIDLen+1:]
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return "", "", false
		}
	}
	if b, err := base64.RawURLEncoding.Strict().DecodeString(secret); err != nil || len(b) != 32 {
		return "", "", false
	}
	return id, secret, true
}
