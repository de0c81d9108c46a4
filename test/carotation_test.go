package test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport/tcp"
	"github.com/tetherhq/tether/relay/client"
)

const (
	firstRootName  = "Tether tenant CA tether.internal"
	secondRootName = "Tether tenant CA tether.internal #2"
)

// TestCARotationWithoutDowntime rotates the relay's CA while traffic flows:
// a stream held open echoes and new streams open continuously through
// `ca rotate`, the agent's renewal onto the new root (at its scheduled
// time over QUIC, at once with --renew-now over TCP) and `ca retire`, and
// none fails. Then the relay is killed and restarted: the agent comes back
// and trusts the relay's new certificate, a certificate from the retired
// root is refused, and an agent that was offline through the whole
// overlap is told to enrol again.
func TestCARotationWithoutDowntime(t *testing.T) {
	for _, tc := range []struct {
		transport string
		renewNow  bool
	}{{"quic", false}, {"tcp", true}} {
		t.Run(tc.transport, func(t *testing.T) {
			t.Parallel()
			testCARotation(t, tc.transport, tc.renewNow)
		})
	}
}

func testCARotation(t *testing.T, transport string, renewNow bool) {
	// 45 s certificates: without --renew-now the agent renews about 30 s
	// after enrolling, onto whichever root signs then.
	r := startRelay(t, relayOpts{extra: []string{"--agent-cert-lifetime", "45s"}})
	r.addTenant(t, "acme")
	d := r.backend(t, "billing", "acme")
	svc := map[string]string{"echo": tcpService(t, echo)}
	a := startAgent(t, r, "acme", agentOpts{transport: transport, services: svc})
	oldCert := readKeyPair(t, a.stateDir)
	if got := oldCert.Leaf.Issuer.CommonName; got != firstRootName {
		t.Fatalf("agent certificate issued by %q, want %q", got, firstRootName)
	}
	// An agent enrolled now that stays offline through the whole overlap,
	// and a join token made before the rotation, used during it.
	offlineState, offlineID := enroll(t, r.agentAddr, r.token(t, "acme"))
	earlyToken := r.token(t, "acme")

	// Traffic: one stream held open, echoing, and new streams all along.
	held := waitDial(t, d, "echo.acme.tether:7", 20*time.Second)
	defer held.Close()
	echoOnce(t, held, "before rotation")
	tr := startTraffic(t, d, held)

	if renewNow {
		r.admin(t, "ca", "rotate", "--renew-now")
	} else {
		r.admin(t, "ca", "rotate")
		// The agent has not renewed yet: retire refuses and names it.
		_, stderr, err := runCmd(t, bins.relay, "ca", "retire", "--data-dir", r.dataDir)
		if err == nil || !strings.Contains(stderr, "acme/"+a.id) || !strings.Contains(stderr, "--force") {
			t.Fatalf("ca retire with the agent on the old root: err %v, stderr:\n%s", err, stderr)
		}
	}

	// The old root endorsed the new one, and the CA keeps the endorsement
	// with the new root: what lets the agent accept the new root.
	manifest, err := os.ReadFile(filepath.Join(r.dataDir, "ca", "roots.json"))
	if err != nil {
		t.Fatal(err)
	}
	checkEndorsed(t, manifest, readCert(t, filepath.Join(r.dataDir, "ca", "ca.crt")), readCert(t, filepath.Join(r.dataDir, "ca", "ca-2.crt")))
	// ca status's table says so too: root 2, endorsed by root 1.
	if out := r.admin(t, "ca", "status"); !regexp.MustCompile(`(?m)^2 .* root 1\s*$`).MatchString(out) || !strings.Contains(out, "ENDORSED BY") {
		t.Errorf("ca status does not show root 2 endorsed by root 1:\n%s", out)
	}

	// During the overlap an agent that has not renewed still connects: the
	// relay's certificate still comes from the old root, which the agent
	// trusts, and certificates from the old root are accepted.
	waitCount(t, r.proc, `"msg":"CA roots changed"`, 1, 10*time.Second)
	oldRoots := x509.NewCertPool()
	oldRoots.AddCert(readCert(t, filepath.Join(r.dataDir, "ca", "ca.crt")))
	if err := tunnelHandshake(t, r, oldRoots, readKeyPair(t, offlineState)); err != nil {
		t.Fatalf("an agent on the old root cannot connect during the overlap: %v", err)
	}

	// The agent renews onto the new root and trusts both: it accepts the
	// new root only with the old root's endorsement.
	a.waitOutput(`"msg":"certificate renewed"`, 60*time.Second)
	if renewNow && !strings.Contains(a.out.String(), "renewing the certificate now, as the relay asked") {
		t.Errorf("the agent renewed, but not because the relay asked:\n%s", a.out.String())
	}
	newCert := readKeyPair(t, a.stateDir)
	if got := newCert.Leaf.Issuer.CommonName; got != secondRootName {
		t.Fatalf("renewed certificate issued by %q, want %q", got, secondRootName)
	}
	if roots := readCerts(t, filepath.Join(a.stateDir, "ca.crt")); len(roots) != 2 {
		t.Fatalf("the agent trusts %d roots during the overlap, want 2", len(roots))
	}
	waitCAStatus(t, r, "the agent counted on the new root", func(st caStatus) bool {
		// The offline agent stays on the old root (over QUIC its 45 s
		// certificate may have expired by now, and then it is not counted).
		return len(st.Roots) == 2 && st.Roots[1].Agents == 1 && (st.Roots[0].Agents == 1 || !renewNow)
	})

	// A token made before the rotation still enrols, onto the new root.
	lateState, _ := enroll(t, r.agentAddr, earlyToken)
	if got := readKeyPair(t, lateState).Leaf.Issuer.CommonName; got != secondRootName {
		t.Fatalf("agent enrolled during the overlap got a certificate from %q, want %q", got, secondRootName)
	}
	if roots := readCerts(t, filepath.Join(lateState, "ca.crt")); len(roots) != 2 {
		t.Fatalf("agent enrolled during the overlap trusts %d roots, want 2", len(roots))
	}

	// A token made during the overlap pins the old root, which the relay
	// still serves from.
	overlapToken := r.token(t, "acme")

	// The offline agent still holds a certificate from the old root: only
	// --force retires it, and says who must enrol again.
	stderr := mustRunStderr(t, bins.relay, "ca", "retire", "--force", "--data-dir", r.dataDir)
	if renewNow && !strings.Contains(stderr, offlineID) {
		t.Errorf("ca retire --force does not name the stranded agent %s:\n%s", offlineID, stderr)
	}
	if !strings.Contains(stderr, "no longer works") {
		t.Errorf("ca retire does not list the join token that pinned the old root:\n%s", stderr)
	}
	waitCount(t, r.proc, `"msg":"CA roots changed"`, 2, 10*time.Second)
	// Traffic after the retirement, on the sessions already up: the held
	// stream echoes again (every 200 ms), and ten new streams open (one
	// every 50 ms), waited for, not a fixed 2 s that a round trip through
	// a loaded machine could outlast. (stop also wants 20 new streams in
	// all: a rotation that went quickly leaves fewer before this.)
	echoes, opened := tr.echoes.Load(), tr.opened.Load()
	for deadline := time.Now().Add(15 * time.Second); tr.echoes.Load() <= echoes || tr.opened.Load() < max(opened+10, 20); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("15 s after the retirement: the held stream echoed %d times, %d new streams opened since (%d in all); want an echo, 10 since and 20 in all",
				tr.echoes.Load()-echoes, tr.opened.Load()-opened, tr.opened.Load())
			break
		}
	}
	tr.stop(t)
	if strings.Contains(a.out.String(), "connection to relay lost") {
		t.Fatalf("a session was lost during the rotation:\n%s", a.out.String())
	}
	held.Close()

	// A certificate from the retired root is refused, and the audit says why.
	newRoots := x509.NewCertPool()
	newRoots.AddCert(readCert(t, filepath.Join(r.dataDir, "ca", "ca-2.crt")))
	if err := tunnelHandshake(t, r, newRoots, oldCert); err == nil {
		t.Fatal("the relay accepted a certificate from the retired root")
	}
	waitAudit(t, r, "the refused certificate from the retired root", func(m map[string]any) bool {
		det, _ := m["detail"].(map[string]any)
		return m["kind"] == "agent.handshake" && det != nil && strings.Contains(fmt.Sprint(det["error"]), "retired")
	})

	// Restart: the agent comes back and trusts the relay's new certificate.
	connected := strings.Count(a.out.String(), `"msg":"connected to relay"`)
	r.kill()
	r.restart()
	waitCount(t, r.proc, `"msg":"relay serving"`, 2, 20*time.Second)
	waitCount(t, a.proc, `"msg":"connected to relay"`, connected+1, 30*time.Second)
	c := waitDial(t, d, "echo.acme.tether:7", 20*time.Second)
	echoOnce(t, c, "after restart")
	c.Close()
	if got := relayCertIssuer(t, r); got != secondRootName {
		t.Fatalf("relay certificate after the retirement issued by %q, want %q", got, secondRootName)
	}
	if strings.Contains(a.out.String(), "does not come from a CA root this agent trusts") {
		t.Fatalf("the agent does not trust the relay's new certificate:\n%s", a.out.String())
	}

	// The token made during the overlap no longer enrols, and says why.
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(overlapToken), 0o600)
	_, stderr, err = runCmd(t, bins.agent, "enroll", "--relay", r.agentAddr, "--token-file", tokenFile, "--state-dir", t.TempDir())
	if err == nil || !strings.Contains(stderr, "retired since") {
		t.Errorf("enrolment with a token pinning the retired root: err %v, stderr:\n%s", err, stderr)
	}

	// The agent that slept through the overlap is told what to do.
	if transport == "tcp" {
		off := runAgentNoWait(t, offlineState, offlineID, r.agentAddr, agentOpts{transport: transport})
		off.waitOutput("enrol it again with a new join token", 20*time.Second)
		if !strings.Contains(off.out.String(), "does not come from a CA root this agent trusts") {
			t.Errorf("offline agent's error does not explain itself:\n%s", off.out.String())
		}
	}

	waitAudit(t, r, "the rotation", kindOutcome("ca.rotate", "ok"))
	waitAudit(t, r, "the retirement", func(m map[string]any) bool {
		det, _ := m["detail"].(map[string]any)
		return m["kind"] == "ca.retire" && m["outcome"] == "ok" && det != nil && det["forced"] == true
	})
	waitAudit(t, r, "the renewal onto the new root", func(m map[string]any) bool {
		det, _ := m["detail"].(map[string]any)
		return m["kind"] == "agent.renew" && m["outcome"] == "ok" && det != nil && det["ca_root"] != nil
	}, "--agent", a.id)
}

