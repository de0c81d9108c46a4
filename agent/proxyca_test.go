package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
)

// privateCA is a tenant's internal CA, which issued its proxy's
// certificate; no system store holds it.
type privateCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // its certificate, PEM
}

func newPrivateCA(t *testing.T) *privateCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Corp Internal CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	file := filepath.Join(t.TempDir(), "corp-ca.pem")
	// With the comment a CA bundle carries before each certificate.
	data := append([]byte("# Corp Internal CA\n"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return &privateCA{cert: cert, key: key, file: file}
}

// issue makes a server certificate of the CA from tmpl (its serial,
// validity and usage filled in).
func (c *privateCA) issue(t *testing.T, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	tmpl.KeyUsage, tmpl.ExtKeyUsage = x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// startTLSProxy starts an https:// CONNECT proxy on loopback whose
// certificate (for 127.0.0.1) is from ca.
func startTLSProxy(t *testing.T, ca *privateCA, mode string) *connectProxy {
	t.Helper()
	cert := ca.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "proxy.corp"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	return startConnectProxy(t, mode, "agent", "tls-secret", &tls.Config{Certificates: []tls.Certificate{cert}})
}

// TestProxyCAFileSession: an agent reaches its relay through an https://
// proxy whose certificate is from a private CA, which proxy_ca_file names:
// the session comes up and a stream crosses. Without the key, the agent
// refuses the proxy with an error that names it (without its password),
// says its certificate is not trusted and points at proxy_ca_file; the
// proxy sees no CONNECT.
func TestProxyCAFileSession(t *testing.T) {
	ca := newTestCA(t)
	corp := newPrivateCA(t)
	p := startTLSProxy(t, corp, "ok")
	r := newTestRelay(t, ca, "r1", "127.0.0.1", false)
	relay := proxiedName(p, "relay.invalid", r.addr)
	echo := echoService(t)
	proxyURL := "https://agent:tls-secret@" + p.addr

	t.Run("without proxy_ca_file", func(t *testing.T) {
		a, logs := runProxiedAgent(t, ca, Config{Relays: []string{relay}, RelayConnections: 1, Proxy: proxyURL})
		want := "TLS handshake with proxy https://agent:xxxxx@" + p.addr + ": the proxy's certificate is not trusted (not from a CA of this machine's roots): if the proxy's certificate is from a private CA, name that CA's certificate (PEM) in proxy_ca_file in the agent config"
		waitFor(t, 10*time.Second, "an error saying the proxy's certificate is not trusted", func() error {
			if e := lastErrors(a); !strings.Contains(e, want) {
				return fmt.Errorf("last error %q", e)
			}
			return nil
		})
		if n := len(mustSeen(p)); n != 0 {
			t.Errorf("the proxy saw %d CONNECTs over a TLS connection the agent does not trust", n)
		}
		if strings.Contains(logs.String(), "tls-secret") {
			t.Error("the proxy's password is in the log")
		}
	})

	t.Run("with proxy_ca_file", func(t *testing.T) {
		a, _ := runProxiedAgent(t, ca, Config{Relays: []string{relay}, RelayConnections: 1, Proxy: proxyURL, ProxyCAFile: corp.file,
			Services: map[string]Service{"echo": {Address: echo}}})
		waitFor(t, 10*time.Second, "a session to r1 through the https:// proxy", func() error {
			if len(r.open()) != 1 {
				return fmt.Errorf("r1 has %d sessions; agent: %s", len(r.open()), lastErrors(a))
			}
			return nil
		})
		c := onlyOpen(t, r)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := c.openStream(ctx, "echo")
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if err := roundTrip(st, "through the https proxy"); err != nil {
			t.Fatal(err)
		}
		if got := mustSeen(p); len(got) == 0 || got[len(got)-1] != relay {
			t.Errorf("proxy CONNECTs %v, want the last to %s", got, relay)
		}
	})
}

// impostorRelay is a certificate of the proxy's CA that claims to be the
// relay: its SPIFFE ID, and every name the agent might check.
func impostorRelay(t *testing.T, corp *privateCA) *tls.Config {
	cert := corp.issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "relay.invalid"}, DNSNames: []string{"relay.invalid", "relay.tether.invalid"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, URIs: []*url.URL{identity.RelayURI("tether.internal")},
	})
	return &tls.Config{Certificates: []tls.Certificate{cert}}
}

