package admin

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"math"
)

// Audit cursors of tenant-scoped operators.
//
// An audit record's seq is its place in the one trail of the whole relay
// (of the cluster, on PostgreSQL): every tenant's records, the relay's
// own and the operators' draw from the same counter. A tenant's operator
// who saw the seqs of its own records would learn, from the gaps between
// them, how busy the other tenants are. So a tenant-scoped operator never
// sees a seq: each record it reads carries a cursor instead, the seq
// encrypted as one AES block under a key of its tenant, and pages are
// asked for by cursor.
//
// The block is auditCursorMagic followed by the seq (8 bytes, big
// endian), encrypted with AES-256 under a key derived from the cluster's
// audit cursor key (datadir.Dir.AuditCursorKey, kept in the store so that
// every relay of a cluster reads the same) and the tenant's name, and
// written in unpadded base64url: 22 characters. AES being a permutation,
// cursors of different records differ, and nothing about them (not their
// order, not the distance between two) can be told without the key. A
// cursor decrypted under another tenant's key, or one made up, yields a
// block without the magic (a chance of 2⁻⁶⁴ that it has it) and is
// refused.

// auditCursorLen is the length of an encoded cursor.
const auditCursorLen = 22

// auditCursorMagic fills the first half of a cursor's block.
var auditCursorMagic = [8]byte{'t', 'e', 't', 'h', 'e', 'r', 'a', '1'}

// auditCursorLabel separates the derivation of a tenant's cursor key from
// any other use of the cluster's key.
const auditCursorLabel = "tether audit cursor v1\x00"

// tenantCursorBlock is the block cipher of tenant's audit cursors under
// the cluster's key.
func tenantCursorBlock(key *[32]byte, tenant string) cipher.Block {
	mac := hmac.New(sha256.New, key[:])
	mac.Write([]byte(auditCursorLabel))
	mac.Write([]byte(tenant))
	b, err := aes.NewCipher(mac.Sum(nil))
	if err != nil {
		panic(err) // a 32-byte key is always valid
	}
	return b
}

// sealAuditCursor is the cursor of tenant's record seq (seq > 0).
func sealAuditCursor(key *[32]byte, tenant string, seq int64) string {
	return sealAuditCursorWith(tenantCursorBlock(key, tenant), seq)
}

// sealAuditCursorWith is the cursor of seq under a tenant's block cipher
// (tenantCursorBlock), for a page of records under one.
func sealAuditCursorWith(b cipher.Block, seq int64) string {
	var block [aes.BlockSize]byte
	copy(block[:8], auditCursorMagic[:])
	binary.BigEndian.PutUint64(block[8:], uint64(seq))
	b.Encrypt(block[:], block[:])
	return base64.RawURLEncoding.EncodeToString(block[:])
}

// openAuditCursor reads a cursor sealAuditCursor made for tenant: the
// seq, or false for anything else (malformed, made up, or another
// tenant's, which it does not tell apart).
func openAuditCursor(key *[32]byte, tenant, cursor string) (int64, bool) {
	if len(cursor) != auditCursorLen {
		return 0, false
	}
	var block [aes.BlockSize]byte
	if n, err := base64.RawURLEncoding.Strict().Decode(block[:], []byte(cursor)); err != nil || n != len(block) {
		return 0, false
	}
	tenantCursorBlock(key, tenant).Decrypt(block[:], block[:])
	seq := binary.BigEndian.Uint64(block[8:])
	if subtle.ConstantTimeCompare(block[:8], auditCursorMagic[:]) != 1 || seq == 0 || seq > math.MaxInt64 {
		return 0, false
	}
	return int64(seq), true
}
