package trust

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/datadir"
)

// refusalEnv is a relay's TLS side (Server and Peer) auditing into a
// running audit log.
type refusalEnv struct {
	auth      *Authority
	server    *Server
	peer      *Peer
	log       *audit.Log
	auditPath string
}

func newRefusalEnv(t *testing.T) *refusalEnv {
	t.Helper()
	ctx := context.Background()
	dir, authority, err := datadir.Open(ctx, t.TempDir(), datadir.Options{TrustDomain: "trust.test"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dir.Close() })
	e := &refusalEnv{auth: NewAuthority(dir.CAStorage(), authority), auditPath: filepath.Join(t.TempDir(), "audit.log")}
	if e.log, err = audit.Open(ctx, dir.Store, e.auditPath, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.log.Close() })
	if e.server, err = NewServer(e.auth, e.log, time.Now); err != nil {
		t.Fatal(err)
	}
	if e.peer, err = NewPeer(e.auth, e.log, "relay-1", time.Now); err != nil {
		t.Fatal(err)
	}
	e.log.Start()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			e.log.Stop()
		}
	})
	return e
}

// records stops the audit log, which writes the sums of refusals, and
// returns the lines of its file.
func (e *refusalEnv) records(t *testing.T) (recs []audit.Record, lines []string) {
	t.Helper()
	e.log.Stop()
	f, err := os.Open(e.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec audit.Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatal(err)
		}
		recs = append(recs, rec)
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return recs, lines
}

// serveTLS serves handshakes with conf on a loopback listener until the
// test ends; each one's outcome is sent on the channel returned.
func serveTLS(t *testing.T, conf *tls.Config) (string, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan error, 1000)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := tls.Server(c, conf)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err = tc.HandshakeContext(ctx)
			cancel()
			c.Close()
			results <- err
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String(), results
}

// refusedHandshake completes a TLS handshake with conf at addr, which
// must refuse the client's certificate, and returns the server's error.
func refusedHandshake(t *testing.T, addr string, conf *tls.Config, served <-chan error) error {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, conf)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	// In TLS 1.3 the client's handshake ends before the server has checked
	// its certificate: the refusal is the alert the next read meets.
	err = tc.Handshake()
	if err == nil {
		_, err = tc.Read(make([]byte, 1))
	}
	tc.Close()
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("handshake not refused: %v", err)
	}
	select {
	case err := <-served:
		if err == nil {
			t.Fatal("the server completed a handshake the client saw refused")
		}
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not finish the handshake")
	}
	return nil
}

