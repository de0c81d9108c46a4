package accesslog

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The key record.
//
// The writer replaces the log key now and then (Options.KeyRotation): a
// key line naming the new key, signed by the old one, and then the old
// private key is destroyed. Whoever later gets the machine holds only the
// key in force: the lines before its key line are signed by keys that no
// longer exist, and cannot be rewritten. The chain of key lines links the
// pinned key to the key in force, as long as the file that holds the
// pinned key's key line is kept; once rotation deleted it, the oldest
// file left starts with a key line of a later key. The key record, a small
// file outside the log (the agent keeps it in its state directory), keeps
// that chain: one line per key, each signed by the key before it (the
// first by itself), appended when the key line that introduces the key is
// in the log. Verify follows it from the pinned key to the key in force
// at the oldest line left.
//
// A line of the record:
//
//	key SEQ TIME KEY SIG
//
// SEQ is the seq of the log's key line that introduced the key (0 for a
// key the record starts with, introduced before the record existed), TIME
// when (RFC 3339, UTC), KEY the base64 public key and SIG the base64
// signature, by the key of the line before (by KEY itself on the first
// line), of keyRecordMessage. An incomplete last line is what a crash in
// the middle of an append leaves: the reader ignores it and the next
// append cuts it off.

const keyRecordV = "tether-agent access log key record v1"

// MaxKeyRecord bounds the key record the reader accepts: a line is about
// 190 bytes, so a daily rotation fills it in about 60 years.
const MaxKeyRecord = 4 << 20

// KeyLink is a line of the key record.
type KeyLink struct {
	Index int               `json:"index"` // 0-based line number in the record
	Seq   uint64            `json:"seq"`   // the log's key line that introduced the key; 0: before the record
	Time  time.Time         `json:"time"`  // when the key was put in force
	Key   ed25519.PublicKey `json:"-"`
	// Fingerprint is Fingerprint(Key).
	Fingerprint string `json:"fingerprint"`
	sig         []byte
}

// keyRecordMessage is what the signature of a record line covers: its
// place in the record, the key before it (empty for the first) and what
// the line says.
func keyRecordMessage(index int, seq uint64, t time.Time, key, prev string) []byte {
	return fmt.Appendf(nil, "%s\nindex %d\nseq %d\ntime %s\nkey %s\nprev %s\n", keyRecordV, index, seq, t.UTC().Format(time.RFC3339Nano), key, prev)
}

// ParseKeyRecord reads a key record: every complete line must parse and
// be signed by the key of the line before it (the first by its own key).
// An incomplete last line is ignored (partial is its length). The error
// names the first line that does not hold; links holds the lines before
// it.
func ParseKeyRecord(b []byte) (links []KeyLink, partial int, err error) {
	if len(b) > MaxKeyRecord {
		return nil, 0, fmt.Errorf("longer than %d bytes: not a key record", MaxKeyRecord)
	}
	if i := bytes.LastIndexByte(b, '\n'); i+1 < len(b) {
		partial = len(b) - (i + 1)
		b = b[:i+1]
	}
	for n := 0; len(b) > 0; n++ {
		i := bytes.IndexByte(b, '\n')
		line := b[:i]
		b = b[i+1:]
		l, err := parseKeyLink(line, n)
		if err != nil {
			return links, partial, fmt.Errorf("line %d: %w", n+1, err)
		}
		signer, prev := l.Key, ""
		if n > 0 {
			signer, prev = links[n-1].Key, encodeKey(links[n-1].Key)
		}
		if !ed25519.Verify(signer, keyRecordMessage(n, l.Seq, l.Time, encodeKey(l.Key), prev), l.sig) {
			if n == 0 {
				return links, partial, fmt.Errorf("line 1: key %s is not signed by itself: forged or edited", l.Fingerprint)
			}
			return links, partial, fmt.Errorf("line %d: key %s is not signed by the key before it, %s: forged or edited", n+1, l.Fingerprint, links[n-1].Fingerprint)
		}
		if n > 0 && (l.Seq <= links[n-1].Seq || l.Time.Before(links[n-1].Time)) {
			return links, partial, fmt.Errorf("line %d: key %s is put in force (seq %d, %s) before the key before it (seq %d, %s)", n+1, l.Fingerprint, l.Seq, l.Time.Format(time.RFC3339Nano), links[n-1].Seq, links[n-1].Time.Format(time.RFC3339Nano))
		}
		links = append(links, l)
	}
	return links, partial, nil
}

// parseKeyLink parses one line of the record, strictly: the writer's
// form only.
func parseKeyLink(line []byte, n int) (KeyLink, error) {
	f := strings.Split(string(line), " ")
	if len(f) != 5 || f[0] != "key" {
		return KeyLink{}, errors.New("want: key SEQ TIME KEY SIG")
	}
	seq, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil || strconv.FormatUint(seq, 10) != f[1] {
		return KeyLink{}, fmt.Errorf("seq %q: want a decimal number", clip(f[1], 30))
	}
	t, err := time.Parse(time.RFC3339Nano, f[2])
	if err != nil || t.UTC().Format(time.RFC3339Nano) != f[2] {
		return KeyLink{}, fmt.Errorf("time %q: want RFC 3339, UTC", clip(f[2], 40))
	}
	if len(f[3]) > maxKey {
		return KeyLink{}, errors.New("the key is not a base64 ed25519 public key")
	}
	pub, err := decodeKey(f[3])
	if err != nil || encodeKey(pub) != f[3] {
		return KeyLink{}, errors.New("the key is not a base64 ed25519 public key")
	}
	if len(f[4]) > maxSig {
		return KeyLink{}, errors.New("the signature is not a base64 ed25519 signature")
	}
	sig, err := decodeSig(f[4])
	if err != nil || base64.StdEncoding.EncodeToString(sig) != f[4] {
		return KeyLink{}, errors.New("the signature is not a base64 ed25519 signature")
	}
	return KeyLink{Index: n, Seq: seq, Time: t.UTC(), Key: pub, Fingerprint: Fingerprint(pub), sig: sig}, nil
}

