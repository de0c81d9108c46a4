package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent/accesslog"
)

// copyTree copies the regular files under src to dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// keyOnDisk reports whether any file under dir holds key's seed.
func keyOnDisk(t *testing.T, dir string, key ed25519.PrivateKey) string {
	t.Helper()
	der := pemBlock("PRIVATE KEY", mustPKCS8(t, key))
	found := ""
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, der) {
				found = p
			}
		}
		return nil
	})
	return found
}

func mustPKCS8(t *testing.T, key ed25519.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// The agent replaces its access log's key: the log verifies from the
// first key (the default pin, from the key record, and the fingerprint
// given), the old private key is nowhere in the state directory, and the
// status shows the new key and since when. A start with a key older than
// key_rotation replaces it at once.
func TestAgentRotatesItsLogKey(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	k0 := append(ed25519.PrivateKey(nil), a.logKey...)
	fp0 := accesslog.Fingerprint(k0.Public().(ed25519.PublicKey))
	if st := a.Status(); st.AccessLogKey != fp0 || st.AccessLogKeySince.IsZero() || st.AccessLogKeyRotation != "24h0m0s" {
		t.Fatalf("status: key %s since %v every %q; want %s, a time, 24h", st.AccessLogKey, st.AccessLogKeySince, st.AccessLogKeyRotation, fp0)
	}
	stop := runAccessLog(t, a)
	logRecords(a, 0, 3)
	done := make(chan struct{})
	if err := a.alog.RotateKey(done); err != nil {
		t.Fatal(err)
	}
	logRecords(a, 3, 3)
	st := a.Status()
	stop()
	k1, err := ReadLogKey(a.cfg.StateDir)
	if err != nil || k1.Equal(k0) {
		t.Fatalf("the key file after a rotation: %v, the old key: %v", err, k1.Equal(k0))
	}
	if st.AccessLogKey != accesslog.Fingerprint(k1.Public().(ed25519.PublicKey)) || time.Since(st.AccessLogKeySince) > time.Minute {
		t.Fatalf("status after a rotation: %s since %v", st.AccessLogKey, st.AccessLogKeySince)
	}
	if p := keyOnDisk(t, a.cfg.StateDir, k0); p != "" {
		t.Fatalf("the old log key is still on disk, in %s", p)
	}
	if _, err := os.Stat(filepath.Join(a.cfg.StateDir, LogKeyNextFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s stays: %v", LogKeyNextFile, err)
	}
	for _, pin := range []string{"", fp0} {
		res := verifyAgentLog(t, a.cfg, pin)
		if !res.Intact || res.Pinned != fp0 || len(res.Keys) != 2 || res.Keys[1].Via != accesslog.ViaLine {
			t.Fatalf("verify --key %q: %+v", pin, res)
		}
	}

	// A start with a key older than key_rotation replaces it at once.
	cfg := a.cfg
	cfg.AccessLog.KeyRotation = KeyRotation(time.Minute)
	replaced := make(chan struct{}, 1)
	cfg.LogKeyStep = func(s string) {
		if s == accesslog.StepReplaced {
			replaced <- struct{}{}
		}
	}
	backdateRecord(t, cfg.StateDir, time.Hour)
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop = runAccessLog(t, b)
	<-replaced
	stop()
	if k2, _ := ReadLogKey(cfg.StateDir); k2.Equal(k1) {
		t.Fatal("a start with a key older than key_rotation kept it")
	}
	if res := verifyAgentLog(t, a.cfg, fp0); !res.Intact || len(res.Keys) != 3 {
		t.Fatalf("verify after the start's rotation: %+v", res)
	}
}

// backdateRecord replaces the key record with one that starts with the
// key in force, put in force ago: what a key that old looks like.
func backdateRecord(t *testing.T, dir string, ago time.Duration) {
	t.Helper()
	key, err := ReadLogKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	// A record that starts again with the key in force, made ago.
	path := filepath.Join(dir, LogKeyRecordFile)
	os.Rename(path, path+".before")
	if err := accesslog.AppendKeyRecord(path, key, key.Public().(ed25519.PublicKey), 0, time.Now().Add(-ago)); err != nil {
		t.Fatal(err)
	}
}

// rotationStates runs a rotation of a's log key and returns the state
// directory (with its access log) as a crash at each step leaves it,
// plus two states no step leaves but a crash in the middle of a write
// does: half the key line written, and half the record's line.
func rotationStates(t *testing.T) (states map[string]string, k0, k1 ed25519.PrivateKey, fp0 string) {
	t.Helper()
	snaps := t.TempDir()
	states = map[string]string{}
	var mu sync.Mutex
	var dir string
	hook := func(step string) {
		mu.Lock()
		defer mu.Unlock()
		to := filepath.Join(snaps, step)
		copyTree(t, dir, to)
		states[step] = to
	}
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolledWith(t, Config{Services: map[string]Service{}, Logger: slog.New(slog.DiscardHandler), LogKeyStep: hook}, root, root)
	dir = a.cfg.StateDir
	k0 = append(ed25519.PrivateKey(nil), a.logKey...)
	fp0 = accesslog.Fingerprint(k0.Public().(ed25519.PublicKey))
	stop := runAccessLog(t, a)
	logRecords(a, 0, 3)
	if err := a.alog.RotateKey(make(chan struct{})); err != nil {
		t.Fatal(err)
	}
	logRecords(a, 3, 3)
	stop()
	k1, _ = ReadLogKey(dir)
	for _, s := range []string{accesslog.StepNextKey, accesslog.StepKeyLine, accesslog.StepRecord, accesslog.StepReplaced} {
		if states[s] == "" {
			t.Fatalf("no step %s", s)
		}
	}
	// Half the key line: the key-line state with its last line cut.
	half := filepath.Join(snaps, "key-line-half")
	copyTree(t, states[accesslog.StepKeyLine], half)
	logFile := filepath.Join(half, defaultAccessLogDir, defaultAccessLogFile)
	b, _ := os.ReadFile(logFile)
	i := bytes.LastIndexByte(b[:len(b)-1], '\n')
	os.WriteFile(logFile, b[:i+1+(len(b)-i)/2], 0o600)
	states["key-line-half"] = half
	// Half the record's line: the key-line state with half of the line
	// the record step added.
	halfRec := filepath.Join(snaps, "record-half")
	copyTree(t, states[accesslog.StepKeyLine], halfRec)
	before, _ := os.ReadFile(filepath.Join(states[accesslog.StepKeyLine], LogKeyRecordFile))
	after, _ := os.ReadFile(filepath.Join(states[accesslog.StepRecord], LogKeyRecordFile))
	os.WriteFile(filepath.Join(halfRec, LogKeyRecordFile), after[:len(before)+(len(after)-len(before))/2], 0o600)
	states["record-half"] = halfRec
	// The next key cut short while written (before its rename): the
	// next-key state without the next key, and half of it in a
	// temporary file.
	tmp := filepath.Join(snaps, "next-key-tmp")
	copyTree(t, states[accesslog.StepNextKey], tmp)
	nb, _ := os.ReadFile(filepath.Join(tmp, LogKeyNextFile))
	os.Remove(filepath.Join(tmp, LogKeyNextFile))
	os.WriteFile(filepath.Join(tmp, "."+LogKeyNextFile+".12345"), nb[:len(nb)/2], 0o600)
	states["next-key-tmp"] = tmp
	return states, k0, k1, fp0
}

// A crash at any point of a rotation leaves a state the agent starts
// from: the rotation is finished when the log names the new key (the key
// record gets it, it replaces the old key, which is then gone), and
// undone when it does not (the next key is removed, the old key stays);
// the log, written on after the start, verifies from the first key.
func TestLogKeyRotationCrashPoints(t *testing.T) {
	states, k0, k1, fp0 := rotationStates(t)
	want := map[string]ed25519.PrivateKey{
		"next-key-tmp":         k0, // not even stored whole
		accesslog.StepNextKey:  k0, // the log never named k1
		"key-line-half":        k0, // the incomplete key line is cut off
		accesslog.StepKeyLine:  k1,
		"record-half":          k1,
		accesslog.StepRecord:   k1,
		accesslog.StepReplaced: k1,
	}
	for name, src := range states {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			copyTree(t, src, dir)
			cfg := Config{StateDir: dir, Services: map[string]Service{}, Logger: slog.New(slog.DiscardHandler)}
			a, err := New(cfg)
			if err != nil {
				t.Fatalf("the agent does not start after a crash at %s: %v", name, err)
			}
			key, err := ReadLogKey(dir)
			if err != nil || !key.Equal(want[name]) {
				t.Fatalf("after a crash at %s: key k1 %v, k0 %v (%v)", name, key.Equal(k1), key.Equal(k0), err)
			}
			if !a.logKey.Equal(want[name]) {
				t.Fatal("the agent signs with another key than the key file's")
			}
			if _, err := os.Stat(filepath.Join(dir, LogKeyNextFile)); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("%s stays: %v", LogKeyNextFile, err)
			}
			if tmps, _ := filepath.Glob(filepath.Join(dir, "."+LogKeyNextFile+".*")); len(tmps) > 0 {
				t.Fatalf("temporary next keys stay: %v", tmps)
			}
			if want[name].Equal(k1) {
				if p := keyOnDisk(t, dir, k0); p != "" {
					t.Fatalf("the old key is still on disk in %s", p)
				}
			}
			links, err := accesslog.ReadKeyRecord(filepath.Join(dir, LogKeyRecordFile))
			if err != nil || len(links) == 0 || !links[len(links)-1].Key.Equal(want[name].Public()) || links[0].Fingerprint != fp0 {
				t.Fatalf("key record: %d lines, %v", len(links), err)
			}
			stop := runAccessLog(t, a)
			logRecords(a, 10, 2)
			stop()
			res := verifyAgentLog(t, cfg, fp0)
			if !res.Intact {
				t.Fatalf("verify from the first key after a crash at %s: %v", name, res.Problem)
			}
			// And a rotation from there works.
			b, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			stop = runAccessLog(t, b)
			if err := b.alog.RotateKey(make(chan struct{})); err != nil {
				t.Fatal(err)
			}
			stop()
			if res := verifyAgentLog(t, cfg, fp0); !res.Intact {
				t.Fatalf("verify after a rotation following the recovery: %v", res.Problem)
			}
		})
	}
}

