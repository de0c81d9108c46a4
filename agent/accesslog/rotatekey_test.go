package accesslog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// keyStore keeps the log key as the agent does, in files of a directory:
// the key, the next key while a rotation is under way, and the record.
type keyStore struct {
	dir   string
	mu    sync.Mutex
	steps []string
	hook  func(step string)
}

func newKeyStore(t testing.TB, key ed25519.PrivateKey) *keyStore {
	t.Helper()
	ks := &keyStore{dir: t.TempDir()}
	ks.write(t, "key", key)
	if err := AppendKeyRecord(ks.record(), key, key.Public().(ed25519.PublicKey), 0, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	return ks
}

func (ks *keyStore) record() string { return filepath.Join(ks.dir, "keys") }

func (ks *keyStore) write(t testing.TB, name string, key ed25519.PrivateKey) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(ks.dir, name), keyPEM(key), 0o600); err != nil {
		t.Fatal(err)
	}
}

func keyPEM(key ed25519.PrivateKey) []byte {
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func (ks *keyStore) read(t testing.TB, name string) ed25519.PrivateKey {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ks.dir, name))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(ed25519.PrivateKey)
}

// options fills o's rotation settings from the store.
func (ks *keyStore) options(t testing.TB, o Options) Options {
	o.Key = ks.read(t, "key")
	o.KeyRecord = ks.record()
	o.NextKey = func() (ed25519.PrivateKey, error) {
		k := newLogKey(t)
		return k, os.WriteFile(filepath.Join(ks.dir, "next"), keyPEM(k), 0o600)
	}
	o.KeyReplaced = func(_, next ed25519.PrivateKey) error {
		return os.Rename(filepath.Join(ks.dir, "next"), filepath.Join(ks.dir, "key"))
	}
	o.AfterStep = func(s string) {
		ks.mu.Lock()
		ks.steps = append(ks.steps, s)
		ks.mu.Unlock()
		if ks.hook != nil {
			ks.hook(s)
		}
	}
	return o
}

// rotatedLog writes runs of records, with a rotation of the key before
// each run but the first, in one writer; it returns the log's path and
// the keys in force, oldest first.
func rotatedLog(t *testing.T, ks *keyStore, o Options, runs ...int) (string, []ed25519.PrivateKey) {
	t.Helper()
	if o.Path == "" {
		o.Path = filepath.Join(t.TempDir(), "log", "access.log")
	}
	o.Agent, o.Version = testAgent, "test"
	o = ks.options(t, o)
	keys := []ed25519.PrivateKey{append(ed25519.PrivateKey(nil), o.Key...)}
	l := startLog(t, o)
	n := 0
	for i, k := range runs {
		if i > 0 {
			done := make(chan struct{})
			if err := l.RotateKey(done); err != nil {
				t.Fatal(err)
			}
			keys = append(keys, ks.read(t, "key"))
		}
		for range k {
			l.Add(record(n))
			n++
		}
	}
	l.stop()
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
	return o.Path, keys
}

