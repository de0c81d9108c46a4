package test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/client"
)

// TestClusterSharesOneCA runs two relays on one PostgreSQL store, each
// with a data directory of its own: they serve from one CA kept in the
// store, an agent enrolled through one connects to the other and carries
// a backend's streams there, and a rotation made with the admin commands
// on the store (--store, the key-encryption key in a file) reaches both:
// the agent renews onto the new root at the relay it is connected to, and
// after the retirement both relays serve from the new root. Without the
// key-encryption key neither relay nor admin command starts.
func TestClusterSharesOneCA(t *testing.T) {
	pg := pgtest.Start(t)
	kek := make([]byte, 32)
	rand.Read(kek)
	kekFile := filepath.Join(t.TempDir(), "ca.kek")
	if err := os.WriteFile(kekFile, []byte(base64.StdEncoding.EncodeToString(kek)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	store := []string{"--store", pg.DSN(), "--ca-kek-file", kekFile}

	_, stderr, err := runCmd(t, bins.relay, "serve", "--store", pg.DSN(), "--data-dir", t.TempDir(), "--agent-listen", "127.0.0.1:0")
	if exitCode(err) != 1 || !strings.Contains(stderr, "--ca-kek-file FILE or TETHER_CA_KEK") {
		t.Fatalf("serve on PostgreSQL without a key-encryption key: %v\n%s", err, stderr)
	}

	r1 := startRelay(t, relayOpts{extra: store})
	r2 := startRelay(t, relayOpts{extra: store})
	for _, r := range []*relayProc{r1, r2} {
		if _, err := os.Stat(filepath.Join(r.dataDir, "ca")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("a relay on PostgreSQL made a CA directory of its own (%v)", err)
		}
	}
	first := servedRoot(t, r1)
	if got := servedRoot(t, r2); got != first {
		t.Fatalf("the relays serve from CA roots %s and %s", first, got)
	}
	// Admin commands act on the cluster through the store; the data
	// directory only keeps their audit file.
	cluster := func(args ...string) string { return r1.admin(t, append(args, store...)...) }
	if _, stderr, err := runCmd(t, bins.relay, "tenant", "list", "--store", pg.DSN(), "--data-dir", r1.dataDir); exitCode(err) != 1 || !strings.Contains(stderr, "TETHER_CA_KEK") {
		t.Fatalf("an admin command without the key-encryption key: %v\n%s", err, stderr)
	}
	cluster("tenant", "add", "acme")
	key := cluster("backend", "add", "billing", "--allow", "acme")

	stateDir, id := enroll(t, r1.agentAddr, cluster("token", "create", "--tenant", "acme"))
	a := runAgent(t, stateDir, id, r2.agentAddr, agentOpts{transport: "tcp", services: map[string]string{"echo": tcpService(t, echo)}})
	d := &client.Dialer{Relay: r2.connectAddr, Backend: "billing", APIKey: key, Timeout: 20 * time.Second}
	held := waitDial(t, d, "echo.acme.tether:7", 20*time.Second)
	echoOnce(t, held, "enrolled at one relay, connected to the other")
	held.Close()

	cluster("ca", "rotate", "--renew-now")
	for _, r := range []*relayProc{r1, r2} {
		waitCount(t, r.proc, `"msg":"CA roots changed"`, 1, 10*time.Second)
	}
	// The endorsement of the new root by the old is in the store (in the
	// clear, as certificates are), where every relay reads it: the agent,
	// enrolled through relay 1, accepts the new root at relay 2 with it.
	db, err := pgx.Connect(context.Background(), pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	caFile := func(name string) []byte {
		t.Helper()
		var data []byte
		var kek string
		if err := db.QueryRow(context.Background(), `SELECT data, kek_id FROM ca_files WHERE name = $1`, name).Scan(&data, &kek); err != nil || kek != "" {
			t.Fatalf("CA file %s in the store: kek %q, %v", name, kek, err)
		}
		return data
	}
	pemCert := func(name string) *x509.Certificate {
		t.Helper()
		b, _ := pem.Decode(caFile(name))
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	checkEndorsed(t, caFile("roots.json"), pemCert("ca.crt"), pemCert("ca-2.crt"))
	a.waitOutput(`"msg":"certificate renewed"`, 30*time.Second)
	if got := readKeyPair(t, a.stateDir).Leaf.Issuer.CommonName; got != secondRootName {
		t.Fatalf("the agent renewed at the other relay onto %q, want %q", got, secondRootName)
	}
	var st caStatus
	if err := json.Unmarshal([]byte(cluster("ca", "status", "-o", "json")), &st); err != nil || len(st.Roots) != 2 || st.Roots[1].Agents != 1 {
		t.Fatalf("ca status after the renewal: %+v, %v", st, err)
	}
	cluster("ca", "retire")
	second := ""
	deadline := time.Now().Add(10 * time.Second)
	for {
		r1root, r2root := servedRoot(t, r1), servedRoot(t, r2)
		if r1root != first && r1root == r2root {
			second = r1root
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the retirement the relays serve from %s and %s; the old root was %s", r1root, r2root, first)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if exported := strings.TrimSpace(cluster("ca", "status", "-o", "json")); !strings.Contains(exported, second) {
		t.Fatalf("the relays serve from %s, which ca status does not list:\n%s", second, exported)
	}
	// The agent reaches the relay with its renewed certificate. (Its
	// sessions may have been closed by the retirement: a renewal within
	// the second of its enrolment, as here, leaves them counted on the old
	// root.)
	c := waitDial(t, d, "echo.acme.tether:7", 20*time.Second)
	echoOnce(t, c, "a new stream after the retirement")
	c.Close()
}

// servedRoot is the fingerprint of the CA root the relay's certificate
// comes from (its chain carries it), read over the enrolment protocol.
func servedRoot(t *testing.T, r *relayProc) string {
	t.Helper()
	c, err := tls.Dial("tcp", r.agentAddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{protocol.ALPNEnroll}}) //nolint:gosec // only reads the certificate
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	chain := c.ConnectionState().PeerCertificates
	return protocol.FormatFingerprint(protocol.Fingerprint(chain[len(chain)-1].Raw))
}