// checkEndorsed checks that the CA's roots.json (manifest) holds, with
// root generation 2, its endorsement by old: a certificate for newRoot's
// subject and key issued by old's key.
func checkEndorsed(t *testing.T, manifest []byte, old, newRoot *x509.Certificate) {
	t.Helper()
	var m struct {
		Roots []struct {
			Generation  int    `json:"generation"`
			Endorsement string `json:"endorsement"`
		} `json:"roots"`
	}
	if err := json.Unmarshal(manifest, &m); err != nil {
		t.Fatal(err)
	}
	for _, r := range m.Roots {
		if r.Generation != 2 {
			continue
		}
		b, _ := pem.Decode([]byte(r.Endorsement))
		if b == nil {
			t.Fatalf("the CA keeps no endorsement of its new root:\n%s", manifest)
		}
		e, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		pub, ok := e.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
		if err := e.CheckSignatureFrom(old); err != nil || !ok || !pub.Equal(newRoot.PublicKey) || !bytes.Equal(e.RawSubject, newRoot.RawSubject) {
			t.Fatalf("the new root's endorsement is not its certificate from the old root (signature: %v)", err)
		}
		return
	}
	t.Fatalf("roots.json lists no root 2:\n%s", manifest)
}

// traffic keeps a held stream echoing and opens new streams until stopped,
// counting what fails. It owns the held stream until stopped.
type traffic struct {
	stopc  chan struct{}
	wg     sync.WaitGroup
	opened atomic.Int64 // new streams that echoed
	echoes atomic.Int64 // echoes on the held stream
	mu     sync.Mutex   // guards errs
	errs   []string
}

