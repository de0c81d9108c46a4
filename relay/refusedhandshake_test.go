package relay

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
	"math/big"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport/quic"
	"github.com/tetherhq/tether/relay/internal/audit"
)

// TestRefusedAgentHandshakesAuditBounded: a peer that completes TLS
// handshakes at the agent port over and over, over QUIC and TCP, with a
// self-signed client certificate whose issuer is tens of kilobytes long,
// makes the relay write a handful of small audit records, not one per
// handshake as large as the certificate: its first refusals one by one
// (as from its address over either transport), the rest summed in
// auth.refused records that count every one.
func TestRefusedAgentHandshakesAuditBounded(t *testing.T) {
	const overQUIC, overTCP = 5, 200
	r, stop := startRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off, DrainTimeout: time.Millisecond})
	addr := r.AgentAddr().String()
	auditPath := r.cfg.AuditLog
	before := fileSize(t, auditPath)

	// QUIC buffers at most a few packets of a handshake message: its
	// certificate is smaller.
	quicConf := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{protocol.ALPN}, Certificates: []tls.Certificate{selfSignedClient(t, 4000)}}
	start := time.Now()
	for range overQUIC {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := quic.Dial(ctx, addr, quicConf, quic.Config(1))
		if err == nil {
			// The client may finish its handshake before the relay has
			// checked its certificate: the refusal closes the connection.
			_, err = s.AcceptStream(ctx)
			s.Close()
		}
		cancel()
		if err == nil || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("QUIC handshake with a self-signed certificate not refused: %v", err)
		}
	}
	tcpConf := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{protocol.ALPN}, Certificates: []tls.Certificate{selfSignedClient(t, 60000)}}
	for range overTCP {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(c, tcpConf)
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		// In TLS 1.3 the refusal is the alert the read after the
		// handshake meets.
		err = tc.Handshake()
		if err == nil {
			_, err = tc.Read(make([]byte, 1))
		}
		tc.Close()
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("TCP handshake with a self-signed certificate not refused: %v", err)
		}
	}
	took := time.Since(start)
	// The last refusal may still be on its way to the audit queue when the
	// client has read it; the relay writes the sums as it stops.
	time.Sleep(200 * time.Millisecond)
	stop()

	grown := fileSize(t, auditPath) - before
	f, err := os.Open(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	oneByOne, summed, counted := 0, 0, 0
	for sc.Scan() {
		var rec audit.Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatal(err)
		}
		if rec.Kind != audit.Handshake && rec.Kind != audit.AuthRefused {
			continue
		}
		if len(sc.Bytes()) > 4096 {
			t.Errorf("a %d-byte %s record: %.300s…", len(sc.Bytes()), rec.Kind, sc.Text())
		}
		if rec.Kind == audit.AuthRefused {
			summed++
			if rec.Detail["door"] != "agent" || rec.Detail["source"] != "127.0.0.1" || rec.Detail["reason"] != "unknown_authority" {
				t.Errorf("refusals summed as %v", rec.Detail)
			}
			n, _ := rec.Detail["count"].(float64)
			counted += int(n)
			continue
		}
		oneByOne++
		counted++
		if remote, _ := rec.Detail["remote"].(string); !strings.HasPrefix(remote, "127.0.0.1:") || rec.Detail["reason"] != "unknown_authority" {
			t.Errorf("a refusal audited from %q for %v, want 127.0.0.1 and unknown_authority", remote, rec.Detail["reason"])
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d refused handshakes (%d over QUIC) in %v: %d audited one by one, %d summed records; the audit file grew %d bytes",
		overQUIC+overTCP, overQUIC, took.Round(time.Millisecond), oneByOne, summed, grown)
	// 10 one by one, then one every 5 s; two sums a minute.
	if most := 10 + int(took/(5*time.Second)) + 1; oneByOne > most {
		t.Errorf("%d refused handshakes from one address audited one by one, want at most %d", oneByOne, most)
	}
	if most := 2 * (int(took/time.Minute) + 1); summed > most {
		t.Errorf("%d auth.refused records, want at most %d", summed, most)
	}
	if counted != overQUIC+overTCP {
		t.Errorf("the audit records count %d refused handshakes, want %d", counted, overQUIC+overTCP)
	}
	if grown > 64<<10 {
		t.Errorf("the audit file grew %d bytes for %d refused handshakes", grown, overQUIC+overTCP)
	}
}

// selfSignedClient is a client certificate of its holder's own making
// whose issuer (its own subject) names an organisation of orgBytes bytes.
func selfSignedClient(t *testing.T, orgBytes int) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{strings.Repeat("A", orgBytes)}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0
		}
		t.Fatal(err)
	}
	return fi.Size()
}