// Rotation: each new key is introduced by a key line signed by the old
// one, appended to the key record, and replaces the old key, which is
// gone from the store; the log verifies from the first key, and the
// report says which key signed what.
func TestRotateKeyVerifiesFromTheFirstKey(t *testing.T) {
	k0 := newLogKey(t)
	ks := newKeyStore(t, k0)
	path, keys := rotatedLog(t, ks, Options{}, 3, 3, 3)
	if len(keys) != 3 || keys[0].Equal(keys[1]) || keys[1].Equal(keys[2]) {
		t.Fatalf("keys in force: %d, want 3 different ones", len(keys))
	}
	if got := strings.Join(ks.steps, " "); got != "next-key key-line record replaced next-key key-line record replaced" {
		t.Fatalf("steps: %s", got)
	}
	if _, err := os.Stat(filepath.Join(ks.dir, "next")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the next key stays after the rotation: %v", err)
	}
	for _, name := range []string{"key", "keys"} {
		b, _ := os.ReadFile(filepath.Join(ks.dir, name))
		for _, old := range keys[:2] {
			if bytes.Contains(b, keyPEM(old)) || bytes.Contains(b, old.Seed()) {
				t.Fatalf("%s still holds an old private key", name)
			}
		}
	}
	links, err := ReadKeyRecord(ks.record())
	if err != nil || len(links) != 3 {
		t.Fatalf("key record: %d lines, %v; want 3", len(links), err)
	}
	for i, k := range keys {
		if !links[i].Key.Equal(k.Public()) {
			t.Fatalf("key record line %d: %s, want %s", i+1, links[i].Fingerprint, fingerprintOf(k))
		}
	}
	if !strings.Contains(lineTypes(t, path), "start key stream stream stream key") {
		t.Fatalf("lines: %s", lineTypes(t, path))
	}
	for _, rec := range []string{"", ks.record()} {
		res := mustVerify(t, VerifyOptions{Path: path, Key: fingerprintOf(k0), KeyRecord: rec})
		if !res.Intact || res.FirstKey != fingerprintOf(k0) || res.Key != fingerprintOf(keys[2]) || len(res.Keys) != 3 {
			t.Fatalf("verify from the first key (record %q): %+v", rec, res)
		}
		if res.Keys[0].Via != ViaPinned || res.Keys[1].Via != ViaLine || res.Keys[2].Via != ViaLine || res.Keys[2].Checkpoints == 0 {
			t.Fatalf("keys: %+v", res.Keys)
		}
	}
	// The last key pinned does not vouch for the lines before it.
	if res := mustVerify(t, VerifyOptions{Path: path, Key: fingerprintOf(keys[2]), KeyRecord: ks.record()}); res.Intact || res.Problem.Kind != ProblemKey {
		t.Fatalf("verify from the last key: %+v, want a key problem", res.Problem)
	}
}

// The point of rotation: whoever later gets the machine holds only the
// key in force. A line before the last rotation, edited and the log
// signed again with that key, no longer verifies from the first key; the
// same rewrite of a log whose key was never replaced verifies (what the
// agent allowed before it rotated its key).
func TestRotateKeyRewriteWithTheCurrentKeyIsDetected(t *testing.T) {
	edit := func(t *testing.T, path string, key ed25519.PrivateKey) [][]byte {
		t.Helper()
		ls := readLines(t, path)
		at := -1
		for i, l := range ls {
			if bytes.Contains(l, []byte(`"request":"req-001"`)) {
				at = i
			}
		}
		if at < 0 {
			t.Fatal("no line of req-001")
		}
		ls[at] = bytes.Replace(ls[at], []byte(`"service":"db"`), []byte(`"service":"hr"`), 1)
		return forger{key: key}.rewrite(t, ls, at)
	}

	// Never rotated: the one key rewrites it all.
	k0 := newLogKey(t)
	plain := writeKeyedLog(t, k0, nil, Options{}, 3, 3)
	writeLines(t, plain, edit(t, plain, k0))
	if res := mustVerify(t, VerifyOptions{Path: plain, Key: fingerprintOf(k0)}); !res.Intact {
		t.Fatalf("a log never rotated, rewritten with its key: %v; want intact (the forgery rotation prevents)", res.Problem)
	}

	// Rotated: the key in force is not enough.
	k0 = newLogKey(t)
	ks := newKeyStore(t, k0)
	path, keys := rotatedLog(t, ks, Options{}, 3, 3)
	cur := keys[len(keys)-1]
	writeLines(t, path, edit(t, path, cur))
	for _, rec := range []string{"", ks.record()} {
		res := mustVerify(t, VerifyOptions{Path: path, Key: fingerprintOf(k0), KeyRecord: rec})
		if res.Intact || res.Problem.Kind != ProblemKey {
			t.Fatalf("a rotated log rewritten with the current key (record %q): %+v, want a key problem", rec, res.Problem)
		}
	}
	// Dropping the lines before the key in force instead: the key record
	// puts it in force at the rotation, and lines placed before it are
	// refused too.
	ls := readLines(t, path)
	writeLines(t, path, forger{key: cur}.rewrite(t, ls[3:], 0))
	res := mustVerify(t, VerifyOptions{Path: path, Key: fingerprintOf(k0), KeyRecord: ks.record()})
	if res.Intact || res.Problem.Kind != ProblemKey {
		t.Fatalf("a rotated log cut and signed again with the current key: %+v, want a key problem", res.Problem)
	}
}

