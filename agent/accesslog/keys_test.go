package accesslog

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newLogKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func fingerprintOf(k ed25519.PrivateKey) string { return Fingerprint(k.Public().(ed25519.PublicKey)) }

// writeKeyedLog is writeLog with a log key (and the agent's certificate,
// which the writer then leaves alone), in dir (a new one when "").
func writeKeyedLog(t testing.TB, key ed25519.PrivateKey, cert *tls.Certificate, o Options, runs ...int) string {
	t.Helper()
	if o.Path == "" {
		o.Path = filepath.Join(t.TempDir(), "log", "access.log")
	}
	o.Key, o.Agent, o.Version = key, testAgent, "test"
	if cert != nil {
		o.Certificate = func() *tls.Certificate { return cert }
	}
	n := 0
	for _, k := range runs {
		l := startLog(t, o)
		for range k {
			l.Add(record(n))
			n++
		}
		l.stop()
		if err := l.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return o.Path
}

// forger rewrites a log as whoever has write access to it and signs
// checkpoints again: with a certificate the CA issued (cert), or with an
// ed25519 key of its own (key).
type forger struct {
	cert *tls.Certificate
	key  ed25519.PrivateKey
	// dropKeys leaves out the key lines; otherwise they are kept as they
	// are, or, with key set, made again for the forger's key.
	dropKeys bool
}

// rewrite re-chains ls after an edit of line from (0-based) or after, as
// a forger does: the lines before it kept as they are (unless a key line
// is dropped among them), and from there on seq and prev recomputed, key
// lines dropped or made again, every checkpoint signed again.
func (f forger) rewrite(t testing.TB, ls [][]byte, from int) [][]byte {
	t.Helper()
	var out [][]byte
	var prev string
	var seq uint64
	changed := false
	for i, l := range ls {
		if !changed && i < from && !(f.dropKeys && bytes.Contains(l, []byte(`"type":"key"`))) {
			if i == 0 {
				e, err := ParseLine(l)
				if err != nil {
					t.Fatal(err)
				}
				seq = e.Seq
			}
			out = append(out, l)
			prev, seq = hashLine(l), seq+1
			continue
		}
		changed = true
		var m map[string]any
		dec := json.NewDecoder(bytes.NewReader(l))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		if len(out) == 0 && i == 0 {
			prev = m["prev"].(string)
			n, _ := m["seq"].(json.Number).Int64()
			seq = uint64(n)
		}
		if m["type"] == TypeKey && f.dropKeys {
			continue
		}
		m["seq"], m["prev"] = seq, prev
		at, err := time.Parse(time.RFC3339Nano, m["time"].(string))
		if err != nil {
			t.Fatal(err)
		}
		switch m["type"] {
		case TypeKey:
			if f.key != nil {
				pub := encodeKey(f.key.Public().(ed25519.PublicKey))
				m["key"], m["sig"] = pub, base64.StdEncoding.EncodeToString(ed25519.Sign(f.key, keyMessage(prev, seq-1, at, pub)))
			}
		case TypeCheckpoint:
			if f.key == nil && f.cert == nil {
				break
			}
			m["lines"] = seq - 1
			delete(m, "key")
			delete(m, "cert")
			switch {
			case f.key != nil:
				pub := encodeKey(f.key.Public().(ed25519.PublicKey))
				m["key"], m["sig"] = pub, base64.StdEncoding.EncodeToString(ed25519.Sign(f.key, keyedCheckpointMessage(prev, seq-1, at, pub)))
			case f.cert != nil:
				digest := sha256.Sum256(checkpointMessage(prev, seq-1, at))
				sig, err := f.cert.PrivateKey.(crypto.Signer).Sign(rand.Reader, digest[:], crypto.SHA256)
				if err != nil {
					t.Fatal(err)
				}
				m["cert"], m["sig"] = base64.StdEncoding.EncodeToString(f.cert.Certificate[0]), base64.StdEncoding.EncodeToString(sig)
			}
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
		prev, seq = hashLine(b), seq+1
	}
	return out
}

func lineTypes(t testing.TB, path string) string {
	t.Helper()
	var types []string
	for _, e := range entries(t, path) {
		types = append(types, e.Type)
	}
	return strings.Join(types, " ")
}

// A log with a log key: a key line after each start line, checkpoints
// signed with the key and without a certificate; it verifies from the
// pinned key, from its own first key without one, and not from another.
func TestKeyChainWriteAndVerify(t *testing.T) {
	ca := newTestCA(t)
	cert := leaf(t, ca, testAgent)
	key := newLogKey(t)
	fp := fingerprintOf(key)
	path := writeKeyedLog(t, key, cert, Options{}, 5, 7)

	want := "start key " + strings.Repeat("stream ", 5) + "checkpoint start key " + strings.Repeat("stream ", 7) + "checkpoint"
	if got := lineTypes(t, path); got != want {
		t.Fatalf("line types: got %s, want %s", got, want)
	}
	for _, e := range entries(t, path) {
		if e.Type == TypeCheckpoint && (e.Cert != "" || e.Key != encodeKey(key.Public().(ed25519.PublicKey))) {
			t.Fatalf("checkpoint %+v: want the log key and no certificate", e)
		}
	}
	res := mustVerify(t, VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent, Key: fp})
	if !res.Intact || res.Lines != 18 || res.Checkpoints != 2 || res.Verified != 2 || !res.CleanStop {
		t.Fatalf("verify: %+v, want 18 lines intact, 2 checkpoints verified, a clean stop", res)
	}
	if res.FirstKey != fp || res.Key != fp || res.Pinned != fp || res.KeyLines != 2 || res.CAOnly != 0 {
		t.Fatalf("verify: first key %s, key %s, pinned %s, %d key lines, %d CA-only lines; want %s throughout, 2 key lines, none CA-only",
			res.FirstKey, res.Key, res.Pinned, res.KeyLines, res.CAOnly, fp)
	}
	if res := mustVerify(t, VerifyOptions{Path: path}); !res.Intact || res.FirstKey != fp || res.Pinned != "" {
		t.Fatalf("verify without a pinned key: %+v, want intact, naming the first key %s", res, fp)
	}
	other := fingerprintOf(newLogKey(t))
	res = mustVerify(t, VerifyOptions{Path: path, Key: other})
	if res.Intact || res.Problem.Kind != ProblemKey || res.Problem.Line != 2 || !strings.Contains(res.Problem.Detail, "not the pinned key") {
		t.Fatalf("verify pinned to another key: %+v, want a key problem at line 2", res.Problem)
	}
}

// The attack the log key is for: whoever runs the CA certifies a key of
// its own for the agent's identity and, with write access to the log (or
// to the copy the tenant is shown), edits a line, re-chains the lines
// after it and signs the checkpoints again. With certificate-signed
// checkpoints (earlier versions) the rewritten log verifies; with the log
// key it does not, whatever the forger does with the key lines.
func TestKeyChainDetectsARewriteSignedWithACACertificate(t *testing.T) {
	ca := newTestCA(t)
	cert := leaf(t, ca, testAgent)
	forged := leaf(t, ca, testAgent) // the CA's key for the agent's identity, not the agent's
	// edit hides how much req-001 read from the service.
	edit := func(ls [][]byte) [][]byte {
		ls = append([][]byte(nil), ls...)
		for j, l := range ls {
			if bytes.Contains(l, []byte(`"request":"req-001"`)) {
				ls[j] = bytes.Replace(l, []byte(`"bytes_from_service":1001`), []byte(`"bytes_from_service":1`), 1)
				return ls
			}
		}
		t.Fatal("no req-001")
		return nil
	}

	t.Run("certificate-signed log (earlier versions): the rewrite verifies", func(t *testing.T) {
		path := writeLog(t, cert, 3, 3)
		writeLines(t, path, forger{cert: forged}.rewrite(t, edit(readLines(t, path)), 2))
		res := mustVerify(t, VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent})
		if !res.Intact || res.Verified != 2 || res.CAOnly != res.Lines {
			t.Fatalf("verify: %+v, want intact (the limit of CA-signed checkpoints), every line CA-only", res)
		}
	})

	key := newLogKey(t)
	fp := fingerprintOf(key)
	orig := readLines(t, writeKeyedLog(t, key, cert, Options{}, 3, 3))
	// Lines: 1 start, 2 key, 3-5 streams (req-001 on 4), 6 checkpoint, 7 start, 8 key, 9-11 streams, 12 checkpoint.
	cases := []struct {
		name   string
		f      forger
		from   int // the first line rewritten (0-based)
		pinned bool
		line   int
		detail string
	}{
		{"key lines kept, checkpoints signed with the CA's certificate", forger{cert: forged}, 3, true, 6, "signed with a certificate, after the log named its own key"},
		{"key lines kept, checkpoints signed with the CA's certificate, no pinned key", forger{cert: forged}, 3, false, 6, "signed with a certificate, after the log named its own key"},
		{"key lines dropped, checkpoints signed with the CA's certificate", forger{cert: forged, dropKeys: true}, 3, true, 10, "no line of the log names the log key"},
		{"key lines kept, checkpoints signed with the forger's key", forger{key: newLogKey(t)}, 3, false, 6, "a key outside the chain"},
		{"key lines made again for the forger's key", forger{key: newLogKey(t)}, 0, true, 2, "not the pinned key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "access.log")
			writeLines(t, path, tc.f.rewrite(t, edit(orig), tc.from))
			o := VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent}
			if tc.pinned {
				o.Key = fp
			}
			res := mustVerify(t, o)
			if res.Intact || res.Problem.Kind != ProblemKey || res.Problem.Line != tc.line || !strings.Contains(res.Problem.Detail, tc.detail) {
				t.Fatalf("verify: intact %v, problem %v; want a key problem at line %d: %s", res.Intact, res.Problem, tc.line, tc.detail)
			}
		})
	}
	// Without a pinned key, a log whose key lines were dropped is one of
	// an earlier version (verified against the CA only, and said so), and
	// one made again for the forger's key names that key, which is not
	// the one the tenant recorded.
	t.Run("no pinned key", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "access.log")
		writeLines(t, path, forger{cert: forged, dropKeys: true}.rewrite(t, edit(orig), 3))
		if res := mustVerify(t, VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent}); !res.Intact || res.CAOnly != res.Lines || res.FirstKey != "" {
			t.Fatalf("verify: %+v, want intact against the CA only", res)
		}
		writeLines(t, path, forger{key: newLogKey(t)}.rewrite(t, edit(orig), 0))
		if res := mustVerify(t, VerifyOptions{Path: path}); !res.Intact || res.FirstKey == fp {
			t.Fatalf("verify: %+v, want intact from a first key that is not %s", res, fp)
		}
	})
}

