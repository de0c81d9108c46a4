package agent

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent/accesslog"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
)

// logRecords queues n stream records (req-<from>… ) for a's access log.
func logRecords(a *Agent, from, n int) {
	for i := from; i < from+n; i++ {
		a.logStream(accesslog.Record{Request: fmt.Sprintf("req-%03d", i), Backend: "backend:billing", Service: "db", Code: "ok", End: accesslog.EndClosed,
			BytesToService: 100, BytesFromService: int64(1000 + i), Relay: "relay:7443", Session: "sess-1"}, time.Now())
	}
}

func verifyAgentLog(t *testing.T, cfg Config, key string) accesslog.Result {
	t.Helper()
	o, err := AccessLogVerifyOptions(cfg, "", key)
	if err != nil {
		t.Fatal(err)
	}
	res, err := accesslog.Verify(o)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// The access log's key is the agent's own, in its state directory: a
// certificate renewal (a new certificate key) and a restart leave it as
// it is, the log's checkpoints before and after verify against it from
// the state directory or its recorded fingerprint, and the status shows
// its fingerprint.
func TestAccessLogKeyAcrossRenewalAndRestart(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	fp, err := LogKeyFingerprint(a.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Status().AccessLogKey; got != fp {
		t.Fatalf("status access_log_key %q, want %s", got, fp)
	}
	if fi, err := os.Stat(filepath.Join(a.cfg.StateDir, LogKeyFile)); err != nil || (runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0) {
		t.Fatalf("%s: %v, %v; want owner-only", LogKeyFile, fi, err)
	}

	stop := runAccessLog(t, a)
	logRecords(a, 0, 3)
	// A renewal: a new certificate key, which the log does not use.
	resp, key := renewalFrom(t, a, root, root)
	cert, _, caPEM, err := a.checkRenewal(resp, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	if err := a.state.replaceKeyPair(pemBlock("PRIVATE KEY", kder), pemBlock("CERTIFICATE", cert.Raw), caPEM); err != nil {
		t.Fatal(err)
	}
	a.cert.Store(&tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert})
	logRecords(a, 3, 3)
	stop()

	// A restart: a new Agent from the same state directory.
	b, err := New(a.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Status().AccessLogKey; got != fp {
		t.Fatalf("after a renewal and a restart: access_log_key %q, want %s", got, fp)
	}
	stop = runAccessLog(t, b)
	logRecords(b, 6, 3)
	stop()

	for _, pin := range []string{"", fp, strings.ToUpper(fp)} {
		res := verifyAgentLog(t, a.cfg, pin)
		if !res.Intact || res.KeyLines != 2 || res.Pinned != fp || res.CAOnly != 0 || res.Checkpoints < 2 || res.Verified != res.Checkpoints {
			t.Fatalf("verify --key %q: %+v, want intact, 2 key lines, pinned to %s", pin, res, fp)
		}
	}
	if res := verifyAgentLog(t, a.cfg, strings.Repeat("ab", 32)); res.Intact || res.Problem.Kind != accesslog.ProblemKey {
		t.Fatalf("verify against another key: %v, want a key problem", res.Problem)
	}
	if _, err := AccessLogVerifyOptions(a.cfg, "", "not a fingerprint"); err == nil {
		t.Fatal("a malformed --key was taken")
	}
}

// The attack: whoever runs the agent's CA issues a certificate for the
// agent's identity with a key of its own, rewrites a line of the log,
// re-chains the lines after it without the key lines and signs the
// checkpoints again, as earlier versions signed them. The agent's CA
// roots and identity accept the certificate; the state directory's log
// key does not, and --verify (AccessLogVerifyOptions's defaults) reports
// the log as not intact.
func TestAccessLogRewriteSignedByTheCAIsDetected(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	stop := runAccessLog(t, a)
	logRecords(a, 0, 4)
	stop()

	forgeSignedByCA(t, a.cfg.AccessLogPath(), root)

	// Against the CA only (no log key, no mark: a copy verified without
	// --key or a state directory), the rewrite verifies: that is what it
	// defeats.
	o, err := AccessLogVerifyOptions(a.cfg, "", "")
	if err != nil {
		t.Fatal(err)
	}
	o.Key, o.Mark = "", ""
	if res, _ := accesslog.Verify(o); !res.Intact || res.CAOnly != res.Lines {
		t.Fatalf("verify against the CA only: %+v, want intact (the rewrite is CA-signed)", res)
	}
	res := verifyAgentLog(t, a.cfg, "")
	if res.Intact || res.Problem.Kind != accesslog.ProblemKey {
		t.Fatalf("verify: intact %v, %v; want the log refused: no line signed by the agent's log key", res.Intact, res.Problem)
	}
}

// An agent enrolled by an earlier version, with a log of certificate-
// signed checkpoints, makes its log key at its first start and goes on
// with the same log: it verifies across the switch, the earlier lines
// verified against the CA only.
func TestAccessLogKeyAfterAnUpgrade(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	cfg := Config{Services: map[string]Service{}, Logger: slog.New(slog.DiscardHandler), AccessLog: AccessLogConfig{Disabled: true}}
	old := enrolledWith(t, cfg, root, root)
	if _, err := os.Stat(filepath.Join(old.cfg.StateDir, LogKeyFile)); !os.IsNotExist(err) {
		t.Fatalf("%s with the access log disabled: %v, want none made", LogKeyFile, err)
	}
	// The earlier version's log: checkpoints signed with the certificate.
	path := filepath.Join(old.cfg.StateDir, defaultAccessLogDir, defaultAccessLogFile)
	l := accesslog.New(accesslog.Options{Path: path, Certificate: old.cert.Load, Agent: "spiffe://tether.internal/tenant/acme/agent/a1", Logger: slog.New(slog.DiscardHandler)})
	old.alog = l
	stop := runAccessLog(t, old)
	logRecords(old, 0, 3)
	stop()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	oldLines := len(bytes.Split(bytes.TrimSpace(raw), []byte("\n")))

	cfg = old.cfg
	cfg.AccessLog.Disabled = false
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := LogKeyFingerprint(cfg.StateDir)
	if err != nil {
		t.Fatalf("no log key made at the upgraded agent's start: %v", err)
	}
	stop = runAccessLog(t, a)
	logRecords(a, 3, 3)
	stop()
	res := verifyAgentLog(t, cfg, "")
	if !res.Intact || res.CAOnly != oldLines || res.Pinned != fp || res.FirstKey != fp || !res.CertificatesChecked {
		t.Fatalf("verify: %+v, want intact from %s, the earlier version's %d lines verified against the CA", res, fp, oldLines)
	}
}

// Enrolment makes the log key; enrolling again (--force) keeps it, so
// that the log goes on in one chain of keys; a key that does not read is
// an error, never replaced.
func TestLogKeyMadeOnceAndKept(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	id := identity.Agent{TrustDomain: "tether.internal", Tenant: "acme", ID: "a1"}
	dir := t.TempDir()
	var fps []string
	for range 2 { // enrolment, then again as with --force
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		resp := &protocol.EnrollResponse{AgentID: id.ID, Tenant: id.Tenant, TrustDomain: id.TrustDomain,
			Certificate: string(pemBlock("CERTIFICATE", root.issue(t, id, key).Raw))}
		if _, err := storeEnrolment(EnrollOptions{StateDir: dir, Relay: "relay:7443", Force: true}, resp, key, root.cert); err != nil {
			t.Fatal(err)
		}
		fp, err := LogKeyFingerprint(dir)
		if err != nil {
			t.Fatalf("after enrolment: %v", err)
		}
		fps = append(fps, fp)
	}
	if fps[0] != fps[1] {
		t.Fatalf("enrolling again replaced the log key: %s, then %s", fps[0], fps[1])
	}

	dir = t.TempDir()
	k1, made, err := loadOrMakeLogKey(dir)
	if err != nil || !made {
		t.Fatalf("first: made %v, %v", made, err)
	}
	k2, made, err := loadOrMakeLogKey(dir)
	if err != nil || made || !k1.Equal(k2) {
		t.Fatalf("second: made %v, same key %v, %v; want the first key read back", made, k1.Equal(k2), err)
	}
	if err := os.WriteFile(filepath.Join(dir, LogKeyFile), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadOrMakeLogKey(dir); err == nil || !strings.Contains(err.Error(), "move the file aside") {
		t.Fatalf("broken key: %v, want an error saying what to do", err)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(ec)
	os.WriteFile(filepath.Join(dir, LogKeyFile), pemBlock("PRIVATE KEY", der), 0o600)
	if _, err := ReadLogKey(dir); err == nil || !strings.Contains(err.Error(), "not an ed25519 key") {
		t.Fatalf("an ECDSA key: %v, want refused", err)
	}
}

// forgeSignedByCA rewrites the log at path as whoever runs root, the
// agent's CA, can: it issues a certificate for the agent's identity with
// a key of its own, hides how much req-001 read from the service,
// re-chains every line without the key lines and signs the checkpoints
// with that certificate, as earlier versions signed them.
func forgeSignedByCA(t *testing.T, path string, root testRoot) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSuffix(raw, []byte("\n")), []byte("\n"))
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id := identity.Agent{TrustDomain: "tether.internal", Tenant: "acme", ID: "a1"}
	forged := root.issue(t, id, key)
	var out [][]byte
	prev := accesslog.Genesis
	for _, l := range lines {
		var m map[string]any
		dec := json.NewDecoder(bytes.NewReader(l))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		switch m["type"] {
		case accesslog.TypeKey:
			continue
		case accesslog.TypeStream:
			if m["request"] == "req-001" {
				m["bytes_from_service"] = 1 // what the forger hides
			}
		case accesslog.TypeCheckpoint:
			at, _ := time.Parse(time.RFC3339Nano, m["time"].(string))
			lines := uint64(len(out))
			digest := sha256.Sum256(fmt.Appendf(nil, "tether-agent access log checkpoint v1\nhead %s\nlines %d\ntime %s\n", prev, lines, at.UTC().Format(time.RFC3339Nano)))
			sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			delete(m, "key")
			m["lines"], m["cert"], m["sig"] = lines, base64.StdEncoding.EncodeToString(forged.Raw), base64.StdEncoding.EncodeToString(sig)
		}
		m["seq"], m["prev"] = len(out)+1, prev
		b, _ := json.Marshal(m)
		out = append(out, b)
		sum := sha256.Sum256(b)
		prev = fmt.Sprintf("%x", sum)
	}
	if err := os.WriteFile(path, append(bytes.Join(out, []byte("\n")), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}

}

// The access log's key appears under its name whole or not at all: a file
// left empty by an earlier version killed between making it and writing
// it is made again (the agent would otherwise never start), a file with
// other bytes is still refused, never replaced, and processes making the
// key at once all end up with the one key, leaving no temporary file.
func TestLogKeyMadeWhole(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, LogKeyFile)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	key, made, err := loadOrMakeLogKey(dir)
	if err != nil || !made {
		t.Fatalf("with an empty key file: made %v, %v; want a new key", made, err)
	}
	if again, err := ReadLogKey(dir); err != nil || !again.Equal(key) {
		t.Fatalf("the key made is not the one read back: %v", err)
	}

	if err := os.WriteFile(path, []byte("-----BEGIN PRIV"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadOrMakeLogKey(dir); err == nil {
		t.Fatal("a key file cut short was replaced; want it refused")
	}

	dir = t.TempDir()
	keys := make([]ed25519.PrivateKey, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, _, err := loadOrMakeLogKey(dir)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if !k.Equal(keys[0]) {
			t.Fatal("processes making the key at once ended up with different keys")
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 1 || ents[0].Name() != LogKeyFile {
		t.Fatalf("the state directory holds %v (%v); want the key file alone", ents, err)
	}
}