// TestProxyCAFileDoesNotTrustRelays: the CA of proxy_ca_file verifies the
// proxy only. A TLS-inspecting proxy whose CA (the one proxy_ca_file
// names) also signed a certificate claiming to be the relay cannot pass
// it off as the relay: the session is refused as through an inspecting
// proxy, and the impostor never sees the agent's hello.
func TestProxyCAFileDoesNotTrustRelays(t *testing.T) {
	ca := newTestCA(t)
	corp := newPrivateCA(t)
	p := startTLSProxy(t, corp, "mitm")
	p.mitmConf = impostorRelay(t, corp)
	r := newTestRelay(t, ca, "r1", "127.0.0.1", false)
	relay := proxiedName(p, "relay.invalid", r.addr)
	a, _ := runProxiedAgent(t, ca, Config{Relays: []string{relay}, RelayConnections: 1, Proxy: "https://agent:tls-secret@" + p.addr, ProxyCAFile: corp.file})
	waitFor(t, 10*time.Second, "a refusal of the impostor relay", func() error {
		e := lastErrors(a)
		if !strings.Contains(e, "through HTTP proxy https://agent:xxxxx@"+p.addr) || !strings.Contains(e, "not the relay's") {
			return fmt.Errorf("last error %q", e)
		}
		return nil
	})
	if len(mustSeen(p)) == 0 {
		t.Fatal("the proxy saw no CONNECT: the test did not reach the relay's handshake")
	}
	if st := a.Status(); len(st.Sessions) != 1 || st.Sessions[0].State == StateConnected {
		t.Fatalf("status %s: want no connected session", statusJSON(t, a))
	}
}

// TestProxyCAFileEnrolment: enrolment through an https:// proxy of a
// private CA. Without ProxyCAFile, the proxy is refused with the clear
// error; with it, the proxy is trusted, and the relay is still checked
// against the CA the join token pins: the proxy's CA signing a
// certificate that claims to be the relay does not get it accepted.
func TestProxyCAFileEnrolment(t *testing.T) {
	ca := newTestCA(t)
	corp := newPrivateCA(t)
	p := startTLSProxy(t, corp, "mitm")
	p.mitmConf = impostorRelay(t, corp)
	r := newTestRelay(t, ca, "r1", "127.0.0.1", false)
	relay := proxiedName(p, "relay.invalid", r.addr)
	tok := protocol.JoinToken{CAFingerprint: protocol.Fingerprint(ca.root.cert.Raw)}
	enrol := func(caFile string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := Enroll(ctx, EnrollOptions{Relay: relay, Token: tok.String(), StateDir: t.TempDir(), Proxy: "https://agent:tls-secret@" + p.addr, ProxyCAFile: caFile})
		return err
	}

	err := enrol("")
	want := "TLS handshake with proxy https://agent:xxxxx@" + p.addr + ": the proxy's certificate is not trusted"
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "proxy_ca_file") {
		t.Fatalf("enrolment without proxy_ca_file: %v, want %q naming proxy_ca_file", err, want)
	}
	if _, ok := err.(interface{ Unwrap() error }); !ok {
		t.Errorf("%T does not unwrap", err)
	}
	if n := len(mustSeen(p)); n != 0 {
		t.Fatalf("the proxy saw %d CONNECTs over an untrusted TLS connection", n)
	}

	err = enrol(corp.file)
	if err == nil {
		t.Fatal("enrolment accepted a relay certificate of the proxy's CA")
	}
	if e := err.Error(); !strings.Contains(e, "through HTTP proxy https://agent:xxxxx@"+p.addr) || !strings.Contains(e, "inspect") || strings.Contains(e, "tls-secret") {
		t.Fatalf("got %q, want the refusal of a TLS-inspecting proxy", e)
	}
	if n := len(mustSeen(p)); n != 1 {
		t.Fatalf("the proxy saw %d CONNECTs, want 1: the proxy's certificate should have been trusted", n)
	}
}