func startTraffic(t *testing.T, d *client.Dialer, held net.Conn) *traffic {
	tr := &traffic{stopc: make(chan struct{})}
	fail := func(format string, args ...any) {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		tr.errs = append(tr.errs, fmt.Sprintf(time.Now().Format("15:04:05.000 ")+format, args...))
	}
	tr.wg.Go(func() { // the held stream
		br := bufioReader(held)
		for i := 0; ; i++ {
			select {
			case <-tr.stopc:
				return
			case <-time.After(200 * time.Millisecond):
			}
			line := fmt.Sprintf("held %d", i)
			held.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(held, line+"\n"); err != nil {
				fail("held stream: write: %v", err)
				return
			}
			got, err := br.ReadString('\n')
			if err != nil || strings.TrimSpace(got) != line {
				fail("held stream: got %q, %v", got, err)
				return
			}
			tr.echoes.Add(1)
		}
	})
	tr.wg.Go(func() { // new streams
		for i := 0; ; i++ {
			select {
			case <-tr.stopc:
				return
			case <-time.After(50 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, err := d.DialContext(ctx, "tcp", "echo.acme.tether:7")
			cancel()
			if err != nil {
				fail("new stream %d: %v", i, err)
				continue
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			line := fmt.Sprintf("new %d", i)
			_, err = io.WriteString(c, line+"\n")
			got, rerr := readLine(c)
			c.Close()
			if err != nil || rerr != nil || got != line {
				fail("new stream %d: got %q, %v, %v", i, got, err, rerr)
				continue
			}
			tr.opened.Add(1)
		}
	})
	t.Cleanup(func() { tr.halt() })
	return tr
}

func (tr *traffic) halt() {
	select {
	case <-tr.stopc:
	default:
		close(tr.stopc)
	}
	tr.wg.Wait()
}

// stop ends the traffic and fails the test if any stream failed.
func (tr *traffic) stop(t *testing.T) {
	t.Helper()
	tr.halt()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.errs) > 0 {
		t.Fatalf("%d stream failures during the rotation (%d new streams succeeded):\n%s", len(tr.errs), tr.opened.Load(), strings.Join(tr.errs, "\n"))
	}
	if tr.opened.Load() < 20 {
		t.Fatalf("only %d new streams opened during the rotation", tr.opened.Load())
	}
	t.Logf("%d new streams opened during the rotation, none failed", tr.opened.Load())
}

type caStatus struct {
	Roots []struct {
		Generation int `json:"generation"`
		Agents     int `json:"agents"`
	} `json:"roots"`
}

func waitCAStatus(t *testing.T, r *relayProc, what string, ok func(caStatus) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var st caStatus
		out := r.admin(t, "ca", "status", "-o", "json")
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("ca status: %v\n%s", err, out)
		}
		if ok(st) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ca status never showed %s:\n%s", what, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// mustRunStderr runs a command that must succeed and returns its stderr.
func mustRunStderr(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, stderr, err := runCmd(t, bin, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", filepath.Base(bin), strings.Join(args, " "), err, out, stderr)
	}
	return stderr
}

// readKeyPair loads an agent's key and certificate from its state directory.
func readKeyPair(t *testing.T, stateDir string) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(filepath.Join(stateDir, "agent.crt"), filepath.Join(stateDir, "agent.key"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// readCerts reads every certificate in a PEM file.
func readCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*x509.Certificate
	for {
		var b *pem.Block
		if b, raw = pem.Decode(raw); b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// tunnelHandshake opens a TLS+yamux session to the relay with cert,
// trusting roots for the relay, and sends a hello; it returns an error if
// the relay does not welcome it.
func tunnelHandshake(t *testing.T, r *relayProc, roots *x509.CertPool, cert tls.Certificate) error {
	t.Helper()
	conf := identity.AgentClientConfig(roots, "tether.internal", func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := tcp.Dial(ctx, nil, r.agentAddr, conf, tcp.Config(slog.New(slog.DiscardHandler)))
	if err != nil {
		return err
	}
	defer sess.Close()
	ctl, err := sess.OpenStream(ctx)
	if err != nil {
		return err
	}
	ctl.SetDeadline(time.Now().Add(10 * time.Second))
	if err := protocol.WriteMessage(ctl, &protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "test", OS: "linux", Arch: "amd64"}); err != nil {
		return err
	}
	m, err := protocol.ReadMessage(bufioReader(ctl))
	if err != nil {
		return err
	}
	if _, ok := m.(*protocol.Welcome); !ok {
		return fmt.Errorf("relay answered %#v", m)
	}
	return nil
}

// relayCertIssuer returns the issuer of the certificate the relay serves
// (read over the enrolment protocol, which needs no client certificate).
func relayCertIssuer(t *testing.T, r *relayProc) string {
	t.Helper()
	c, err := tls.Dial("tcp", r.agentAddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{protocol.ALPNEnroll}}) //nolint:gosec // only reads the certificate
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Issuer.CommonName
}

// runAgentNoWait is runAgent for an agent that is not expected to connect.
func runAgentNoWait(t *testing.T, stateDir, id, relayAddr string, o agentOpts) *agentProc {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	body := fmt.Sprintf("relays: [%q]\nstate_dir: %q\ntransport: %s\nreconnect: {initial: 100ms, max: 1s}\nlog: {level: debug, format: json}\nservices: {}\n",
		relayAddr, stateDir, o.transport)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &agentProc{stateDir: stateDir, config: cfg, id: id}
	a.proc = start(t, "tether-agent "+id, bins.agent, "run", "--config", cfg)
	return a
}
