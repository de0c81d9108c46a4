package test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/client"
)

// TestStoreStallRefusesInTime: a request that needs a store read (a
// tenant with no agent connected here, whose existence the relay checks
// in the store) while PostgreSQL does not answer that read (its table
// locked by another session) is refused as unavailable, saying so, within
// --stream-open-timeout, instead of being held for as long as the store
// stalls; once the store answers again the same request gets its real
// answer.
func TestStoreStallRefusesInTime(t *testing.T) {
	c, d := ghostCluster(t)

	unlock := lockTable(t, c, "tenants")

	// The dial's own limit is far beyond the relay's: the refusal must
	// come from the relay.
	if err := refusedUnavailable(t, d, 45*time.Second); !strings.Contains(err.Error(), "store did not answer") {
		t.Fatalf("dial while the store stalled: %v, want the refusal to name the store", err)
	}

	unlock()
	nc, err := d.Dial("tcp", "echo.ghost.tether:7")
	if err == nil {
		nc.Close()
		t.Fatal("dial to a tenant with no agent connected")
	}
	if !errors.Is(err, protocol.ErrNoAgent) {
		t.Fatalf("dial once the store answers: %v, want no_agent", err)
	}
}

// ghostCluster is one relay on PostgreSQL with --stream-open-timeout 2s,
// a tenant "ghost" with no agent, and a Dialer of a backend allowed to
// reach it.
func ghostCluster(t *testing.T) (*testCluster, *client.Dialer) {
	t.Helper()
	c := startClusterWith(t, 1, clusterOpts{extra: []string{"--stream-open-timeout", "2s"}})
	c.admin(t, "tenant", "add", "ghost")
	key := c.admin(t, "backend", "add", "billing", "--allow", "ghost")
	return c, c.dialer(c.relays[0], "billing", key)
}

// refusedUnavailable dials the ghost tenant's echo service through d,
// giving up after within, and returns the relay's refusal, which must be
// unavailable.
func refusedUnavailable(t *testing.T, d *client.Dialer, within time.Duration) *client.Refusal {
	t.Helper()
	dctx, dcancel := context.WithTimeout(context.Background(), within)
	defer dcancel()
	nc, err := d.DialContext(dctx, "tcp", "echo.ghost.tether:7")
	if err == nil {
		nc.Close()
		t.Fatal("dial connected while the store was stalled")
	}
	var ref *client.Refusal
	if !errors.As(err, &ref) || !errors.Is(err, protocol.ErrUnavailable) {
		t.Fatalf("dial while the store stalled: %v (%T), want an unavailable refusal from the relay within %v", err, err, within)
	}
	return ref
}

// TestStoreStallAuditDoesNotHoldRefusal: a refusal's audit record is
// queued, not waited for, so a store that does not answer the audit write
// either (the audit table locked too) does not hold the client's answer
// beyond the refusal's own bound; the record still reaches the trail once
// the store answers.
func TestStoreStallAuditDoesNotHoldRefusal(t *testing.T) {
	c, d := ghostCluster(t)

	unlockAudit := lockTable(t, c, "audit")
	unlockTenants := lockTable(t, c, "tenants")

	// The relay refuses after --stream-open-timeout (2 s); an audit write
	// waited for would add its store timeout (10 s) and outlast this.
	ref := refusedUnavailable(t, d, 8*time.Second)

	if ref.RequestID == "" {
		t.Fatal("the refusal carries no request id")
	}

	unlockTenants()
	unlockAudit()
	waitAudit(t, c.relays[0], "the refused request", detailIs("stream", "unavailable", "request", ref.RequestID), append([]string{"--kind", "stream"}, c.store...)...)
}

