package accesslog

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const testAgent = "spiffe://tether.internal/tenant/acme/agent/a1"

// testCA is a CA root and a leaf it issued to the test agent, as the
// relay's CA issues the agent's certificate.
type testCA struct {
	roots *x509.CertPool
	root  *x509.Certificate
	key   *ecdsa.PrivateKey
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &testCA{roots: pool, root: root, key: key}
}

// leaf issues a certificate for uri; a nil ca makes it self-signed (a
// forger's).
func leaf(t testing.TB, ca *testCA, uri string) *tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{u},
	}
	parent, signer := tmpl, any(key)
	if ca != nil {
		parent, signer = ca.root, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: c}
}

// running is a Log whose writer runs until stop.
type running struct {
	*Log
	stop func()
}

// startLog opens a log and runs its writer; stop drains and closes it.
func startLog(t testing.TB, o Options) *running {
	t.Helper()
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	l := New(o)
	l.Open()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { l.Run(ctx) })
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			wg.Wait()
		})
	}
	t.Cleanup(stop)
	return &running{Log: l, stop: stop}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func record(i int) Record {
	return Record{
		Time: time.Now(), Request: fmt.Sprintf("req-%03d", i), Backend: "backend:billing", Service: "db",
		Code: "ok", End: EndClosed, BytesToService: int64(100 + i), BytesFromService: int64(1000 + i),
		Duration: time.Duration(i) * time.Millisecond, Relay: "relay:7443", Session: "s1",
	}
}

// writeLog writes runs of records, one agent run each (each ends with the
// checkpoint of a clean stop), and returns the log's path.
func writeLog(t testing.TB, cert *tls.Certificate, runs ...int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "log", "access.log") // the writer makes the directory
	n := 0
	for _, k := range runs {
		l := startLog(t, Options{Path: path, Certificate: func() *tls.Certificate { return cert }, Agent: testAgent, Version: "test"})
		for range k {
			l.Add(record(n))
			n++
		}
		l.stop()
		if err := l.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// readLines returns the lines of a file without their newlines.
func readLines(t testing.TB, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
}

func writeLines(t testing.TB, path string, lines [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, append(bytes.Join(lines, []byte("\n")), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
}

// entries reads every line of the log at path.
func entries(t testing.TB, path string) []Entry {
	t.Helper()
	var out []Entry
	err := Read(path, func(file string, n int, e Entry, _ []byte, err error) error {
		if err != nil {
			t.Fatalf("%s:%d: %v", file, n, err)
		}
		out = append(out, e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustVerify(t testing.TB, o VerifyOptions) Result {
	t.Helper()
	res, err := Verify(o)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// waitFor polls cond (an observable state with no event to wait on) for
// at most 10s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