// With max_files small, rotations and the files they delete: the log
// verifies from the first key through the key record, and did not
// without it (before the record, verify stopped at the oldest file's key:
// not the pinned one).
func TestLogKeyRotationAfterOldFilesAreDeleted(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	cfg := Config{Services: map[string]Service{}, Logger: slog.New(slog.DiscardHandler)}
	cfg.AccessLog.MaxSize, cfg.AccessLog.MaxFiles = 2<<10, 3
	a := enrolledWith(t, cfg, root, root)
	cfg = a.cfg
	fp0, _ := LogKeyFingerprint(cfg.StateDir)
	for run := range 3 {
		b, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		stop := runAccessLog(t, b)
		logRecords(b, run*40, 40)
		if err := b.alog.RotateKey(make(chan struct{})); err != nil {
			t.Fatal(err)
		}
		stop()
	}
	res := verifyAgentLog(t, cfg, fp0)
	if !res.Intact || res.Follows == accesslog.Genesis || len(res.Keys) == 0 || res.Keys[0].Via != accesslog.ViaRecord {
		t.Fatalf("verify from the first key once its files are deleted: %+v", res)
	}
	o, _ := AccessLogVerifyOptions(cfg, "", fp0)
	o.KeyRecord = ""
	if res, _ := accesslog.Verify(o); res.Intact {
		t.Fatal("verified without the key record")
	} else {
		t.Logf("without the key record: %v", res.Problem)
	}
}