// The key record links the first key to the key in force at the oldest
// file left: once rotation deleted the files that introduced the later
// keys, the log still verifies from the first key with the record, and
// not without it (what verify did before the record).
func TestRotateKeyVerifiesAfterOldFilesAreDeleted(t *testing.T) {
	k0 := newLogKey(t)
	ks := newKeyStore(t, k0)
	path, keys := rotatedLog(t, ks, Options{MaxSize: 2 << 10, MaxFiles: 3}, 30, 30, 30)
	res := mustVerify(t, VerifyOptions{Path: path, Key: fingerprintOf(k0), KeyRecord: ks.record()})
	if !res.Intact || res.Follows == Genesis || len(res.Keys) == 0 || res.Keys[0].Via != ViaRecord || res.Key != fingerprintOf(keys[2]) {
		t.Fatalf("verify from the first key with the record: %+v, want intact, the oldest key linked by the record", res)
	}
	if res.Keys[0].Record != 1 || res.Keys[0].RecordTo < 2 {
		t.Fatalf("key use: %+v", res.Keys[0])
	}
	res = mustVerify(t, VerifyOptions{Path: path, Key: fingerprintOf(k0)})
	if res.Intact || res.Problem.Kind != ProblemKey || !strings.Contains(res.Problem.Detail, "not the pinned key") {
		t.Fatalf("verify from the first key without the record: %+v, want a key problem", res.Problem)
	}
	t.Logf("without the record: %s", res.Problem)
	// A record whose link is forged breaks the way from the pin.
	b, _ := os.ReadFile(ks.record())
	ls := bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
	f := bytes.Fields(ls[1])
	f[1] = []byte("1")
	ls[1] = bytes.Join(f, []byte(" "))
	os.WriteFile(ks.record(), append(bytes.Join(ls, []byte("\n")), '\n'), 0o600)
	if res := mustVerify(t, VerifyOptions{Path: path, Key: fingerprintOf(k0), KeyRecord: ks.record()}); res.Intact || !strings.Contains(res.KeyRecordError, "not signed") {
		t.Fatalf("verify with a forged record: %+v, %s; want a key problem", res.Problem, res.KeyRecordError)
	}
}

// access_log.key_rotation: a key older than the interval is replaced
// right after the start line, and again once the interval has passed.
func TestRotateKeyOnSchedule(t *testing.T) {
	k0 := newLogKey(t)
	ks := newKeyStore(t, k0)
	replaced := make(chan struct{}, 10)
	ks.hook = func(s string) {
		if s == StepReplaced {
			replaced <- struct{}{}
		}
	}
	o := ks.options(t, Options{Path: filepath.Join(t.TempDir(), "access.log"), Agent: testAgent, KeySince: time.Now().Add(-2 * time.Hour), KeyRotation: time.Hour})
	l := startLog(t, o)
	<-replaced
	fp, since := l.KeyInForce()
	if fp == fingerprintOf(k0) || time.Since(since) > time.Minute {
		t.Fatalf("after a start with a key 2h old and key_rotation 1h: key %s since %v", fp, since)
	}
	l.stop()
	if got := lineTypes(t, o.Path); got != "start key key checkpoint" {
		t.Fatalf("lines: %s", got)
	}

	// A short interval: a rotation while the writer runs.
	o = ks.options(t, Options{Path: o.Path, Agent: testAgent, KeyRotation: 50 * time.Millisecond})
	l = startLog(t, o)
	<-replaced
	l.Add(record(1))
	l.stop()
	res := mustVerify(t, VerifyOptions{Path: o.Path, Key: fingerprintOf(k0), KeyRecord: ks.record()})
	if !res.Intact || len(res.Keys) < 3 {
		t.Fatalf("verify: %+v", res)
	}
}

