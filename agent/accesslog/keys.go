package accesslog

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// The log key.
//
// Checkpoints are signed with an ed25519 key that the agent makes on the
// tenant's machine (agent.LogKeyFile in its state directory) and never
// sends anywhere: not the key of the agent's certificate, which the
// relay's CA certifies and renewals replace. A certificate shows only
// that the CA vouched for a key; the vendor who runs the CA can vouch for
// a key of its own for the agent's identity, and could then rewrite the
// log and sign it again. Nobody vouches for the log key: the tenant pins
// its fingerprint (Fingerprint), and Verify follows the chain of key
// lines from it.
//
// A key line names the key that signs the checkpoints after it, signed
// by the key in force before it (the first key of a chain signs its own
// line), over the chain head, so that it cannot be moved elsewhere in the
// chain. The writer puts one after each start line and at the head of
// each new file, so that a log whose oldest files were rotated away still
// names its key in its first file. A key line whose key differs from the
// one in force introduces a new key, and only the key in force can sign
// it; one that the key in force did not sign breaks the chain of keys,
// and Verify reports it.

const (
	checkpointKeyV = "tether-agent access log checkpoint v2"
	keyLineV       = "tether-agent access log key v1"
)

// keyedCheckpointMessage is what a checkpoint signed with the log key
// covers: the chain head, the number of lines before it, its time and
// the key.
func keyedCheckpointMessage(head string, lines uint64, t time.Time, key string) []byte {
	return fmt.Appendf(nil, "%s\nhead %s\nlines %d\ntime %s\nkey %s\n", checkpointKeyV, head, lines, t.UTC().Format(time.RFC3339Nano), key)
}

// keyMessage is what the signature of a key line covers: the chain head,
// the number of lines before it, its time and the key it names.
func keyMessage(head string, lines uint64, t time.Time, key string) []byte {
	return fmt.Appendf(nil, "%s\nhead %s\nlines %d\ntime %s\nkey %s\n", keyLineV, head, lines, t.UTC().Format(time.RFC3339Nano), key)
}

// Fingerprint is the fingerprint of a log key as the tenant records it:
// the SHA-256 of the raw public key, 64 lowercase hex digits.
func Fingerprint(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:])
}

// ParseFingerprint reads a fingerprint as a tenant may have written it
// down: 64 hex digits, in either case, optionally after "sha256:", with
// any spaces or colons between them. It returns it as Fingerprint does.
func ParseFingerprint(s string) (string, error) {
	t := strings.TrimSpace(s)
	if len(t) >= 7 && strings.EqualFold(t[:7], "sha256:") {
		t = t[7:]
	}
	t = strings.NewReplacer(" ", "", ":", "").Replace(strings.ToLower(t))
	if len(t) != 2*sha256.Size || !isHex(t) {
		return "", fmt.Errorf("log key fingerprint %q: want the 64 hex digits of its SHA-256 (tether-agent status shows it)", clip(s, 100))
	}
	return t, nil
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// encodeKey is a public key as lines hold it.
func encodeKey(pub ed25519.PublicKey) string { return base64.StdEncoding.EncodeToString(pub) }

// decodeKey reads a line's key.
func decodeKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, errors.New("the key is not a base64 ed25519 public key")
	}
	return ed25519.PublicKey(b), nil
}

// decodeSig reads an ed25519 signature of a line.
func decodeSig(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != ed25519.SignatureSize {
		return nil, errors.New("the signature is not a base64 ed25519 signature")
	}
	return b, nil
}

// keyChain follows the log keys along the lines Verify reads.
type keyChain struct {
	pinned string            // the fingerprint the chain must start from; "" for none
	cur    ed25519.PublicKey // the key in force; nil before the first key line
	curAt  string            // file:line of the key line that put it in force
	first  string            // fingerprint of the first key
	keys   int               // key lines checked
	fresh  int               // keys introduced after the first
	// record is the key record (keyrecord.go), to link the pinned key to
	// a first key that is not the pinned one; recordErr why it could not
	// be read whole.
	record    []KeyLink
	recordErr error
	uses      []KeyUse // the keys in force, in order
	unkeyed   int      // lines before the first key line, start lines aside
}

// KeyUse is a log key in force over part of the log: from which line,
// how Verify knows it is in the pinned key's chain, and what it signed.
type KeyUse struct {
	Fingerprint string    `json:"fingerprint"`
	From        string    `json:"from"` // file:line of the key line that put it in force (or that the log starts with)
	Seq         uint64    `json:"seq"`
	Time        time.Time `json:"time"`
	// Via says why the key is trusted: "pinned", "first" (no key was
	// pinned: the first the log names), "key line" (introduced by a key
	// line signed by the key before it) or "key record" (the oldest key
	// left in the log, linked to the pinned key by the key record).
	Via string `json:"via"`
	// Record, for Via "key record", is the line of the record (1-based)
	// where the pinned key is, and RecordTo the one of this key.
	Record      int `json:"record_from,omitempty"`
	RecordTo    int `json:"record_to,omitempty"`
	Checkpoints int `json:"checkpoints"` // checkpoints it signed
}