// The chain of keys: a key line introducing a new key verifies when the
// key in force signed it; a new key without that signature (the key was
// lost and made again, or a forger's), an edited key line and a
// checkpoint signed with a key outside the chain are reported.
func TestKeyChainBreaks(t *testing.T) {
	keyA, keyB := newLogKey(t), newLogKey(t)
	fpA, fpB := fingerprintOf(keyA), fingerprintOf(keyB)

	t.Run("new key introduced by the key in force", func(t *testing.T) {
		path := writeKeyedLog(t, keyA, nil, Options{}, 2)
		ls := readLines(t, path)
		last, _ := ParseLine(ls[len(ls)-1])
		at := last.Time.Add(time.Millisecond)
		pubB := encodeKey(keyB.Public().(ed25519.PublicKey))
		head := hashLine(ls[len(ls)-1])
		b, _ := json.Marshal(keyLine{Seq: last.Seq + 1, Time: at, Type: TypeKey, Key: pubB,
			Sig: base64.StdEncoding.EncodeToString(ed25519.Sign(keyA, keyMessage(head, last.Seq, at, pubB))), Prev: head})
		writeLines(t, path, append(ls, b))
		writeKeyedLog(t, keyB, nil, Options{Path: path}, 2)
		res := mustVerify(t, VerifyOptions{Path: path, Key: fpA})
		if !res.Intact || res.FirstKey != fpA || res.Key != fpB || res.KeyLines != 3 {
			t.Fatalf("verify: %+v, want intact from %s to %s over 3 key lines", res, fpA, fpB)
		}
	})
	t.Run("new key without the signature of the key in force", func(t *testing.T) {
		path := writeKeyedLog(t, keyA, nil, Options{}, 2)
		writeKeyedLog(t, keyB, nil, Options{Path: path}, 2)
		res := mustVerify(t, VerifyOptions{Path: path, Key: fpA})
		if res.Intact || res.Problem.Kind != ProblemKey || res.Problem.Line != 7 || !strings.Contains(res.Problem.Detail, "without the signature of the key in force") {
			t.Fatalf("verify: %v, want a broken chain of keys at line 7", res.Problem)
		}
	})
	t.Run("key line edited", func(t *testing.T) {
		path := writeKeyedLog(t, keyA, nil, Options{}, 2, 1)
		ls := readLines(t, path)
		var k keyLine
		if err := json.Unmarshal(ls[1], &k); err != nil {
			t.Fatal(err)
		}
		k.Time = k.Time.Add(-time.Hour)
		ls[1], _ = json.Marshal(k)
		writeLines(t, path, forger{}.rewrite(t, ls, 2))
		res := mustVerify(t, VerifyOptions{Path: path, Key: fpA})
		if res.Intact || res.Problem.Kind != ProblemKey || res.Problem.Line != 2 {
			t.Fatalf("verify: %v, want a key problem at line 2", res.Problem)
		}
	})
	t.Run("checkpoint signed with a key outside the chain", func(t *testing.T) {
		path := writeKeyedLog(t, keyA, nil, Options{}, 2)
		ls := readLines(t, path)
		// Re-sign from the checkpoint on with key B, keeping A's key line.
		writeLines(t, path, forger{key: keyB}.rewrite(t, ls, len(ls)-1))
		res := mustVerify(t, VerifyOptions{Path: path, Key: fpA})
		if res.Intact || res.Problem.Kind != ProblemKey || res.Problem.Line != len(ls) || !strings.Contains(res.Problem.Detail, "outside the chain") {
			t.Fatalf("verify: %v, want a checkpoint signed outside the chain at line %d", res.Problem, len(ls))
		}
	})
	t.Run("checkpoint's signature edited", func(t *testing.T) {
		path := writeKeyedLog(t, keyA, nil, Options{}, 2)
		ls := readLines(t, path)
		e, _ := ParseLine(ls[len(ls)-1])
		sig, _ := base64.StdEncoding.DecodeString(e.Sig)
		sig[0] ^= 1
		ls[len(ls)-1] = bytes.Replace(ls[len(ls)-1], []byte(e.Sig), []byte(base64.StdEncoding.EncodeToString(sig)), 1)
		writeLines(t, path, ls)
		if res := mustVerify(t, VerifyOptions{Path: path, Key: fpA}); res.Intact || res.Problem.Kind != ProblemCheckpoint {
			t.Fatalf("verify: %v, want a checkpoint that does not verify", res.Problem)
		}
	})
}