// tether-agent access-log --rotate-key: its work: refused while an agent
// holds the state directory; otherwise the key is replaced and the log
// verifies from the first key.
func TestRotateAccessLogKeyCommand(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	fp0, _ := LogKeyFingerprint(a.cfg.StateDir)
	lock, err := LockStateDir(a.cfg.StateDir, "run")
	if err != nil {
		t.Fatal(err)
	}
	var busy *StateDirBusyError
	if _, _, err := RotateAccessLogKey(a.cfg, "access-log --rotate-key"); !errors.As(err, &busy) {
		t.Fatalf("rotate-key while an agent holds the state directory: %v, want it busy", err)
	}
	lock.Release()
	old, next, err := RotateAccessLogKey(a.cfg, "access-log --rotate-key")
	if err != nil || old != fp0 || next == fp0 || next == "" {
		t.Fatalf("rotate-key: %s -> %s, %v", old, next, err)
	}
	if fp, _ := LogKeyFingerprint(a.cfg.StateDir); fp != next {
		t.Fatalf("key file %s, want %s", fp, next)
	}
	res := verifyAgentLog(t, a.cfg, "")
	if !res.Intact || res.Pinned != fp0 || res.Key != next || !res.CleanStop {
		t.Fatalf("verify after rotate-key: %+v", res)
	}
	if !strings.Contains(string(mustRead(t, filepath.Join(a.cfg.StateDir, LogKeyRecordFile))), "key ") {
		t.Fatal("no key record")
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// access_log.key_rotation: a duration within bounds, or off; 24h when
// unset.
func TestKeyRotationSetting(t *testing.T) {
	base := "state_dir: /var/lib/tether\nrelays: [relay:7443]\n"
	for in, want := range map[string]time.Duration{"": 24 * time.Hour, "key_rotation: 1h": time.Hour, "key_rotation: off": 0, "key_rotation: 168h": 168 * time.Hour} {
		c, err := ParseConfig([]byte(base + "access_log:\n  " + in + "\n"))
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if got := c.AccessLog.KeyRotation.Interval(); got != want {
			t.Errorf("%q: every %v, want %v", in, got, want)
		}
	}
	for _, in := range []string{"key_rotation: 10s", "key_rotation: -1h", "key_rotation: 0s", "key_rotation: daily", "key_rotation: [1h]", "key_rotation: 10000h"} {
		if _, err := ParseConfig([]byte(base + "access_log:\n  " + in + "\n")); err == nil {
			t.Errorf("%q: accepted", in)
		}
	}
}

// A running agent, connected to a relay and serving streams, whose log
// key is older than key_rotation: it replaces the key right after its
// start line, the streams before and after the replacement are in the
// log, the status shows the new key, and the log verifies from the first
// key.
func TestRunningAgentRotatesAnOldKey(t *testing.T) {
	ca := newTestCA(t)
	r1 := newTestRelay(t, ca, "r1", "127.0.0.2", true)
	addr := r1.listen("127.0.0.1")
	r1.setList(infos(r1))
	svcs := map[string]Service{"echo": {Address: echoService(t)}}
	base := enrolledWith(t, Config{Services: svcs, Logger: slog.New(slog.DiscardHandler)}, ca.root, ca.root)
	cfg := base.cfg
	fp0, _ := LogKeyFingerprint(cfg.StateDir)
	backdateRecord(t, cfg.StateDir, 2*time.Hour)
	replaced := make(chan struct{}, 4)
	cfg.LogKeyStep = func(s string) {
		if s == accesslog.StepReplaced {
			replaced <- struct{}{}
		}
	}
	cfg.AccessLog.KeyRotation = KeyRotation(time.Hour)
	cfg.Relays, cfg.RelayConnections, cfg.Transport, cfg.NoFileWatch = []string{addr}, 1, TransportTCP, true
	cfg.Reconnect = Backoff{Initial: 100 * time.Millisecond, Max: time.Second}
	cfg.Logger = slog.New(slog.NewTextHandler(testLogWriter{t}, nil))
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	select {
	case <-replaced:
	case <-time.After(10 * time.Second):
		t.Fatal("a start with a key 2h old and key_rotation 1h did not replace it")
	}
	waitFor(t, 10*time.Second, "a session on r1", func() error {
		if len(r1.open()) == 0 {
			return errors.New("none")
		}
		return nil
	})
	for range 2 {
		st, err := r1.open()[0].openStream(ctx, "echo")
		if err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(st, "hello"); err != nil {
			t.Fatal(err)
		}
		st.Close()
	}
	st := a.Status()
	stop()
	k1, _ := LogKeyFingerprint(cfg.StateDir)
	if k1 == fp0 || st.AccessLogKey != k1 || time.Since(st.AccessLogKeySince) > time.Minute || st.AccessLogKeyRotation != "1h0m0s" {
		t.Fatalf("status: key %s since %v every %s; key file %s, first key %s", st.AccessLogKey, st.AccessLogKeySince, st.AccessLogKeyRotation, k1, fp0)
	}
	res := verifyAgentLog(t, cfg, fp0)
	if !res.Intact || res.Key != k1 || len(res.Keys) != 2 {
		t.Fatalf("verify from the first key: %+v", res)
	}
	n := 0
	accesslog.Read(cfg.AccessLogPath(), func(_ string, _ int, e accesslog.Entry, _ []byte, _ error) error {
		if e.Type == accesslog.TypeStream && e.Service == "echo" && e.Seq > res.Keys[1].Seq {
			n++
		}
		return nil
	})
	if n != 2 {
		t.Fatalf("%d stream lines after the key line, want 2", n)
	}
}