// TestProxyCAFileConfig: proxy_ca_file is checked as hostile input, with
// errors that never quote the file: its setting when the config loads,
// the file itself by CheckProxyCAFile (which the commands that connect
// run, New and Enroll): a config whose file does not load still loads.
func TestProxyCAFileConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	corp := newPrivateCA(t)
	good, _ := os.ReadFile(corp.file)
	block, _ := pem.Decode(good)
	two := append(append([]byte(nil), good...), good...)
	key := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte("secret-key-bytes")})
	for _, tc := range []struct {
		name, proxy, file string
		want              []string // empty: valid
	}{
		{name: "valid", proxy: "https://proxy.corp:3128", file: corp.file},
		{name: "two certificates", proxy: "https://proxy.corp:3128", file: write("two.pem", two)},
		{name: "proxy from the environment", file: corp.file},
		{name: "missing", proxy: "https://proxy.corp:3128", file: filepath.Join(dir, "nope.pem"), want: []string{"proxy_ca_file " + filepath.Join(dir, "nope.pem"), "no such file"}},
		{name: "empty", proxy: "https://proxy.corp:3128", file: write("empty.pem", []byte("\n\n")), want: []string{"empty"}},
		{name: "garbage", proxy: "https://proxy.corp:3128", file: write("garbage.pem", []byte("hello\x00\xff world")), want: []string{"no PEM certificate", "openssl x509 -inform der"}},
		{name: "DER", proxy: "https://proxy.corp:3128", file: write("ca.der", block.Bytes), want: []string{"no PEM certificate"}},
		{name: "oversize", proxy: "https://proxy.corp:3128", file: write("big.pem", append(good, make([]byte, maxProxyCAFile)...)), want: []string{"larger than 1024 KiB"}},
		{name: "private key", proxy: "https://proxy.corp:3128", file: write("key.pem", append(append([]byte(nil), good...), key...)), want: []string{"PEM block 2 is not a CERTIFICATE"}},
		{name: "not a certificate", proxy: "https://proxy.corp:3128", file: write("bad.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")})), want: []string{"certificate 1 does not parse"}},
		{name: "cut off", proxy: "https://proxy.corp:3128", file: write("cut.pem", append(append([]byte(nil), good...), good[:len(good)/2]...)), want: []string{"1 of its 2 PEM blocks are incomplete or malformed"}},
		{name: "directory", proxy: "https://proxy.corp:3128", file: dir, want: []string{"not a regular file"}},
		{name: "http proxy", proxy: "http://proxy.corp:3128", file: corp.file, want: []string{"the proxy is http://", "https:// proxy only"}},
		{name: "bare host:port proxy", proxy: "proxy.corp:3128", file: corp.file, want: []string{"the proxy is http://"}},
		{name: "direct", proxy: "direct", file: corp.file, want: []string{"proxy: direct"}},
		{name: "http proxy and missing file", proxy: "http://proxy.corp:3128", file: filepath.Join(dir, "nope.pem"), want: []string{"no such file", "the proxy is http://"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fmt.Sprintf("state_dir: /x\nproxy_ca_file: %q\n", tc.file)
			if tc.proxy != "" {
				cfg += fmt.Sprintf("proxy: %q\n", tc.proxy)
			}
			c, err := ParseConfig([]byte(cfg))
			// Only a proxy setting the file cannot serve is the config's
			// problem; the file's own is CheckProxyCAFile's.
			badSetting := tc.proxy == "direct" || (tc.proxy != "" && !strings.HasPrefix(tc.proxy, "https://"))
			if (err != nil) != badSetting {
				t.Fatalf("config with proxy %q: %v", tc.proxy, err)
			}
			if err == nil && c.ProxyCAFile != tc.file {
				t.Fatalf("proxy_ca_file %q, want %q", c.ProxyCAFile, tc.file)
			}
			err = errors.Join(err, (&Config{ProxyCAFile: tc.file}).CheckProxyCAFile())
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("got %v, want valid", err)
				}
				return
			}
			if err == nil {
				t.Fatal("got valid, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("got %q, want it to contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "secret-key-bytes") || strings.Contains(err.Error(), "hello") {
				t.Errorf("the error %q quotes the file", err)
			}
		})
	}
}