// TestStoreStallAuditDoesNotHoldHandshakeRefusal: a TLS handshake refused
// for its client certificate (here a self-signed one at the agents' port)
// is answered at once while the audit store does not answer (the audit
// table locked), not after the audit writer's 10 s, which would hold a
// handshake slot per refusal; the record reaches the trail once the store
// answers.
func TestStoreStallAuditDoesNotHoldHandshakeRefusal(t *testing.T) {
	c := startCluster(t, 1)
	r := c.relays[0]
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial := big.NewInt(0x5eed)
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "intruder"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}

	unlock := lockTable(t, c, "audit")
	raw, err := net.Dial("tcp", r.agentAddr)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{protocol.ALPN}, MinVersion: tls.VersionTLS13, //nolint:gosec // the relay's certificate is not what this test checks
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	defer tc.Close()
	start := time.Now()
	tc.SetDeadline(start.Add(30 * time.Second))
	// In TLS 1.3 the client's handshake ends before the relay has checked
	// its certificate: the refusal is the alert the next read meets.
	err = tc.Handshake()
	if err == nil {
		_, err = tc.Read(make([]byte, 1))
	}
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a self-signed client certificate: %v, want the relay's refusal", err)
	}
	if took := time.Since(start); took > 7*time.Second { // a waited-for audit write: 10 s
		t.Fatalf("the refusal came after %v (%v): it waited for the audit store", took.Round(time.Millisecond), err)
	}
	unlock()
	waitAudit(t, r, "the refused handshake", detailIs("agent.handshake", "unauthenticated", "serial", serial.Text(16)), append([]string{"--kind", "agent.handshake"}, c.store...)...)
}

// TestStoreStallAuditDoesNotHoldRevocation: a revoked agent's sessions
// close as soon as the relay reads the revocation from the change feed,
// while the audit store does not answer (the audit table locked): the
// relay's record of the disconnection is queued, not waited for on the
// feed, and reaches the trail once the store answers.
func TestStoreStallAuditDoesNotHoldRevocation(t *testing.T) {
	c := startCluster(t, 1)
	r := c.relays[0]
	c.admin(t, "tenant", "add", "acme")
	stateDir, id := enroll(t, r.agentAddr, c.admin(t, "token", "create", "--tenant", "acme"))
	a := runAgent(t, stateDir, id, r.agentAddr, agentOpts{transport: "tcp", extra: "relay_connections: 1\n"})
	a.waitOutput(`"msg":"connected to relay"`, 20*time.Second)

	unlock := lockTable(t, c, "audit")
	// The command stores the revocation, then waits to audit it.
	revoked := make(chan error, 1)
	go func() {
		out, err := exec.Command(bins.relay, append([]string{"agent", "revoke", id}, c.store...)...).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, out)
		}
		revoked <- err
	}()
	// An audit write waited for on the feed would take the writer's 10 s.
	r.waitOutput("closed a revoked agent's sessions", 8*time.Second)
	unlock()
	if err := <-revoked; err != nil {
		t.Fatalf("agent revoke: %v", err)
	}
	waitAudit(t, r, "the revoked agent's disconnection", detailIs("agent.disconnect", "revoked", "sessions", "1"), append([]string{"--kind", "agent.disconnect"}, c.store...)...)
}

// TestStoreStallRefusesAgentInTime: an agent's admission reads its record
// from the store; while PostgreSQL does not answer that read (the agents
// table locked by another session), the relay refuses the agent as
// unavailable, saying the store did not answer, once the handshake's
// time is up, instead of holding the handshake (and its slot, of which
// a relay has a bounded number) for as long as the store stalls. Once
// the store answers, the agent connects.
func TestStoreStallRefusesAgentInTime(t *testing.T) {
	c := startCluster(t, 1)
	r := c.relays[0]
	c.admin(t, "tenant", "add", "acme")
	stateDir, id := enroll(t, r.agentAddr, c.admin(t, "token", "create", "--tenant", "acme"))

	unlock := lockTable(t, c, "agents")

	a := startAgentProc(t, stateDir, id, r.agentAddr, agentOpts{transport: "tcp"})
	// The handshake's time is 10 s; the store stalls for longer than the
	// wait below.
	waitCount(t, r.proc, "store did not answer within the handshake", 1, 40*time.Second)
	unlock()
	waitCount(t, a.proc, `"msg":"connected to relay"`, 1, 60*time.Second)
}