// Rotation: each new file starts with a key line, so that the log still
// names its key, and verifies from the pinned key, when the oldest files
// were deleted.
func TestKeyChainAcrossRotatedFiles(t *testing.T) {
	key := newLogKey(t)
	fp := fingerprintOf(key)
	for _, maxFiles := range []int{100, 3} {
		path := writeKeyedLog(t, key, nil, Options{MaxSize: 2 << 10, MaxFiles: maxFiles}, 30, 30)
		files, err := Files(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(files) < 3 {
			t.Fatalf("%d files, want several", len(files))
		}
		for _, f := range files {
			ls := readLines(t, f)
			first, _ := ParseLine(ls[0])
			second, _ := ParseLine(ls[1])
			if first.Type != TypeKey && (first.Type != TypeStart || second.Type != TypeKey) {
				t.Errorf("%s starts with %s, %s; want a key line first, or after a start line", filepath.Base(f), first.Type, second.Type)
			}
		}
		res := mustVerify(t, VerifyOptions{Path: path, Key: fp})
		if !res.Intact || res.Checkpoints < len(files) || res.Verified != res.Checkpoints || res.KeyLines < len(files) {
			t.Fatalf("max_files %d: verify: %+v, want intact with a key line and a checkpoint per file", maxFiles, res)
		}
		if maxFiles == 3 && (len(files) != 3 || res.Follows == Genesis) {
			t.Fatalf("max_files 3: %d files, following %s; want 3, following a deleted file", len(files), res.Follows)
		}
	}
}

// An upgraded agent with a log of an earlier version: the chain goes on
// from the certificate-signed lines to the key's, across files; the
// lines before the first key line are verified against the CA (and said
// to be); once their files are deleted, none are. A rewrite of the older
// lines breaks the chain at the key's first lines.
func TestKeyChainAfterAnUpgrade(t *testing.T) {
	ca := newTestCA(t)
	cert := leaf(t, ca, testAgent)
	key := newLogKey(t)
	fp := fingerprintOf(key)
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	o := Options{Path: path, MaxSize: 2 << 10, MaxFiles: 100, Certificate: func() *tls.Certificate { return cert }, Agent: testAgent}
	l := startLog(t, o) // an earlier version: certificate-signed checkpoints
	for i := range 20 {
		l.Add(record(i))
	}
	l.stop()
	old, _ := Files(path)
	oldLines := 0
	for _, f := range old {
		oldLines += len(readLines(t, f))
	}
	oldCurrent := len(readLines(t, path)) // rotated with the new run's first lines
	writeKeyedLog(t, key, cert, Options{Path: path, MaxSize: 2 << 10, MaxFiles: 100}, 20, 3)
	files, _ := Files(path)
	if len(old) < 2 || len(files) < len(old)+2 {
		t.Fatalf("%d files of the earlier version, %d in all: want several of each", len(old), len(files))
	}
	vo := VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent, Key: fp}
	res := mustVerify(t, vo)
	if !res.Intact || res.CAOnly != oldLines || res.FirstKey != fp || res.Verified != res.Checkpoints {
		t.Fatalf("verify: %+v, want intact, the %d lines of the earlier version CA-only", res, oldLines)
	}
	// The earlier version's lines, rewritten and signed with a certificate
	// the CA issued, and every line after them re-chained: the first key
	// line no longer verifies, since its signature covers the chain head.
	t.Run("earlier lines rewritten", func(t *testing.T) {
		var all [][]byte
		var counts []int
		for _, f := range files {
			ls := readLines(t, f)
			all, counts = append(all, ls...), append(counts, len(ls))
		}
		all[2] = bytes.Replace(all[2], []byte(`"bytes_from_service":1001`), []byte(`"bytes_from_service":1`), 1)
		all = forger{cert: leaf(t, ca, testAgent)}.rewrite(t, all, 2)
		dir := t.TempDir()
		for i, f := range files {
			writeLines(t, filepath.Join(dir, filepath.Base(f)), all[:counts[i]])
			all = all[counts[i]:]
		}
		vo := vo
		vo.Path = filepath.Join(dir, "access.log")
		res := mustVerify(t, vo)
		if res.Intact || res.Problem.Kind != ProblemKey || res.Problem.File != filepath.Base(files[len(old)-1]) || res.Problem.Line != oldCurrent+2 || !strings.Contains(res.Problem.Detail, "not signed by it") {
			t.Fatalf("verify: %v, want the first key line refused at %s:%d", res.Problem, filepath.Base(files[len(old)-1]), oldCurrent+2)
		}
	})
	for _, f := range old[:len(old)-1] {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	res = mustVerify(t, vo)
	if !res.Intact || res.CAOnly != oldCurrent || res.FirstKey != fp {
		t.Fatalf("verify without the earlier version's rotated files: %+v, want intact, the %d lines left of it CA-only", res, oldCurrent)
	}
	os.Remove(files[len(old)-1])
	res = mustVerify(t, vo)
	if !res.Intact || res.CAOnly != 0 || res.FirstKey != fp {
		t.Fatalf("verify without the earlier version's files: %+v, want intact, nothing CA-only", res)
	}
}

// A log of an earlier version alone verifies against the CA as before,
// all of it CA-only; pinned to a log key, it does not: nothing in it is
// signed by the key.
func TestKeyChainLogOfAnEarlierVersion(t *testing.T) {
	ca := newTestCA(t)
	path := writeLog(t, leaf(t, ca, testAgent), 2, 2)
	res := mustVerify(t, VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent})
	if !res.Intact || res.CAOnly != res.Lines || res.Lines != 8 || res.FirstKey != "" || res.KeyLines != 0 {
		t.Fatalf("verify: %+v, want 8 lines intact, all CA-only", res)
	}
	res = mustVerify(t, VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent, Key: fingerprintOf(newLogKey(t))})
	if res.Intact || res.Problem.Kind != ProblemKey || res.Problem.Line != 8 {
		t.Fatalf("verify pinned: %v, want a key problem at the last line", res.Problem)
	}
}