// TestReadProxy: enroll --config takes proxy_ca_file with proxy and no_proxy.
func TestReadProxy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte("state_dir: /x\nproxy: https://p.corp:3128\nno_proxy: .internal\nproxy_ca_file: /etc/tether-agent/proxy-ca.pem\nfuture_key: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := ReadProxy(path)
	want := ProxySettings{Proxy: "https://p.corp:3128", NoProxy: ".internal", CAFile: "/etc/tether-agent/proxy-ca.pem"}
	if err != nil || got != want {
		t.Fatalf("got %+v, %v, want %+v", got, err, want)
	}
}

// FuzzParseProxyCAs: the proxy CA file is hostile input; parsing never
// panics, and what it accepts is at least one certificate.
func FuzzParseProxyCAs(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("# comment\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA"))
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := parseProxyCAs(data)
		if err == nil && len(certs) == 0 {
			t.Fatal("accepted a file without a certificate")
		}
	})
}

// TestUntrustedProxyErrors: the error for a proxy certificate the agent
// does not trust says why: not from a trusted CA (pointing at
// proxy_ca_file, or naming it when set), or not for the proxy's name.
func TestUntrustedProxyErrors(t *testing.T) {
	target := greeter(t)
	corp := newPrivateCA(t)
	p := startTLSProxy(t, corp, "ok") // its certificate names 127.0.0.1 only
	_, port, _ := net.SplitHostPort(p.addr)
	other := newPrivateCA(t)
	for _, tc := range []struct {
		name, host, caFile string
		want               string
	}{
		{name: "no proxy_ca_file", host: "127.0.0.1", want: "the proxy's certificate is not trusted (not from a CA of this machine's roots): if the proxy's certificate is from a private CA, name that CA's certificate (PEM) in proxy_ca_file"},
		{name: "another CA in proxy_ca_file", host: "127.0.0.1", caFile: other.file, want: "the proxy's certificate is not trusted (not from a CA of proxy_ca_file " + other.file + " nor of this machine's roots): put the CA that issued the proxy's certificate in proxy_ca_file"},
		{name: "another name", host: "localhost", caFile: corp.file, want: "the proxy's certificate is not trusted: it is not for the name or address in the proxy URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := newEgress("https://agent:tls-secret@"+net.JoinHostPort(tc.host, port), "", func(string) string { return "" })
			if err != nil {
				t.Fatal(err)
			}
			if err := e.trustProxyCAs(tc.caFile); err != nil {
				t.Fatal(err)
			}
			c, err := e.dialer("relay.example:7443", (&net.Dialer{}).DialContext)(context.Background(), "tcp", target)
			if err == nil {
				c.Close()
				t.Fatal("an untrusted proxy certificate was accepted")
			}
			want := "TLS handshake with proxy https://agent:xxxxx@" + net.JoinHostPort(tc.host, port) + ": " + tc.want
			if !strings.Contains(err.Error(), want) || !isPermanent(err) {
				t.Fatalf("got %q (permanent: %v), want %q, permanent", err, isPermanent(err), want)
			}
		})
	}
	if n := len(mustSeen(p)); n != 0 {
		t.Fatalf("the proxy saw %d CONNECTs over untrusted TLS connections", n)
	}
}

// TestProxyCAFileNeededToConnect: the agent does not start with a
// proxy_ca_file that does not load (a config that names one still loads,
// for the commands that do not connect).
func TestProxyCAFileNeededToConnect(t *testing.T) {
	ca := newTestCA(t)
	corp := newPrivateCA(t)
	a := enrolledWith(t, Config{Proxy: "https://proxy.corp:3128", ProxyCAFile: corp.file, Services: map[string]Service{}}, ca.root, ca.root)
	cfg := a.cfg
	cfg.ProxyCAFile = filepath.Join(t.TempDir(), "missing.pem")
	if err := cfg.Validate(); err != nil {
		t.Fatalf("a config naming a missing proxy_ca_file does not validate: %v", err)
	}
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "proxy_ca_file "+cfg.ProxyCAFile) || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("New with a missing proxy_ca_file: %v, want its error", err)
	}
}