// TestStoreStallKeepsRenewingAgent: an agent's certificate renewal reads
// and writes its record in the store; while PostgreSQL does not answer
// (the agents table locked by another session) the relay refuses the
// renewal as unavailable, saying the store did not answer, once the
// handshake's 10 s are up, and reads the agent's control stream all the
// while: the session, with a 2 s heartbeat, is not ended as
// heartbeat_missed, and the agent keeps it. Once the store answers, the
// agent's next try renews.
func TestStoreStallKeepsRenewingAgent(t *testing.T) {
	// 75 s certificates: due for renewal about 50 s after the agent
	// starts, refused 10 s later, and renewed again well before expiry.
	c := startClusterWith(t, 1, clusterOpts{extra: []string{"--heartbeat", "2s", "--agent-cert-lifetime", "75s"}})
	r := c.relays[0]
	c.admin(t, "tenant", "add", "acme")
	stateDir, id := enroll(t, r.agentAddr, c.admin(t, "token", "create", "--tenant", "acme"))
	cert := readCert(t, filepath.Join(stateDir, "agent.crt"))
	started := time.Now()
	a := startAgentProc(t, stateDir, id, r.agentAddr, agentOpts{transport: "tcp"})
	waitCount(t, r.proc, `"msg":"agent connected"`, 1, 30*time.Second)
	due := started.Add(cert.NotAfter.Sub(started) * 2 / 3) // the agent's renewAt, about

	unlock := lockTable(t, c, "agents")
	locked := time.Now()
	// The relay logs a session's end once its reader returns: the agent
	// tells when it lost the session.
	ended := func() string {
		if l := firstLine(r.proc, func(l string) bool { return strings.Contains(l, `"msg":"agent disconnected"`) }); l != "" {
			return l
		}
		return firstLine(a.proc, func(l string) bool { return strings.Contains(l, "connection to relay lost") })
	}
	refused := func(l string) bool {
		return strings.Contains(l, `"msg":"certificate renewal refused"`) && strings.Contains(l, "store did not answer")
	}
	for deadline := due.Add(40 * time.Second); firstLine(r.proc, refused) == ""; time.Sleep(20 * time.Millisecond) {
		if l := ended(); l != "" {
			t.Fatalf("the session ended while the renewal waited on the store, %v after it came due (heartbeat 2 s): %s",
				time.Since(due).Round(time.Millisecond), l)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no refusal of the renewal %v after it came due", time.Since(due).Round(time.Millisecond))
		}
	}
	t.Logf("renewal refused %v after it came due (%v after the lock)", time.Since(due).Round(time.Millisecond), time.Since(locked).Round(time.Millisecond))
	waitLine(t, a.proc, func(l string) bool {
		return strings.Contains(l, "certificate renewal failed; will retry") && strings.Contains(l, "store did not answer")
	}, 10*time.Second, "the agent's refused renewal, to be retried")

	unlock()
	a.waitOutput(`"msg":"certificate renewed"`, 30*time.Second)
	if l := ended(); l != "" {
		t.Fatalf("a session was lost around the stalled renewal: %s", l)
	}
}

// firstLine is the first line of p's output that satisfies match, "" if
// none does.
func firstLine(p *proc, match func(string) bool) string {
	for _, l := range strings.Split(p.out.String(), "\n") {
		if match(l) {
			return l
		}
	}
	return ""
}

// lockTable locks table of the cluster's database from a session of its
// own, so that the relays' reads of it wait, until unlock (or the test's
// end).
func lockTable(t *testing.T, c *testCluster, table string) (unlock func()) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback(ctx) })
	if _, err := tx.Exec(ctx, "LOCK TABLE "+pgx.Identifier{table}.Sanitize()+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStoreStallOfferKeepsTheSession: while the relay waits for the store
// to take an update offer's audit record (the audit table locked by
// another session), the agent's answer to the offer (its fetch) does not
// stop the relay reading the agent's control stream: the session outlives
// three heartbeats, and the fetch is served once the record is written.
func TestStoreStallOfferKeepsTheSession(t *testing.T) {
	c := startClusterWith(t, 1, clusterOpts{extra: []string{"--update-interval", "300ms", "--heartbeat", "2s"}})
	r := c.relays[0]
	c.admin(t, "tenant", "add", "acme")
	keyDir := t.TempDir()
	mustRun(t, bins.relay, "release", "keygen", "--out", keyDir)
	pub, err := os.ReadFile(filepath.Join(keyDir, "release.pub"))
	if err != nil {
		t.Fatal(err)
	}
	c.admin(t, "release", "publish", "--file", agentOfVersion(t, "9.0.0"), "--version", "9.0.0",
		"--key", filepath.Join(keyDir, "release.key"), "--os", runtime.GOOS, "--arch", runtime.GOARCH)
	stateDir, id := enroll(t, r.agentAddr, c.admin(t, "token", "create", "--tenant", "acme"))
	a := runAgent(t, stateDir, id, r.agentAddr, agentOpts{transport: "tcp", bin: agentOfVersion(t, "1.0.0"),
		extra: fmt.Sprintf("relay_connections: 1\nupdate: {public_keys: [%q], restart: exec}\n", pub)})
	a.waitOutput(`"msg":"connected to relay"`, 20*time.Second)

	unlock := lockTable(t, c, "audit")
	// The rollout is stored before its own audit record, which waits for
	// the lock: the command runs on until then.
	rolled := make(chan error, 1)
	go func() {
		out, err := exec.Command(bins.relay, append([]string{"release", "rollout", "9.0.0", "--agents", id}, c.store...)...).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, out)
		}
		rolled <- err
	}()
	a.waitOutput(`"msg":"update offered: manifest verified`, 20*time.Second)
	// The relay writes the offer's record once the store takes it or,
	// after the audit writer's 10 s, to the audit file alone: five
	// heartbeats.
	r.waitOutput(`"msg":"update offered"`, 30*time.Second)
	if n := r.count(`"reason":"heartbeat_missed"`); n != 0 {
		t.Fatalf("the relay ended the agent's session for missed heartbeats while the offer's record was written")
	}
	if n := a.count("connection to relay lost"); n != 0 {
		t.Fatalf("the agent lost its session while the offer's record was written")
	}
	unlock()
	if err := <-rolled; err != nil {
		t.Fatalf("release rollout: %v", err)
	}
	// The fetch is served: the agent reports the download.
	r.waitOutput(`"state":"downloaded"`, 60*time.Second)
}

