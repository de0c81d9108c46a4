package ca

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"

	"github.com/tetherhq/tether/relay/internal/store"
)

// A CA kept in a store that several relays share (PostgreSQL) has its
// private keys sealed with AES-256-GCM under a key-encryption key (KEK)
// that every relay of the cluster is given out of band (a file, the
// environment) and that the store never holds. Certificates and the
// manifest are public and stay in the clear. Whoever reads the database
// alone (a backup, a replica, a database operator) gets no CA key.
//
// A sealed key is one version byte (1), a random 12-byte nonce and the
// AES-256-GCM ciphertext with its tag; the file's name and the KEK's id
// are authenticated with it, so a sealed key moved to another name, or
// relabelled as sealed by another KEK, does not open. The row names the
// KEK (KEKID) so that a relay given the wrong one says so, and so that a
// KEK can be replaced later by re-sealing each key under the new one.

// KEKSize is the size of a key-encryption key: 32 bytes, for AES-256.
const KEKSize = 32

// Errors of a CA kept in a store.
var (
	ErrNoKEK = errors.New("no key-encryption key: a CA kept in a shared store has its private keys sealed with one; " +
		"give every relay the same one with --ca-kek-file FILE or TETHER_CA_KEK (32 random bytes in base64, as openssl rand -base64 32 makes)")
	ErrKEKSize = fmt.Errorf("a key-encryption key is %d random bytes", KEKSize)
	// ErrWrongKEK: the key was sealed with a key-encryption key other
	// than this relay's.
	ErrWrongKEK = errors.New("sealed with another key-encryption key")
	// ErrSealBroken: the sealed key does not open under the KEK its row
	// names: it was altered, damaged or moved.
	ErrSealBroken = errors.New("sealed key does not open: altered, damaged or moved")
	// ErrUnsealed: a private key is in the store in the clear, which a
	// relay never writes.
	ErrUnsealed = errors.New("private key stored in the clear")
)

const sealVersion = 1

// KEK is a key-encryption key: it seals and opens the CA's private keys
// where they are kept in a shared store.
type KEK struct {
	id   string
	aead cipher.AEAD
}

// NewKEK returns the key-encryption key key (KEKSize random bytes).
func NewKEK(key []byte) (*KEK, error) {
	if len(key) != KEKSize {
		return nil, fmt.Errorf("%w, not %d", ErrKEKSize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(append([]byte("tether CA key-encryption key id\x00"), key...))
	return &KEK{id: "kek-" + hex.EncodeToString(sum[:8]), aead: aead}, nil
}

// ID names the key (a hash of it, which does not reveal it): each sealed
// row records the ID of the KEK that sealed it.
func (k *KEK) ID() string { return k.id }

// additionalData binds a sealed key to its file name and KEK.
func (k *KEK) additionalData(name string) []byte {
	return []byte("tether CA file\x00" + name + "\x00" + k.id)
}

// seal encrypts the content of the CA file name.
func (k *KEK) seal(name string, plain []byte) []byte {
	out := make([]byte, 1+k.aead.NonceSize(), 1+k.aead.NonceSize()+len(plain)+k.aead.Overhead())
	out[0] = sealVersion
	rand.Read(out[1:]) // never fails (crypto/rand)
	return k.aead.Seal(out, out[1:], plain, k.additionalData(name))
}

// open decrypts what seal made of the CA file name.
func (k *KEK) open(name string, sealed []byte) ([]byte, error) {
	n := k.aead.NonceSize()
	if len(sealed) < 1+n+k.aead.Overhead() || sealed[0] != sealVersion {
		return nil, ErrSealBroken
	}
	plain, err := k.aead.Open(nil, sealed[1:1+n], sealed[1+n:], k.additionalData(name))
	if err != nil {
		return nil, ErrSealBroken
	}
	return plain, nil
}

// StoreFiles is a CA kept in the relay's store (table ca_files), shared
// by every relay of a cluster: keys sealed under a KEK, the rest in the
// clear. Each write is one row replaced in one statement.
type StoreFiles struct {
	st  *store.Store
	kek *KEK
}

// InStore keeps a CA in st, its keys sealed with kek. Without a KEK
// (nil), every read or write of a key fails with ErrNoKEK.
func InStore(st *store.Store, kek *KEK) *StoreFiles { return &StoreFiles{st: st, kek: kek} }

func (s *StoreFiles) String() string { return "the store" }

// ReadFile returns the file name, its key opened with the KEK.
func (s *StoreFiles) ReadFile(ctx context.Context, name string) ([]byte, error) {
	f, err := s.st.CAFile(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%s is not in the store: %w", name, fs.ErrNotExist)
	}
	if err != nil {
		return nil, err
	}
	if !isKey(name) {
		if f.KEKID != "" {
			return nil, fmt.Errorf("CA file %s in the store is sealed, but only keys are", name)
		}
		return f.Data, nil
	}
	switch {
	case f.KEKID == "":
		return nil, fmt.Errorf("CA key %s: %w; relays only write sealed keys: refused", name, ErrUnsealed)
	case s.kek == nil:
		return nil, fmt.Errorf("CA key %s: %w", name, ErrNoKEK)
	case f.KEKID != s.kek.ID():
		return nil, fmt.Errorf("CA key %s in the store is %w (%s), not this relay's (%s): give every relay of the cluster the same KEK (--ca-kek-file or TETHER_CA_KEK)",
			name, ErrWrongKEK, f.KEKID, s.kek.ID())
	}
	plain, err := s.kek.open(name, f.Data)
	if err != nil {
		return nil, fmt.Errorf("CA key %s in the store, under key-encryption key %s: %w", name, f.KEKID, err)
	}
	return plain, nil
}

// WriteFile writes the file name, a key sealed with the KEK.
func (s *StoreFiles) WriteFile(ctx context.Context, name string, data []byte) error {
	f := store.CAFile{Name: name, Data: data}
	if isKey(name) {
		if s.kek == nil {
			return fmt.Errorf("CA key %s: %w", name, ErrNoKEK)
		}
		f.Data, f.KEKID = s.kek.seal(name, data), s.kek.ID()
	}
	return s.st.PutCAFile(ctx, f)
}

// Remove deletes the file name.
func (s *StoreFiles) Remove(ctx context.Context, name string) error {
	return s.st.RemoveCAFile(ctx, name)
}