// ReadKeyRecord reads the key record at path (ParseKeyRecord). A record
// that does not exist has no lines and no error.
func ReadKeyRecord(path string) ([]KeyLink, error) {
	b, err := readBounded(path, MaxKeyRecord)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	links, _, err := ParseKeyRecord(b)
	if err != nil {
		return links, fmt.Errorf("key record %s: %w", path, err)
	}
	return links, nil
}

// readBounded reads a file of at most max bytes.
func readBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: longer than %d bytes", path, max)
	}
	return b, nil
}

// AppendKeyRecord appends to the key record at path the line of key
// next, put in force by the log's key line seq at t, signed by signer:
// the key of the record's last line, or next itself when the record is
// empty (or does not exist). It cuts off an incomplete last line first,
// and syncs the file before it returns. A record that does not parse, or
// whose last key is not signer's, is refused: the caller decides (the
// agent moves it aside and starts a new one, StartKeyRecord).
func AppendKeyRecord(path string, signer ed25519.PrivateKey, next ed25519.PublicKey, seq uint64, t time.Time) error {
	if len(signer) != ed25519.PrivateKeySize || len(next) != ed25519.PublicKeySize {
		return errors.New("key record: not ed25519 keys")
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("key record: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxKeyRecord+1))
	if err != nil {
		return fmt.Errorf("key record %s: %w", path, err)
	}
	links, partial, err := ParseKeyRecord(b)
	if err != nil {
		return fmt.Errorf("key record %s: %w", path, err)
	}
	spub := signer.Public().(ed25519.PublicKey)
	prev := ""
	switch n := len(links); {
	case n == 0 && !spub.Equal(next):
		return fmt.Errorf("key record %s: empty, and key %s is not signed by itself", path, Fingerprint(next))
	case n > 0 && !links[n-1].Key.Equal(spub):
		return fmt.Errorf("key record %s: ends with key %s, not with the signing key %s", path, links[n-1].Fingerprint, Fingerprint(spub))
	case n > 0 && (seq <= links[n-1].Seq):
		return fmt.Errorf("key record %s: its last key was put in force at seq %d, not before seq %d", path, links[n-1].Seq, seq)
	case n > 0:
		prev = encodeKey(links[n-1].Key)
		if t.Before(links[n-1].Time) {
			t = links[n-1].Time // a clock set back: the record stays in order
		}
	}
	t = t.UTC()
	k := encodeKey(next)
	sig := ed25519.Sign(signer, keyRecordMessage(len(links), seq, t, k, prev))
	line := fmt.Appendf(nil, "key %d %s %s %s\n", seq, t.Format(time.RFC3339Nano), k, base64.StdEncoding.EncodeToString(sig))
	size := int64(len(b) - partial)
	if partial > 0 {
		if err := f.Truncate(size); err != nil {
			return fmt.Errorf("key record %s: cut an incomplete last line: %w", path, err)
		}
	}
	if _, err := f.WriteAt(line, size); err != nil {
		f.Truncate(size)
		return fmt.Errorf("key record %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Truncate(size)
		return fmt.Errorf("key record %s: %w", path, err)
	}
	if size == 0 {
		syncDir(filepath.Dir(path))
	}
	return nil
}

// linkTo finds, in the record links, the way from the key whose
// fingerprint is pinned to pub: both in the record, pinned first. It
// returns the lines of both, or ok false.
func linkTo(links []KeyLink, pinned string, pub ed25519.PublicKey) (from, to *KeyLink, ok bool) {
	p := -1
	for i := range links {
		if p < 0 && links[i].Fingerprint == pinned {
			p = i
		}
		if p >= 0 && links[i].Key.Equal(pub) {
			return &links[p], &links[i], true
		}
	}
	return nil, nil, false
}

// KeyPosition is where a log key was put in force.
type KeyPosition struct {
	Key  ed25519.PublicKey // nil: the log names no key
	Seq  uint64            // the key line that put it in force
	Time time.Time
}

// KeyInForceAt reads the log at path (all its files, oldest first) and
// returns the key its last key line names, with the first key line of
// the run of key lines that name it: where it was put in force. Lines
// that do not parse (an incomplete last line) are skipped: the writer
// cuts them off.
func KeyInForceAt(path string) (KeyPosition, error) {
	var kp KeyPosition
	err := Read(path, func(_ string, _ int, e Entry, _ []byte, perr error) error {
		if perr != nil || e.Type != TypeKey {
			return nil
		}
		pub, err := decodeKey(e.Key)
		if err != nil {
			return nil
		}
		if kp.Key == nil || !kp.Key.Equal(pub) {
			kp = KeyPosition{Key: pub, Seq: e.Seq, Time: e.Time.UTC()}
		}
		return nil
	})
	return kp, err
}