// Key-use reasons (KeyUse.Via).
const (
	ViaPinned = "pinned"
	ViaFirst  = "first"
	ViaLine   = "key line"
	ViaRecord = "key record"
)

// keyLine checks a key line: signed by the key in force (by its own key
// when it is the first, which must then be the pinned one, if any). It
// returns the kind of problem and why, or "".
func (kc *keyChain) keyLine(e *Entry, at string) (kind, detail string) {
	pub, err := decodeKey(e.Key)
	if err != nil {
		return ProblemInvalid, err.Error()
	}
	sig, err := decodeSig(e.Sig)
	if err != nil {
		return ProblemInvalid, err.Error()
	}
	msg := keyMessage(e.Prev, e.Seq-1, e.Time, e.Key)
	fp := Fingerprint(pub)
	if kc.cur == nil {
		if !ed25519.Verify(pub, msg, sig) {
			return ProblemKey, fmt.Sprintf("the line naming log key %s is not signed by it: forged or edited, or the lines before it were rewritten", fp)
		}
		use := KeyUse{Fingerprint: fp, From: at, Seq: e.Seq, Time: e.Time, Via: ViaFirst}
		switch {
		case kc.pinned == "":
		case fp == kc.pinned:
			use.Via = ViaPinned
		default:
			from, to, ok := linkTo(kc.record, kc.pinned, pub)
			if !ok {
				why := "no key record links them"
				switch {
				case kc.recordErr != nil:
					why = fmt.Sprintf("the key record does not link them (%v)", kc.recordErr)
				case len(kc.record) > 0:
					why = fmt.Sprintf("the key record (%d keys, from %s) does not link them", len(kc.record), kc.record[0].Fingerprint)
				}
				return ProblemKey, fmt.Sprintf("the log's key is %s, not the pinned key %s, and %s: its checkpoints are signed by a key outside the pinned key's chain", fp, kc.pinned, why)
			}
			if e.Seq < to.Seq {
				return ProblemKey, fmt.Sprintf("log key %s signs this line (seq %d), but the key record puts it in force only at seq %d: lines placed before its time, signed by a later key", fp, e.Seq, to.Seq)
			}
			if kc.unkeyed > 0 {
				// The writer starts a file with a key line (or a start
				// line and a key line): lines before it were signed by
				// no key of the chain, only by this later one's line.
				return ProblemKey, fmt.Sprintf("%d line(s) come before the first key line, which names log key %s, a later key than the pinned one (the key record links them): no key in force when they were written signs them", kc.unkeyed, fp)
			}
			use.Via, use.Record, use.RecordTo = ViaRecord, from.Index+1, to.Index+1
		}
		kc.cur, kc.curAt, kc.first = pub, at, fp
		kc.uses = append(kc.uses, use)
		kc.keys++
		return "", ""
	}
	curFP := Fingerprint(kc.cur)
	if !ed25519.Verify(kc.cur, msg, sig) {
		if pub.Equal(kc.cur) {
			return ProblemKey, fmt.Sprintf("the line naming log key %s is not signed by it: forged or edited, or the lines before it were rewritten", fp)
		}
		return ProblemKey, fmt.Sprintf("log key %s is introduced here without the signature of the key in force, %s (since %s): the chain of keys is broken; whoever wrote this line does not hold the log's key", fp, curFP, kc.curAt)
	}
	if !pub.Equal(kc.cur) {
		kc.fresh++
		kc.cur, kc.curAt = pub, at
		kc.uses = append(kc.uses, KeyUse{Fingerprint: fp, From: at, Seq: e.Seq, Time: e.Time, Via: ViaLine})
	}
	kc.keys++
	return "", ""
}

// checkpoint checks a checkpoint signed with a log key: by the key in
// force.
func (kc *keyChain) checkpoint(e *Entry) (kind, detail string) {
	if e.Lines != e.Seq-1 {
		return ProblemCheckpoint, fmt.Sprintf("it claims %d lines before it, but its seq is %d", e.Lines, e.Seq)
	}
	pub, err := decodeKey(e.Key)
	if err != nil {
		return ProblemCheckpoint, err.Error()
	}
	if kc.cur == nil {
		return ProblemKey, fmt.Sprintf("signed with log key %s, which no key line before it names: a key outside the chain", Fingerprint(pub))
	}
	if !pub.Equal(kc.cur) {
		return ProblemKey, fmt.Sprintf("signed with log key %s, not with the key in force, %s (since %s): a key outside the chain", Fingerprint(pub), Fingerprint(kc.cur), kc.curAt)
	}
	sig, err := decodeSig(e.Sig)
	if err != nil {
		return ProblemCheckpoint, err.Error()
	}
	if !ed25519.Verify(kc.cur, keyedCheckpointMessage(e.Prev, e.Lines, e.Time, e.Key), sig) {
		return ProblemCheckpoint, "the signature does not verify: the checkpoint was forged or edited, or the lines it covers were rewritten"
	}
	if n := len(kc.uses); n > 0 {
		kc.uses[n-1].Checkpoints++
	}
	return "", ""
}
