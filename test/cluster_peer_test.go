package test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestClusterPeerListenerRefuses: the relay-to-relay listener takes only
// relay certificates of the cluster's CA. A Go TLS client presenting an
// agent's, a backend's or an operator's certificate of that CA, a relay
// certificate of another CA, or none, is refused in the handshake, and
// the relay audits each refusal.
func TestClusterPeerListenerRefuses(t *testing.T) {
	c := startCluster(t, 2)
	var peerAddr string
	for _, r := range c.relayList(t) {
		if r.ID == "relay-1" {
			peerAddr = r.PeerAddr
		}
	}
	if peerAddr == "" {
		t.Fatal("relay 1 has no peer address in the relay list")
	}
	c.admin(t, "tenant", "add", "acme")
	agentDir, _ := enroll(t, c.relays[0].agentAddr, c.admin(t, "token", "create", "--tenant", "acme"))
	c.admin(t, "backend", "add", "billing", "--allow", "acme")
	backendDir := t.TempDir()
	c.admin(t, "backend", "certificate", "billing", "--out", backendDir)
	operatorDir := t.TempDir()
	c.admin(t, "operator", "certificate", "create", "alice", "--out", operatorDir)
	load := func(dir, name string) []tls.Certificate {
		cert, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		return []tls.Certificate{cert}
	}

	for _, tc := range []struct {
		name  string
		certs []tls.Certificate
	}{
		{"agent", load(agentDir, "agent")},
		{"backend", load(backendDir, "backend")},
		{"operator", load(operatorDir, "operator")},
		{"relay of another CA", []tls.Certificate{foreignRelayCert(t, "relay-2")}},
		{"none", nil},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			before := c.relays[0].count(`"msg":"relay-to-relay link refused"`)
			conf := &tls.Config{Certificates: tc.certs, InsecureSkipVerify: true, NextProtos: []string{"tether-peer/1"}, MinVersion: tls.VersionTLS13}
			raw, err := net.DialTimeout("tcp", peerAddr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			conn := tls.Client(raw, conf)
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			// In TLS 1.3 the server checks the client's certificate after
			// the client's side of the handshake is done: its refusal is
			// the first thing read.
			err = conn.Handshake()
			if err == nil {
				_, err = conn.Read(make([]byte, 1))
			}
			var ne net.Error
			if err == nil || errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the relay-to-relay listener took a link with the %s certificate (%v)", tc.name, err)
			}
			t.Logf("refused: %v", err)
			waitCount(t, c.relays[0].proc, `"msg":"relay-to-relay link refused"`, before+1, 10*time.Second)
		})
	}
	// Each refusal with a certificate is in the audit trail, naming the
	// door and the certificate presented.
	trail := c.admin(t, "audit", "--kind", "agent.handshake", "-o", "json")
	for _, want := range []string{"agent/", "backend/billing", "operator/alice", "relay/relay-2"} {
		found := false
		for _, line := range strings.Split(trail, "\n") {
			if strings.Contains(line, `"door":"peer"`) && strings.Contains(line, want) {
				found = true
			}
		}
		if !found {
			t.Errorf("no audit record of the peer listener refusing %s:\n%s", want, trail)
		}
	}
}

// foreignRelayCert is a relay certificate spiffe://tether.internal/relay/id
// issued by a CA of its own, not the cluster's.
func foreignRelayCert(t *testing.T, id string) tls.Certificate {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "another CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	uri, _ := url.Parse("spiffe://tether.internal/relay/" + id)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: id},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), URIs: []*url.URL{uri},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}
}