// TestStoreStallAuditKeepsNewSession: while the audit store does not take
// an admitted agent's connect record (the audit table locked by another
// session), the relay serves the new session all the same: it reads the
// agent's heartbeats and answers them, and the agent, whose heartbeat
// (2 s) gives up on a relay silent for three of them, keeps its session
// past the audit writer's 10 s.
func TestStoreStallAuditKeepsNewSession(t *testing.T) {
	c := startClusterWith(t, 1, clusterOpts{extra: []string{"--heartbeat", "2s"}})
	r := c.relays[0]
	c.admin(t, "tenant", "add", "acme")
	stateDir, id := enroll(t, r.agentAddr, c.admin(t, "token", "create", "--tenant", "acme"))

	unlock := lockTable(t, c, "audit")
	a := runAgent(t, stateDir, id, r.agentAddr, agentOpts{transport: "tcp", extra: "relay_connections: 1\n"})
	a.waitOutput(`"msg":"connected to relay"`, 20*time.Second)
	// The connect record goes to the audit file alone once the writer's
	// 10 s pass: five heartbeats.
	r.waitOutput(`"msg":"audit: store write failed`, 30*time.Second)
	if n := a.count("connection to relay lost"); n != 0 {
		t.Fatalf("the agent lost its session while its connect record waited for the store:\n%s", firstLine(a.proc, func(l string) bool { return strings.Contains(l, "connection to relay lost") }))
	}
	if n := r.count(`"reason":"heartbeat_missed"`); n != 0 {
		t.Fatal("the relay ended the agent's session for missed heartbeats while its connect record waited for the store")
	}
	unlock()
}

// TestStoreStallRefusesEnrolmentInTime: an enrolment uses its join token
// and registers the agent in one transaction, bounded by the handshake's
// time. While PostgreSQL does not answer the registration (the agents
// table locked by another session), the agent is refused as unavailable,
// saying the token was not used; once the store answers, the same
// single-use token enrols it.
func TestStoreStallRefusesEnrolmentInTime(t *testing.T) {
	c := startCluster(t, 1)
	r := c.relays[0]
	c.admin(t, "tenant", "add", "acme")
	tok := c.admin(t, "token", "create", "--tenant", "acme", "--uses", "1")
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}

	unlock := lockTable(t, c, "agents")
	// The agent's own enrolment deadline (30 s) is beyond the relay's
	// (10 s): the refusal must come from the relay.
	_, stderr, err := runCmd(t, bins.agent, "enroll", "--relay", r.agentAddr, "--token-file", tokenFile, "--state-dir", filepath.Join(t.TempDir(), "s"))
	if err == nil {
		t.Fatal("enrolment succeeded while the store was stalled")
	}
	if !strings.Contains(stderr, "unavailable") || !strings.Contains(stderr, "the join token was not used") {
		t.Fatalf("enrolment while the store stalled: %v\n%s\nwant an unavailable refusal saying the token was not used", err, stderr)
	}

	unlock()
	enroll(t, r.agentAddr, tok)
}