// The key record's reader is strict: only the writer's lines, each
// signed by the key before it; an incomplete last line is ignored, and
// the next append cuts it off.
func TestKeyRecordParse(t *testing.T) {
	k0, k1 := newLogKey(t), newLogKey(t)
	path := filepath.Join(t.TempDir(), "keys")
	now := time.Now()
	if err := AppendKeyRecord(path, k1, k0.Public().(ed25519.PublicKey), 0, now); err == nil {
		t.Fatal("an empty record took a first key signed by another")
	}
	if err := AppendKeyRecord(path, k0, k0.Public().(ed25519.PublicKey), 0, now); err != nil {
		t.Fatal(err)
	}
	if err := AppendKeyRecord(path, k1, k1.Public().(ed25519.PublicKey), 5, now); err == nil {
		t.Fatal("a key signed by a key not at the record's end was taken")
	}
	good, _ := os.ReadFile(path)
	// A crash in the middle of an append.
	os.WriteFile(path, append(append([]byte{}, good...), "key 5 2026"...), 0o600)
	if links, err := ReadKeyRecord(path); err != nil || len(links) != 1 {
		t.Fatalf("a record with an incomplete last line: %d, %v", len(links), err)
	}
	if err := AppendKeyRecord(path, k0, k1.Public().(ed25519.PublicKey), 5, now); err != nil {
		t.Fatal(err)
	}
	links, err := ReadKeyRecord(path)
	if err != nil || len(links) != 2 || links[1].Seq != 5 || !links[1].Key.Equal(k1.Public()) {
		t.Fatalf("after the append: %+v, %v", links, err)
	}
	all, _ := os.ReadFile(path)
	lines := strings.SplitAfter(string(all), "\n")
	for name, b := range map[string]string{
		"extra field":                    strings.Replace(lines[0], "key ", "key 0 ", 1),
		"seq with a sign":                strings.Replace(lines[0], "key 0 ", "key +0 ", 1),
		"not UTC":                        strings.Replace(lines[0], "Z ", "+00:00 ", 1),
		"swapped":                        lines[1] + lines[0],
		"carriage return":                strings.Replace(lines[0], "\n", "\r\n", 1),
		"second not signed by the first": lines[0] + strings.Replace(lines[1], " 5 ", " 6 ", 1),
		"too long":                       strings.Repeat("x", MaxKeyRecord+1),
	} {
		if _, _, err := ParseKeyRecord([]byte(b)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

// FuzzParseKeyRecord: whatever the key record holds, parsing it returns
// lines each signed by the one before, or an error, never a panic.
func FuzzParseKeyRecord(f *testing.F) {
	k0, k1 := newLogKey(f), newLogKey(f)
	path := filepath.Join(f.TempDir(), "keys")
	now := time.Now()
	AppendKeyRecord(path, k0, k0.Public().(ed25519.PublicKey), 0, now)
	AppendKeyRecord(path, k0, k1.Public().(ed25519.PublicKey), 7, now.Add(time.Second))
	b, _ := os.ReadFile(path)
	f.Add(b)
	f.Add(b[:len(b)/2])
	f.Add([]byte("key 0 2026-01-01T00:00:00Z AAAA AAAA\n"))
	f.Add([]byte("\n\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		links, partial, err := ParseKeyRecord(b)
		if partial < 0 || partial > len(b) {
			t.Fatalf("partial %d of %d bytes", partial, len(b))
		}
		for i, l := range links {
			if l.Index != i || len(l.Key) != ed25519.PublicKeySize || l.Fingerprint != Fingerprint(l.Key) {
				t.Fatalf("line %d: %+v", i, l)
			}
			if i > 0 && l.Seq <= links[i-1].Seq {
				t.Fatalf("line %d: seq %d after %d", i, l.Seq, links[i-1].Seq)
			}
		}
		if err == nil && partial == 0 && len(b) > 0 && b[len(b)-1] != '\n' {
			t.Fatalf("a record not ending with a newline parsed whole")
		}
	})
}