func TestParseFingerprint(t *testing.T) {
	fp := fingerprintOf(newLogKey(t))
	var grouped []string
	for i := 0; i < len(fp); i += 4 {
		grouped = append(grouped, strings.ToUpper(fp[i:i+4]))
	}
	for _, in := range []string{fp, "sha256:" + fp, "SHA256:" + strings.ToUpper(fp), strings.Join(grouped, " "), strings.Join(grouped, ":"), " " + fp + "\n"} {
		if got, err := ParseFingerprint(in); err != nil || got != fp {
			t.Errorf("ParseFingerprint(%q) = %q, %v; want %s", in, got, err, fp)
		}
	}
	for _, in := range []string{"", fp[:63], fp + "0", "g" + fp[1:], "sha1:" + fp} {
		if _, err := ParseFingerprint(in); err == nil {
			t.Errorf("ParseFingerprint(%q): no error", in)
		}
	}
}

// A log key of the wrong size is a failure of the log (Err), not a panic.
func TestMalformedLogKeyFails(t *testing.T) {
	changed := make(chan struct{}, 1)
	l := startLog(t, Options{Path: filepath.Join(t.TempDir(), "access.log"), Key: ed25519.PrivateKey("short"),
		Changed: func() {
			select {
			case changed <- struct{}{}:
			default:
			}
		}})
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("the writer did not report a failure within 10s")
	}
	if err := l.Err(); err == nil || !strings.Contains(err.Error(), "not an ed25519 private key") {
		t.Fatalf("Err: %v", err)
	}
	l.stop()
}