// selfSigned is a client certificate of the peer's own making whose
// issuer (its own subject) names an organisation of orgBytes bytes of
// two-byte runes.
func selfSigned(t *testing.T, orgBytes int, uri string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{Organization: []string{strings.Repeat("é", orgBytes/2)}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if uri != "" {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// refusalDoors are the listeners that refuse client certificates, with
// the TLS configurations of their server and of a client presenting cert.
func refusalDoors(e *refusalEnv) []struct {
	door   string
	server *tls.Config
	client func(tls.Certificate) *tls.Config
} {
	client := func(alpn string) func(tls.Certificate) *tls.Config {
		return func(cert tls.Certificate) *tls.Config {
			return &tls.Config{InsecureSkipVerify: true, NextProtos: []string{alpn}, Certificates: []tls.Certificate{cert}}
		}
	}
	return []struct {
		door   string
		server *tls.Config
		client func(tls.Certificate) *tls.Config
	}{
		{doorAgent, e.server.AgentsTCP(), client(protocol.ALPN)},
		{doorConnectTLS, e.server.Front(), client("http/1.1")},
		{doorPeer, e.peer.Listener(), client(PeerALPN)},
	}
}

// TestRefusedHandshakeFloodAuditBounded: 200 handshakes from one address
// with a self-signed client certificate whose issuer is 60 KB long, at
// the agent port, the CONNECT door over TLS and the relay-to-relay
// listener, write a bounded number of small audit records: the first
// refusals one by one, with the certificate's names clipped, the rest
// summed in auth.refused records that count every one.
func TestRefusedHandshakeFloodAuditBounded(t *testing.T) {
	const attempts = 200
	cert := selfSigned(t, 60000, "")
	for i, door := range []string{doorAgent, doorConnectTLS, doorPeer} {
		t.Run(door, func(t *testing.T) {
			e := newRefusalEnv(t)
			d := refusalDoors(e)[i]
			addr, served := serveTLS(t, d.server)
			start := time.Now()
			for range attempts {
				err := refusedHandshake(t, addr, d.client(cert), served)
				if len(err.Error()) > maxCertText+len("…") {
					t.Fatalf("the listener's error is %d bytes long, want it clipped to %d", len(err.Error()), maxCertText)
				}
			}
			took := time.Since(start)
			recs, lines := e.records(t)

			// One by one: the source's burst, and one more every 5 s; summed:
			// one at the first refusal beyond, one with the rest.
			maxOneByOne := refusalBurst + int(took/refusalEvery) + 1
			oneByOne, counted := 0, 0
			for i, rec := range recs {
				if len(lines[i]) > 4096 {
					t.Errorf("a %d-byte audit record: %.300s…", len(lines[i]), lines[i])
				}
				if rec.Detail["door"] != d.door {
					t.Errorf("record of door %v, want %s: %s", rec.Detail["door"], d.door, lines[i])
				}
				switch rec.Kind {
				case audit.AuthRefused:
					if rec.Detail["source"] != "127.0.0.1" || rec.Detail["reason"] != reasonUnknownAuthority {
						t.Errorf("summed refusals of source %v for %v, want 127.0.0.1 and %s", rec.Detail["source"], rec.Detail["reason"], reasonUnknownAuthority)
					}
					counted += int(rec.Detail["count"].(float64))
				default:
					oneByOne++
					counted++
					issuer, _ := rec.Detail["issuer"].(string)
					if !strings.HasSuffix(issuer, "…") || len(issuer) > maxCertText+len("…") || !utf8.ValidString(issuer) {
						t.Errorf("issuer of %d bytes audited (%.40q…%q), want it clipped to %d bytes of valid UTF-8 and marked", len(issuer), issuer, issuer[max(len(issuer)-8, 0):], maxCertText)
					}
					if rec.Detail["reason"] != reasonUnknownAuthority || !strings.HasPrefix(rec.Detail["remote"].(string), "127.0.0.1:") {
						t.Errorf("refusal audited with reason %v from %v, want %s from 127.0.0.1", rec.Detail["reason"], rec.Detail["remote"], reasonUnknownAuthority)
					}
				}
			}
			t.Logf("%d refused handshakes in %v: %d audit records (%d one by one), %d bytes", attempts, took.Round(time.Millisecond), len(recs), oneByOne, len(strings.Join(lines, "\n")))
			if oneByOne > maxOneByOne || len(recs) > maxOneByOne+2 {
				t.Errorf("%d audit records, %d of them one by one, for %d refused handshakes in %v; want at most %d one by one and two summed",
					len(recs), oneByOne, attempts, took, maxOneByOne)
			}
			if counted != attempts {
				t.Errorf("the audit records count %d refused handshakes, want %d", counted, attempts)
			}
		})
	}
}

// TestRefusedHandshakeAuditedWithReason: a single refused handshake with
// a certificate of the right shape is in the audit trail at once, with
// the door, the address, why and the identity it claims; when its
// source's refusals are summed, the sum names that identity and reason.
func TestRefusedHandshakeAuditedWithReason(t *testing.T) {
	e := newRefusalEnv(t)
	authority := e.auth.CA()
	// Another CA's agent certificate, naming an agent of this trust domain.
	foreignAgent := "spiffe://trust.test/tenant/acme/agent/k3n5q7s9u2w4y6a8"
	foreign := selfSigned(t, 10, foreignAgent)
	// This CA's backend certificate, at the relay-to-relay listener.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	backend := identity.Backend{TrustDomain: authority.TrustDomain(), Name: "billing"}
	leaf, err := authority.SignBackend(authority.Signer(), &key.PublicKey, backend, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ours := tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key}

	doors := refusalDoors(e)
	agents, peers := doors[0], doors[2]
	agentAddr, agentServed := serveTLS(t, agents.server)
	peerAddr, peerServed := serveTLS(t, peers.server)
	refusedHandshake(t, agentAddr, agents.client(foreign), agentServed)
	refusedHandshake(t, peerAddr, peers.client(ours), peerServed)
	// The same agent again, beyond its source's burst: summed.
	for range refusalBurst {
		refusedHandshake(t, agentAddr, agents.client(foreign), agentServed)
	}
	recs, lines := e.records(t)

	find := func(kind, door string) *audit.Record {
		for i := range recs {
			if recs[i].Kind == kind && recs[i].Detail["door"] == door {
				return &recs[i]
			}
		}
		t.Fatalf("no %s record of door %s in the audit trail:\n%s", kind, door, strings.Join(lines, "\n"))
		return nil
	}
	rec := find(audit.Handshake, doorAgent)
	if rec.Actor != "agent" || rec.Outcome != protocol.CodeUnauthenticated.String() || rec.Detail["reason"] != reasonUnknownAuthority ||
		rec.Detail["uri"] != foreignAgent || !strings.Contains(rec.Detail["error"].(string), "unknown authority") ||
		!strings.HasPrefix(rec.Detail["remote"].(string), "127.0.0.1:") || rec.Detail["serial"] != "7" {
		t.Errorf("the refused agent handshake audited as %+v", rec)
	}
	rec = find(audit.Handshake, doorPeer)
	if rec.Actor != "peer" || rec.Detail["reason"] != reasonBadIdentity || rec.Detail["uri"] != backend.String() ||
		!strings.Contains(rec.Detail["error"].(string), "relay identity") {
		t.Errorf("the refused peer audited as %+v", rec)
	}
	rec = find(audit.AuthRefused, doorAgent)
	if ids, _ := rec.Detail["identities"].([]any); rec.Detail["reason"] != reasonUnknownAuthority || len(ids) != 1 || ids[0] != foreignAgent {
		t.Errorf("the agent's summed refusals audited as %+v", rec)
	}
}

// A verification error quoting a long name is clipped, and still unwraps.
func TestClipError(t *testing.T) {
	long := errors.New(strings.Repeat("ü", 1000))
	err := clipError(identityError{long})
	if len(err.Error()) > maxCertText+len("…") || !utf8.ValidString(err.Error()) || !strings.HasSuffix(err.Error(), "…") {
		t.Errorf("clipped to %d bytes: %q", len(err.Error()), err.Error())
	}
	if !errors.Is(err, long) || refusalReason([]*x509.Certificate{{}}, err) != reasonBadIdentity {
		t.Errorf("the clipped error lost what it wraps: %v", err)
	}
	if short := errors.New("short"); clipError(short) != short {
		t.Error("a short error was replaced")
	}
}
